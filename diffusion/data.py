"""Datasets as deterministic, resumable iterators of NHWC batches in [-1, 1].

    it = data.create(config.data, seed=config.seed)
    batch = next(it)     # {"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B]}
    state = it.get_state()   # {"epoch": int, "position": int}, JSON-serialisable
    it.set_state(state)      # the next batch is the one that followed `state`

Sources (`config.data.source`): "digits" (scikit-learn's bundled 8x8 digits,
1,797 images, offline) and "files" (MNIST idx files in a directory, or an
.npz). "tfds" is not implemented yet.

Order: epoch ``e`` visits the examples in the permutation drawn from
``(seed, e)``, in ``N // B`` full global batches (the remainder is dropped).
Flips and dequantisation noise are drawn from ``(seed, epoch, position)``, so a
restored iterator yields bit-identical batches. With several processes every
process yields its own contiguous ``B / process_count`` slice of each global
batch.
"""
from __future__ import annotations

import gzip
import os
from typing import Any, Iterator

import numpy as np

SOURCES = ("digits", "files", "tfds")
SPLITS = ("train", "test")

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# --------------------------------------------------------------------------
# Loading: every source gives integer pixels [N, H, W, C], labels [N], levels.
# --------------------------------------------------------------------------


def _load_digits():
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = digits.images.astype(np.int64)[..., None]  # values 0..16
  return images, digits.target.astype(np.int32), 17


def _read_idx(path: str) -> np.ndarray:
  """Reads an MNIST idx file (optionally gzipped) into a numpy array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic number)")
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise ValueError(f"{path}: header says {dims} but holds {data.size} values")
  return data.reshape(dims)


def _find(directory: str, name: str) -> str | None:
  for candidate in (name, name + ".gz"):
    path = os.path.join(directory, candidate)
    if os.path.exists(path):
      return path
  return None


def _load_mnist_dir(directory: str, split: str):
  images_name, labels_name = _MNIST_FILES[split]
  images_path = _find(directory, images_name)
  if images_path is None:
    raise FileNotFoundError(
        f"config.data.data_dir={directory!r} has no {images_name}[.gz]; expected a "
        f"directory of MNIST idx files ({', '.join(sum(_MNIST_FILES.values(), ()))}, "
        "optionally gzipped) or an .npz file")
  images = _read_idx(images_path)
  if images.ndim == 3:
    images = images[..., None]
  labels_path = _find(directory, labels_name)
  labels = (_read_idx(labels_path).astype(np.int32) if labels_path
            else np.zeros(len(images), np.int32))
  return images, labels, 256


def _load_npz(path: str):
  with np.load(path) as f:
    keys = set(f.files)
    image_key = next((k for k in ("image", "x") if k in keys), None)
    if image_key is None:
      raise KeyError(f"{path} has keys {sorted(keys)}; expected 'image' or 'x' "
                     "(and optionally 'label' or 'y')")
    images = f[image_key]
    label_key = next((k for k in ("label", "y") if k in keys), None)
    labels = (f[label_key].astype(np.int32) if label_key
              else np.zeros(len(images), np.int32))
  if images.ndim == 3:
    images = images[..., None]
  if not np.issubdtype(images.dtype, np.integer):
    raise ValueError(f"{path}: '{image_key}' has dtype {images.dtype}; expected integer "
                     "pixels 0..255 (uint8)")
  return images, labels, 256


def _load(config):
  source = config.source
  if source == "digits":
    return _load_digits()
  if source == "files":
    path = config.data_dir
    if not path:
      raise ValueError("config.data.source='files' needs config.data.data_dir: a directory "
                       "of MNIST idx files or an .npz file")
    if os.path.isdir(path):
      return _load_mnist_dir(path, config.split)
    if path.endswith(".npz") and os.path.isfile(path):
      return _load_npz(path)
    raise FileNotFoundError(
        f"config.data.data_dir={path!r} does not exist or is neither a directory (of MNIST "
        "idx files) nor an .npz file")
  if source == "tfds":
    raise ValueError(
        "config.data.source='tfds' is not implemented yet; use source='digits' (built-in, "
        "offline) or source='files' with data_dir=a directory of MNIST idx files or an .npz")
  raise ValueError(f"config.data.source={source!r} is unknown; valid: {', '.join(SOURCES)}")


# --------------------------------------------------------------------------
# The iterator.
# --------------------------------------------------------------------------


class DataIterator(Iterator[dict]):
  """Deterministic, resumable batches of an in-memory dataset (see module doc)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, levels: int, *,
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

  def __next__(self) -> dict[str, np.ndarray]:
    """``{"image": float32 [B / process_count, H, W, C] in [-1, 1], "label": int32 [...]}``."""
    global_b = self.batch_size
    local_b = global_b // self.process_count
    start = self._position * global_b + self.process_index * local_b
    idx = self._perm[start:start + local_b]
    rng = np.random.default_rng([self.seed, self._epoch, self._position, self.process_index])
    images = self.images[idx].astype(np.float32)
    if self.dequantize:
      images = (images + rng.uniform(size=images.shape).astype(np.float32)) / self.levels
    else:
      images = images / (self.levels - 1)
    images = images * 2.0 - 1.0
    if self.random_flip:
      flip = rng.uniform(size=local_b) < 0.5
      images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    self._position += 1
    if self._position == self.batches_per_epoch:
      self._epoch, self._position = self._epoch + 1, 0
      self._perm = self._permutation(self._epoch)
    return {"image": images.astype(np.float32), "label": self.labels[idx].astype(np.int32)}


def create(config, seed: int, process_index: int = 0, process_count: int = 1) -> DataIterator:
  """The batch iterator of `config` (= `config.data`; keys in configs/default.py).

  Raises:
    ValueError / FileNotFoundError / KeyError: unknown source or split, missing
      files, or images whose size or channels differ from
      `config.image_size` / `config.channels`; the message names the key.
  """
  if config.split not in SPLITS:
    raise ValueError(f"config.data.split={config.split!r} is unknown; valid: {', '.join(SPLITS)}")
  images, labels, levels = _load(config)
  _, h, w, c = images.shape
  if (h, w) != (config.image_size, config.image_size):
    raise ValueError(f"config.data.image_size={config.image_size} but the {config.source!r} "
                     f"images are {h}x{w} (resizing is not implemented)")
  if c != config.channels:
    raise ValueError(f"config.data.channels={config.channels} but the {config.source!r} "
                     f"images have {c} channels")
  if len(labels) != len(images):
    raise ValueError(f"{len(images)} images but {len(labels)} labels")
  return DataIterator(images, labels, levels, batch_size=config.batch_size, seed=seed,
                      random_flip=config.random_flip, dequantize=config.dequantize,
                      process_index=process_index, process_count=process_count)
