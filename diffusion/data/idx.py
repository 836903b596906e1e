"""MNIST's idx file format, and the error of a data file that cannot be read.

Shared by the sources (`data.sources`) and the preparation of datasets
(`data.prepare`), so neither imports the other's module for it.
"""
from __future__ import annotations

import gzip

import numpy as np

from diffusion.core.checks import RunError, why


class DataError(RunError):
  """A data file that cannot be read or decoded; the message names the file."""


def read_idx(path: str) -> np.ndarray:
  """Reads an MNIST idx file (optionally gzipped) into a numpy array."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:  # Not gzip, truncated, unreadable.
    kind = "gzipped " if path.endswith(".gz") else ""
    raise DataError(f"{path} cannot be read as a {kind}MNIST idx file ({why(e)}); "
                    "download it again") from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise DataError(f"{path} is not an unsigned-byte idx file (bad magic number)")
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise DataError(f"{path}: its header says {dims} ({int(np.prod(dims))} values) but it "
                    f"holds {data.size}: the file is truncated or damaged; download it again")
  return data.reshape(dims)
