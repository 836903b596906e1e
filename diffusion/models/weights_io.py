"""Reading weight files without the packages that wrote them (no torch, no safetensors).

`read_safetensors` reads the ``.safetensors`` format (diffusers' and transformers'
default), used by `diffusion.port` (UNets) and `models.text_encoder` (CLIP).
"""
from __future__ import annotations

import json
import struct

import numpy as np

from diffusion.core import checks

_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                       "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}



def read_safetensors(path) -> dict[str, np.ndarray]:
  """The arrays of a ``.safetensors`` file (the format: an 8-byte little-endian
  header length, a JSON header of name -> dtype, shape, byte offsets, the bytes)."""
  with open(path, "rb") as f:
    blob = f.read()
  if len(blob) < 8:
    raise checks.ConfigError(f"{path} is not a safetensors file (it has {len(blob)} bytes)")
  (n,) = struct.unpack("<Q", blob[:8])
  try:
    header = json.loads(blob[8:8 + n])
  except ValueError:
    raise checks.ConfigError(f"{path} is not a safetensors file (its header is not JSON)") \
        from None
  data, out = memoryview(blob)[8 + n:], {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    begin, end = info["data_offsets"]
    if info["dtype"] == "BF16":
      import ml_dtypes  # pylint: disable=g-import-not-at-top  (comes with jax)
      dtype = np.dtype(ml_dtypes.bfloat16)
    elif info["dtype"] in _SAFETENSORS_DTYPES:
      dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
    else:
      raise checks.ConfigError(f"{path}: array {name} has dtype {info['dtype']}, which this "
                               f"reader does not know ({', '.join(_SAFETENSORS_DTYPES)}, BF16)")
    out[name] = np.frombuffer(data[begin:end], dtype).reshape(info["shape"])
  return out
