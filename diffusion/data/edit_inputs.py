"""Inputs of the editing applications (issue 17): images to edit and inpainting masks.

    x = edit_inputs.read_images("digit.png" | "folder/" | "images.npz", (28, 28, 1))
    m = edit_inputs.mask("half", (28, 28))            # or "box", "strokes", "file.png"

Images become float32 ``[N, H, W, C]`` in [-1, 1] (uint8 pixels ``p`` as
``p / 255 * 2 - 1``; an npz's float arrays are taken as already in [-1, 1]); a mask
is float32 ``[H, W]``, 1 where the image is kept and 0 where it is generated. Every
problem (a missing path, an image of another size or channel count than the model's,
a mask of another size, a mask file that is not black and white) is a `ValueError`
whose one line names the path and what is allowed, raised before any compute.

Built-in masks:

- ``"half"``: the bottom half generated (rows ``H // 2 ..``), the top kept;
- ``"box"``: a centred square of side ``H // 2`` generated;
- ``"strokes"``: random strokes generated (seeded): ``num`` polylines of 4 segments
  with random directions, each ``width`` pixels wide, as in inpainting benchmarks'
  free-form masks.
"""
from __future__ import annotations

import os

import numpy as np

BUILT_IN = ("half", "box", "strokes")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _to_float(pixels: np.ndarray, source: str, noisy: bool = False) -> np.ndarray:
  if np.issubdtype(pixels.dtype, np.integer):
    if pixels.min() < 0 or pixels.max() > 255:
      raise ValueError(f"{source}: integer pixels must lie in 0..255")
    return pixels.astype(np.float32) / 255.0 * 2.0 - 1.0
  x = pixels.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{source}: float images must be finite")
  if not noisy and (x.min() < -1.0 - 1e-6 or x.max() > 1.0 + 1e-6):
    raise ValueError(f"{source}: float images must lie in [-1, 1] (noisy images to denoise "
                     "may leave it)")
  return x


def _read_png(path: str, channels: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      im = im.convert("L" if channels == 1 else "RGB")
      a = np.asarray(im)
  except Exception as e:  # pylint: disable=broad-except  (Pillow raises many kinds)
    raise ValueError(f"{path}: cannot be read as an image ({type(e).__name__})") from None
  return a[..., None] if a.ndim == 2 else a


def read_images(path, shape, noisy: bool = False) -> np.ndarray:
  """The images at `path` (one image file, a folder of them, or an npz with ``images``
  or ``arr_0``) as float32 ``[N, H, W, C]`` in [-1, 1]; `shape` = the model's ``(H, W,
  C)``, which every image must have (no silent resizing). `noisy`: float images may
  leave [-1, 1] (noisy images to denoise, stored unclipped)."""
  path, shape = os.fspath(path), tuple(int(s) for s in shape)
  if not os.path.exists(path):
    raise ValueError(f"config.edit.input={path!r} does not exist: give an image file, a "
                     "folder of images or an .npz")
  if os.path.isdir(path):
    files = sorted(os.path.join(path, n) for n in os.listdir(path)
                   if n.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise ValueError(f"config.edit.input={path!r} holds no image files "
                       f"({', '.join(IMAGE_EXTENSIONS)})")
    arrays, names = [_read_png(f, shape[2]) for f in files], files
  elif path.lower().endswith(".npz"):
    with np.load(path) as z:
      key = next((k for k in ("images", "arr_0") if k in z.files), None)
      if key is None:
        raise ValueError(f"config.edit.input={path!r}: the npz has {sorted(z.files)}; expected "
                         "'images' or 'arr_0' ([N, H, W, C])")
      a = z[key]
    if a.ndim == 3 and shape[2] == 1:
      a = a[..., None]
    arrays, names = list(a), [f"{path}[{i}]" for i in range(len(a))]
  elif path.lower().endswith(IMAGE_EXTENSIONS):
    arrays, names = [_read_png(path, shape[2])], [path]
  else:
    raise ValueError(f"config.edit.input={path!r}: not an image ({', '.join(IMAGE_EXTENSIONS)}), "
                     "a folder or an .npz")
  out = []
  for a, name in zip(arrays, names):
    if tuple(a.shape) != shape:
      raise ValueError(f"config.edit.input: {name} is {'x'.join(map(str, a.shape))} but the model "
                       f"takes {'x'.join(map(str, shape))} images (H x W x C)")
    out.append(_to_float(np.asarray(a), name, noisy))
  return np.stack(out)


def _strokes(size, num: int, width: int, seed: int) -> np.ndarray:
  h, w = size
  rng = np.random.default_rng(seed)
  gen = np.zeros((h, w), bool)
  yy, xx = np.mgrid[0:h, 0:w]
  for _ in range(num):
    p = rng.uniform([0, 0], [h, w])
    for _ in range(4):
      angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.5) * min(h, w)
      q = np.clip(p + length * np.array([np.sin(angle), np.cos(angle)]), 0, [h - 1, w - 1])
      d = q - p
      s = np.clip(((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
      dist = np.hypot(yy - (p[0] + s * d[0]), xx - (p[1] + s * d[1]))
      gen |= dist <= width / 2
      p = q
  return (~gen).astype(np.float32)


def mask(spec: str, size, *, seed: int = 0, num: int = 3, width: int | None = None) -> np.ndarray:
  """The mask ``[H, W]`` (1 kept, 0 generated) named by `spec`: one of `BUILT_IN`, or a
  PNG / image file of exactly ``size`` whose pixels are black (0, generate) or white
  (255, keep)."""
  h, w = (int(s) for s in size)
  if spec == "half":
    m = np.ones((h, w), np.float32)
    m[h // 2:] = 0.0
    return m
  if spec == "box":
    m = np.ones((h, w), np.float32)
    s = h // 2
    m[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s] = 0.0
    return m
  if spec == "strokes":
    return _strokes((h, w), num, width or max(1, h // 10), seed)
  if not os.path.exists(spec):
    raise ValueError(f"config.edit.mask={spec!r}: neither a built-in mask ({', '.join(BUILT_IN)}) "
                     "nor an existing image file")
  a = _read_png(spec, 1)[..., 0]
  if a.shape != (h, w):
    raise ValueError(f"config.edit.mask={spec!r} is {a.shape[0]}x{a.shape[1]} but the images are "
                     f"{h}x{w}")
  if not np.all((a == 0) | (a == 255)):
    raise ValueError(f"config.edit.mask={spec!r} must be black (0: generate) and white (255: keep) "
                     f"only; it has {len(np.unique(a))} gray levels")
  return (a == 255).astype(np.float32)
