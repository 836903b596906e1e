"""The latent cache: a latent model's training images, encoded once by its autoencoder.

    it, write = latents.cached_iterator(codec, it, workdir)   # modes.train
    write()   # after the first train step: workdir/latents/part_PPP_of_QQQ.npz + meta.json

Process ``p`` of ``P`` encodes the examples ``p, p + P, p + 2P, ...`` of the dataset
(in stored order, in batches of 256, each padded to one compiled shape) and keeps
them in ``part_p_of_P.npz`` (``latents`` float32 ``[n_p, h, w, c]``, already scaled
by the codec, and ``labels``); the parts are exchanged (``process_allgather``) so
that every process holds all N latents, and the batches come from a
`DataIterator` over them with the image iterator's seed, batch size, process slice
and per-example extras (a text model's tokens): the same examples in the same
order as the image batches would be. ``meta.json`` names what the latents are of
(the autoencoder's workdir, step and scale, the data settings, N, the latent
shape); a run whose meta differs encodes again (and overwrites the parts when it
writes), a run whose meta matches (a resume) reads its part instead.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.data.iterator import DataIterator

CACHE_DIR = "latents"
BATCH = 256


def meta_of(codec, it: DataIterator, data_config) -> dict:
  """What the cached latents are of (the cache is reused only when this matches)."""
  d = data_config
  return {"autoencoder": codec.source, "num_examples": len(it.images),
          "latent_shape": list(codec.latent_shape),
          "data": {"source": d.source, "name": d.name,
                   "data_dir": os.path.abspath(d.data_dir) if d.data_dir else "",
                   "split": d.split, "image_size": d.image_size, "channels": d.channels,
                   "crop": d.crop, "pad": d.get("pad", 0)}}


def part_path(workdir, p: int, count: int) -> str:
  return os.path.join(os.fspath(workdir), CACHE_DIR, f"part_{p:03d}_of_{count:03d}.npz")


def meta_path(workdir) -> str:
  return os.path.join(os.fspath(workdir), CACHE_DIR, "meta.json")


def rows_of(n: int, p: int, count: int) -> np.ndarray:
  """The dataset rows process `p` of `count` encodes."""
  return np.arange(p, n, count)


def encode_rows(encode: Callable, it: DataIterator, rows: np.ndarray, progress=None):
  """``(latents, labels)`` of dataset `rows`: the stored images in [-1, 1], encoded."""
  fn = jax.jit(encode)
  out, labels = [], []
  chunks = range(0, len(rows), BATCH)
  for i in (progress(chunks) if progress else chunks):
    idx = rows[i:i + BATCH]
    x, lab = it.rows(idx)
    pad = BATCH - len(x)
    if pad:
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    out.append(np.asarray(fn(jnp.asarray(x)))[:len(idx)])
    labels.append(np.asarray(lab, np.int64))
  if not out:
    return None, None
  return np.concatenate(out).astype(np.float32), np.concatenate(labels)


def assemble(parts, labels, n: int):
  """``(latents [N, ...], labels [N])`` from the parts of P processes (part p: rows p::P)."""
  count = len(parts)
  full = np.zeros((n,) + parts[0].shape[1:], np.float32)
  full_labels = np.zeros(n, np.int64)
  for p in range(count):
    k = len(rows_of(n, p, count))
    full[p::count], full_labels[p::count] = np.asarray(parts[p])[:k], np.asarray(labels[p])[:k]
  return full, full_labels


def _gather(part: np.ndarray, labels: np.ndarray, n: int, count: int):
  """All N rows from every process's part (`assemble` of ``process_allgather``'s)."""
  if count == 1:
    return part, labels
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  size = -(-n // count)
  pad = size - len(part)
  part = np.concatenate([part, np.zeros((pad,) + part.shape[1:], part.dtype)])
  labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
  parts, labs = multihost_utils.process_allgather((part, labels))
  return assemble(list(np.asarray(parts)), list(np.asarray(labs)), n)


def load_part(workdir, meta: dict, p: int, count: int):
  """``(latents, labels)`` of this process's cached part when ``meta.json`` matches
  `meta`, else None."""
  path, mpath = part_path(workdir, p, count), meta_path(workdir)
  if not (os.path.exists(path) and os.path.exists(mpath)):
    return None
  with open(mpath, encoding="utf-8") as f:
    if json.load(f) != json.loads(json.dumps(meta)):
      return None
  with np.load(path) as z:
    return z["latents"], z["labels"]


def cached_iterator(codec, it: DataIterator, workdir, data_config, *, echo=print,
                    progress=None):
  """``(latent iterator, write)`` for the image iterator `it` (module doc). `write()`
  saves this process's part and the meta (process 0) when they were encoded now; a
  no-op when they were read from the cache."""
  p, count = it.process_index, it.process_count
  n = len(it.images)
  meta = meta_of(codec, it, data_config)
  found = load_part(workdir, meta, p, count)
  if found is not None:
    part, labels = found
    echo(f"latents: read {len(part)} cached latents {tuple(part.shape[1:])} from "
         f"{part_path(workdir, p, count)}")
    write = lambda: None
  else:
    import time  # pylint: disable=g-import-not-at-top
    t0 = time.time()
    part, labels = encode_rows(codec.encode, it, rows_of(n, p, count), progress)
    echo(f"latents: encoded {len(part)} images to {tuple(part.shape[1:])} latents "
         f"(scale {codec.scale:.4f}) in {time.time() - t0:.1f}s; cached in "
         f"{os.path.join(os.fspath(workdir), CACHE_DIR)} at the first step")

    def write(part=part, labels=labels):
      os.makedirs(os.path.dirname(part_path(workdir, p, count)), exist_ok=True)
      tmp = part_path(workdir, p, count) + ".tmp.npz"
      np.savez(tmp, latents=part, labels=labels)
      os.replace(tmp, part_path(workdir, p, count))
      if p == 0:
        with open(meta_path(workdir) + ".tmp", "w", encoding="utf-8") as f:
          json.dump(meta, f, indent=2, sort_keys=True)
        os.replace(meta_path(workdir) + ".tmp", meta_path(workdir))
  full, full_labels = _gather(part, labels, n, count)
  latent_it = DataIterator(full, full_labels.astype(np.int32), None,
                           batch_size=it.batch_size, seed=it.seed, process_index=p,
                           process_count=count)
  latent_it.extras = dict(it.extras)
  latent_it.set_state(it.get_state())
  return latent_it, write
