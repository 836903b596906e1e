"""Datasets as deterministic, resumable iterators of NHWC batches in [-1, 1].

    it = data.create(config.data, seed=config.seed)
    batch = next(it)     # {"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B]}
    state = it.get_state()   # {"epoch": int, "position": int}, JSON-serialisable
    it.set_state(state)      # the next batch is the one that followed `state`

Sources (digits, MNIST idx files, .npz, image folders, TFDS) and the
preprocessing to `config.image_size` / `config.channels` live in
`diffusion.data.sources`; this module is the iterator.

Order: epoch ``e`` visits the examples in the permutation drawn from
``(seed, e)``, in ``N // B`` full global batches (the remainder is dropped).
Flips and dequantisation noise are drawn from ``(seed, epoch, position)`` and
the example's place in the global batch, so a restored iterator yields
bit-identical batches, and with several processes, each yielding (and decoding)
only its own contiguous ``B / process_count`` slice of every global batch, the
slices put together are the single-process batch.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from diffusion.data.sources import SPLITS, crop_mode, fit, load
# --------------------------------------------------------------------------
# The iterator.
# --------------------------------------------------------------------------


class DataIterator(Iterator[dict]):
  """Deterministic, resumable batches of a dataset (see module doc).

  `images` is an integer array [N, H, W, C] with `labels` int32 [N], or a
  `LazyExamples` (then `labels` is None) that yields fitted images and labels; with
  ``levels=None``, a float array yielded as it is (a latent model's cached latents,
  `data.latents`; then no flips or dequantisation).
  """

  def __init__(self, images, labels: np.ndarray | None, levels: int, *,
               batch_size: int, seed: int, random_flip: bool = False,
               dequantize: bool = False, process_index: int = 0, process_count: int = 1):
    if batch_size % process_count:
      raise ValueError(f"config.data.batch_size={batch_size} is not divisible by the "
                       f"process count {process_count}")
    if batch_size > len(images):
      raise ValueError(f"config.data.batch_size={batch_size} exceeds the {len(images)} "
                       "examples of the dataset")
    self.images = images
    self.labels = labels
    self.levels = levels
    self.batch_size = batch_size
    self.seed = seed
    self.random_flip = random_flip
    self.dequantize = dequantize
    self.process_index = process_index
    self.process_count = process_count
    self.batches_per_epoch = len(images) // batch_size
    self._epoch, self._position = 0, 0
    self._perm = self._permutation(0)
    # Per-example arrays added to every batch under their keys (text models: "tokens"
    # and "mask" of each example's caption, `diffusion.data.text.attach`).
    self.extras: dict[str, np.ndarray] = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.images))

  def get_state(self) -> dict[str, int]:
    """``{"epoch", "position"}``: where the next batch starts."""
    return {"epoch": self._epoch, "position": self._position}

  def set_state(self, state: dict[str, Any]) -> None:
    epoch, position = int(state["epoch"]), int(state["position"])
    if not 0 <= position < self.batches_per_epoch or epoch < 0:
      raise ValueError(f"bad data iterator state {state}: position must lie in "
                       f"[0, {self.batches_per_epoch})")
    if epoch != self._epoch:
      self._perm = self._permutation(epoch)
    self._epoch, self._position = epoch, position

  def _take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if self.labels is None:
      return self.images.take(idx)
    return self.images[idx], self.labels[idx]

  def _scaled(self, pixels: np.ndarray) -> np.ndarray:
    """Stored pixels as float32 in [-1, 1] (``levels`` None: float data, unchanged)."""
    if self.levels is None:
      return pixels.astype(np.float32)
    return pixels.astype(np.float32) / (self.levels - 1) * 2.0 - 1.0

  def rows(self, idx) -> tuple[np.ndarray, np.ndarray]:
    """``(images float32 in [-1, 1], labels)`` of dataset rows `idx` in stored order:
    the stored pixels with no dequantization or flips (what an encoder of the whole
    dataset reads, `data.latents`)."""
    pixels, labels = self._take(np.asarray(idx))
    return self._scaled(np.asarray(pixels)), labels

  def every_example(self, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The first `limit` (default all N) examples of epoch 0's order, each once, in
    global batches of `batch_size` (this process's slice of each, as `__next__`),
    the last one padded with zero images to the full size: of the gathered
    batches, keep the first `limit` rows. For statistics over a whole split
    (`__next__` drops an epoch's last partial batch); the iterator's own position
    is left as it is. Needs ``dequantize`` and ``random_flip`` off."""
    if self.dequantize or self.random_flip:
      raise ValueError("every_example reads the stored pixels: dequantize and random_flip "
                       "must be off")
    n = len(self.images) if limit is None else min(limit, len(self.images))
    local_b = self.batch_size // self.process_count
    perm = self._permutation(0)
    shape = self._take(perm[:1])[0].shape[1:]
    for start in range(0, n, self.batch_size):
      lo = min(start + self.process_index * local_b, n)
      pixels, labels = self._take(perm[lo:min(lo + local_b, n)])
      images = self._scaled(pixels)
      pad = local_b - len(images)
      if pad:
        images = np.concatenate([images.reshape((-1,) + shape),
                                 np.zeros((pad,) + shape, np.float32)])
        labels = np.concatenate([np.asarray(labels, np.int64), np.zeros(pad, np.int64)])
      rows = perm[lo:min(lo + local_b, n)]
      extra = {k: np.concatenate([v[rows], np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in self.extras.items()}
      yield {"image": images.astype(np.float32), "label": np.asarray(labels).astype(np.int32),
             **extra}

  def __next__(self) -> dict[str, np.ndarray]:
    """``{"image": float32 [B / process_count, H, W, C] in [-1, 1], "label": int32 [...]}``."""
    global_b = self.batch_size
    local_b = global_b // self.process_count
    start = self._position * global_b + self.process_index * local_b
    idx = self._perm[start:start + local_b]
    pixels, labels = self._take(idx)
    images = pixels.astype(np.float32)
    key = [self.seed, self._epoch, self._position]
    if self.levels is None:  # Float data (a latent model's cached latents), as stored.
      pass
    elif self.dequantize:  # Noise of global example j from (seed, epoch, position, j).
      j0 = self.process_index * local_b
      noise = np.stack([np.random.default_rng(key + [j0 + j]).uniform(size=images.shape[1:])
                        for j in range(local_b)])
      images = (images + noise.astype(np.float32)) / self.levels
    else:
      images = images / (self.levels - 1)
    if self.levels is not None:
      images = images * 2.0 - 1.0
    if self.random_flip:
      flip = (np.random.default_rng(key).uniform(size=global_b) < 0.5)[
          self.process_index * local_b:(self.process_index + 1) * local_b]
      images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    self._position += 1
    if self._position == self.batches_per_epoch:
      self._epoch, self._position = self._epoch + 1, 0
      self._perm = self._permutation(self._epoch)
    return {"image": images.astype(np.float32), "label": labels.astype(np.int32),
            **{k: v[idx] for k, v in self.extras.items()}}


def create(config, seed: int, process_index: int = 0, process_count: int = 1,
           *, loaded=None) -> DataIterator:
  """The batch iterator of `config` (= `config.data`; keys in configs/default.py).

  `loaded` (tests, custom sources) replaces loading: ``(images, labels, levels)``
  as the loaders return it.

  Raises:
    ValueError / FileNotFoundError / KeyError: unknown source or split, missing
      or empty files, a TFDS dataset that is not prepared, or images that cannot
      be fitted to `config.image_size` (upscaling) / `config.channels`; the
      message names the key.
  """
  if config.split not in SPLITS:
    raise ValueError(f"config.data.split={config.split!r} is unknown; valid: {', '.join(SPLITS)}")
  images, labels, levels = load(config) if loaded is None else loaded
  if labels is not None:
    if images.ndim != 4:
      raise ValueError(f"the {config.source!r} images have shape {images.shape}; expected "
                       "[N, H, W, C]")
    images = fit(images, config.image_size, config.channels, repr(config.source),
                 crop_mode(config), config.get("pad", 0))
    if len(labels) != len(images):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
  return DataIterator(images, labels, levels, batch_size=config.batch_size, seed=seed,
                      random_flip=config.random_flip, dequantize=config.dequantize,
                      process_index=process_index, process_count=process_count)
