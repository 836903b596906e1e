"""Image grids as PNG files; reverse-process animations as GIFs.

    grid = image_grid(samples, nrow=8)     # uint8 [H', W', C]
    save_png("workdir/samples/step_001000.png", grid)
    save_gif("workdir/samples/final_001000.gif", [image_grid(x) for x in xs])

Tiny images (8x8 digits) are upscaled with nearest-neighbour so every tile is
at least `min_tile` pixels wide.
"""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """``[-1, 1]`` floats -> uint8 ``0..255`` (values outside are clipped)."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def tile_scale(size: int, min_tile: int = 32) -> int:
  """The integer nearest-neighbour upscale making a `size`-pixel tile >= `min_tile`."""
  return max(1, math.ceil(min_tile / size))


def image_grid(images: np.ndarray, nrow: int | None = None, *, padding: int = 2,
               min_tile: int = 32, pad_value: int = 255) -> np.ndarray:
  """Tiles images into one picture.

  Args:
    images: ``[N, H, W, C]`` floats in ``[-1, 1]``.
    nrow: tiles per row; default ``ceil(sqrt(N))`` (a square grid).
    padding: pixels between tiles (and around the grid).
    min_tile: tiles are upscaled by an integer factor to at least this size.
    pad_value: the uint8 value of the padding.

  Returns:
    uint8 ``[rows * (h + padding) + padding, nrow * (w + padding) + padding, C]``
    where ``h = H * tile_scale(H)`` (likewise w).
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
  n, h, w, c = images.shape
  nrow = nrow or math.ceil(math.sqrt(n))
  rows = math.ceil(n / nrow)
  s = tile_scale(max(h, w), min_tile)
  tiles = to_uint8(images).repeat(s, axis=1).repeat(s, axis=2)
  h, w = h * s, w * s
  grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c),
                 pad_value, np.uint8)
  for i in range(n):
    r, col = divmod(i, nrow)
    y, x = padding + r * (h + padding), padding + col * (w + padding)
    grid[y:y + h, x:x + w] = tiles[i]
  return grid


def save_png(path: str, grid: np.ndarray) -> None:
  """Writes a uint8 ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` image as PNG."""
  grid = np.asarray(grid)
  if grid.dtype != np.uint8:
    raise ValueError(f"grid must be uint8 (see image_grid), got {grid.dtype}")
  if grid.ndim == 3 and grid.shape[-1] == 1:
    grid = grid[..., 0]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(grid).save(path)


def reverse_process_frames(trajectory: np.ndarray, final: np.ndarray,
                           num_frames: int = 50) -> list[np.ndarray]:
  """Image grids of ``<= num_frames`` evenly spaced states of a sampler trajectory.

  Args:
    trajectory: ``[S, N, H, W, C]`` states after each sampler step (a
      sampler's ``traj["x"]``).
    final: ``[N, H, W, C]`` the sampler's output; it replaces the last state
      (samplers return the noise-free mean at the end).
    num_frames: the most frames (``min(num_frames, S)``).

  Returns:
    uint8 grids (`image_grid`, values clipped to [-1, 1]), from noise to `final`.
  """
  steps = trajectory.shape[0]
  idx = np.unique(np.round(np.linspace(0, steps - 1, min(num_frames, steps))).astype(int))
  frames = [np.asarray(trajectory[i]) for i in idx[:-1]] + [np.asarray(final)]
  return [image_grid(np.clip(f, -1.0, 1.0)) for f in frames]


def save_gif(path: str, frames, duration_ms: int = 80, last_frame_ms: int = 1500) -> None:
  """Writes uint8 frames (each ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]``) as a looping GIF.

  Every frame shows for `duration_ms`, the last one for `last_frame_ms` (the
  finished samples). Pillow may merge consecutive identical frames.
  """
  frames = [np.asarray(f) for f in frames]
  if not frames:
    raise ValueError("save_gif needs at least one frame")
  shapes = {f.shape for f in frames}
  if len(shapes) != 1 or any(f.dtype != np.uint8 for f in frames):
    raise ValueError(f"frames must be uint8 of one shape, got shapes {sorted(shapes)} and "
                     f"dtypes {sorted({str(f.dtype) for f in frames})}")
  images = [Image.fromarray(f[..., 0] if f.ndim == 3 and f.shape[-1] == 1 else f)
            for f in frames]
  durations = [duration_ms] * (len(images) - 1) + [last_frame_ms]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
