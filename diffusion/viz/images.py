"""Image grids as PNG files; reverse-process animations as GIFs; diagnostic figures.

    grid = image_grid(samples, nrow=8)     # uint8 [H', W', C]
    save_png("workdir/samples/step_001000.png", grid)
    save_gif("workdir/samples/final_001000.gif", [image_grid(x) for x in xs])
    save_png("fwd.png", forward_strip(images, {"linear": sched}, rng))   # x_t vs t
    save_png("traj.png", trajectory_strip(traj["x"], traj["x0"]))       # x_t and x0-hat
    idx, grid = nearest_neighbours(samples, train_images, k=3)           # memorisation
    schedule_plot("schedules.png", {"linear": s1, "cosine": s2})         # alpha_bar, logSNR

The figures are pure functions returning uint8 images (`image_grid` layout);
`schedule_plot` and `save_labelled` draw with matplotlib's Agg canvas (no
pyplot, no global backend switch).

Tiny images (8x8 digits) are upscaled with nearest-neighbour so every tile is
at least `min_tile` pixels wide.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from PIL import Image

from diffusion.core import schedules


def to_uint8(images: np.ndarray) -> np.ndarray:
  """``[-1, 1]`` floats -> uint8 ``round((x + 1) * 127.5)``, clipped to ``0..255``: the
  quantisation of PNGs, of ADM's / score_sde's sample files and of FID's inputs."""
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


def _open_for_write(path):
  """`path` (local or any `etils.epath` filesystem, e.g. gs://) opened "wb", parents made."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  return path.open("wb")


def save_png(path: str, grid: np.ndarray) -> None:
  """Writes a uint8 ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` image as PNG."""
  grid = np.asarray(grid)
  if grid.dtype != np.uint8:
    raise ValueError(f"grid must be uint8 (see image_grid), got {grid.dtype}")
  if grid.ndim == 3 and grid.shape[-1] == 1:
    grid = grid[..., 0]
  with _open_for_write(path) as f:
    Image.fromarray(grid).save(f, format="PNG")


def reverse_process_frames(trajectory: np.ndarray, final: np.ndarray,
                           num_frames: int = 50, nrow: int | None = None) -> list[np.ndarray]:
  """Image grids of ``<= num_frames`` evenly spaced states of a sampler trajectory.

  Args:
    trajectory: ``[S, N, H, W, C]`` states after each sampler step (a
      sampler's ``traj["x"]``).
    final: ``[N, H, W, C]`` the sampler's output; it replaces the last state
      (samplers return the noise-free mean at the end).
    num_frames: the most frames (``min(num_frames, S)``).
    nrow: tiles per row (`image_grid`; default a square grid).

  Returns:
    uint8 grids (`image_grid`, values clipped to [-1, 1]), from noise to `final`.
  """
  steps = trajectory.shape[0]
  idx = np.unique(np.round(np.linspace(0, steps - 1, min(num_frames, steps))).astype(int))
  frames = [np.asarray(trajectory[i]) for i in idx[:-1]] + [np.asarray(final)]
  return [image_grid(np.clip(f, -1.0, 1.0), nrow) for f in frames]


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
  with _open_for_write(path) as f:
    images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                   duration=durations, loop=0)


# --------------------------------------------------------------------------
# Diagnostic figures.
# --------------------------------------------------------------------------


def forward_timesteps(num_steps: int, fractions) -> np.ndarray:
  """``t = round(f * (T - 1))`` for each fraction; int32."""
  return np.round(np.asarray(fractions, np.float64) * (num_steps - 1)).astype(np.int32)


def forward_noised(images, scheds: dict, rng, fractions=(0.0, 0.25, 0.5, 0.75, 1.0)) -> np.ndarray:
  """Float ``x_t`` of `forward_strip`: ``[N, len(scheds), len(fractions), H, W, C]``.

  One noise ``jax.random.normal(rng, images.shape)`` per image, shared by every
  schedule and fraction, so entries differ only by ``(alpha_bar_t)``.
  """
  x0 = jnp.asarray(images, jnp.float32)
  if x0.ndim != 4:
    raise ValueError(f"images must be [N, H, W, C], got shape {x0.shape}")
  if not scheds:
    raise ValueError("forward_strip needs at least one schedule")
  noise = jax.random.normal(rng, x0.shape, jnp.float32)
  n = x0.shape[0]
  out = [[schedules.q_sample(s, x0, jnp.full((n,), t, jnp.int32), noise)
          for t in forward_timesteps(s.num_steps, fractions)] for s in scheds.values()]
  return np.asarray(jnp.stack([jnp.stack(row, 1) for row in out], 1))


def forward_strip(images, scheds: dict, rng, fractions=(0.0, 0.25, 0.5, 0.75, 1.0),
                  **grid_kwargs) -> np.ndarray:
  """The forward-noising figure: one row per (image, schedule), image-major.

  Columns are ``x_t`` at ``t = round(f * (T - 1))`` for each of `fractions`
  (see `forward_noised`); values are clipped to [-1, 1]. Returns the uint8
  `image_grid` with ``nrow = len(fractions)``.
  """
  x = forward_noised(images, scheds, rng, fractions)
  return image_grid(np.clip(x.reshape((-1,) + x.shape[3:]), -1.0, 1.0),
                    nrow=len(fractions), **grid_kwargs)


def trajectory_strip(traj_x, traj_x0, num_columns: int = 8, **grid_kwargs) -> np.ndarray:
  """Two rows per image, ``x_t`` then the predicted ``x0``, at evenly spaced steps.

  Args:
    traj_x, traj_x0: ``[S, N, H, W, C]`` (a sampler's ``traj["x"]``, ``traj["x0"]``).
    num_columns: the most columns (``min(num_columns, S)``, first and last step included).
  """
  traj_x, traj_x0 = np.asarray(traj_x), np.asarray(traj_x0)
  if traj_x.shape != traj_x0.shape or traj_x.ndim != 5:
    raise ValueError(f"traj_x and traj_x0 must both be [S, N, H, W, C]; got {traj_x.shape} "
                     f"and {traj_x0.shape}")
  steps = traj_x.shape[0]
  idx = np.unique(np.round(np.linspace(0, steps - 1, min(num_columns, steps))).astype(int))
  pair = np.stack([traj_x[idx], traj_x0[idx]], 0)  # [2, C', N, H, W, C]
  tiles = pair.transpose(2, 0, 1, 3, 4, 5).reshape((-1,) + traj_x.shape[2:])
  return image_grid(np.clip(tiles, -1.0, 1.0), nrow=len(idx), **grid_kwargs)


def nearest_neighbours(samples, train, k: int = 3, **grid_kwargs) -> tuple[np.ndarray, np.ndarray]:
  """Each sample's `k` nearest training images in pixel L2 (a memorisation check).

  scikit-learn's exact (brute-force) search in float64: it computes the
  distances in chunks of its working memory (1 GiB by default), never the
  whole ``[N, M]`` matrix at once.

  Returns:
    ``(indices int64 [N, k], grid)``: grid rows are a sample then its
    neighbours, nearest first (``image_grid`` with ``nrow = k + 1``).
  """
  from sklearn.neighbors import NearestNeighbors  # pylint: disable=g-import-not-at-top
  samples, train = np.asarray(samples), np.asarray(train)
  if samples.shape[1:] != train.shape[1:]:
    raise ValueError(f"samples {samples.shape} and training images {train.shape} differ in "
                     "[H, W, C]")
  n, m = len(samples), len(train)
  if not 1 <= k <= m:
    raise ValueError(f"k={k} must lie in [1, {m}] (the number of training images)")
  search = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean")
  search.fit(train.reshape(m, -1).astype(np.float64))
  _, best_i = search.kneighbors(samples.reshape(n, -1).astype(np.float64))
  best_i = best_i.astype(np.int64)
  tiles = np.concatenate([samples[:, None], train[best_i]], 1).reshape((-1,) + samples.shape[1:])
  return best_i, image_grid(np.clip(tiles, -1.0, 1.0), nrow=k + 1, **grid_kwargs)


def _figure(figsize, dpi):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=figsize, dpi=dpi)
  FigureCanvasAgg(fig)
  return fig


def _save_figure(fig, path: str) -> None:
  with _open_for_write(path) as f:
    fig.savefig(f, dpi=fig.dpi, format="png")


def schedule_plot(path: str, scheds: dict, figsize=(10.0, 4.0), dpi: int = 100) -> None:
  """PNG (``figsize * dpi`` pixels) of alpha_bar(t) and logSNR(t) against t/T per schedule.

  ``logSNR = log(alpha_bar / (1 - alpha_bar))``, with ``1 - alpha_bar`` from
  `DiscreteSchedule.one_minus_alpha_bars` (no float32 cancellation at small t).
  """
  fig = _figure(figsize, dpi)
  ax_ab, ax_snr = fig.subplots(1, 2)
  for name, s in scheds.items():
    ab = np.asarray(s.alpha_bars, np.float64)
    one_minus = np.asarray(s.one_minus_alpha_bars, np.float64)
    t = np.arange(s.num_steps) / s.num_steps
    ax_ab.plot(t, ab, label=name)
    with np.errstate(divide="ignore"):
      ax_snr.plot(t, np.log(ab) - np.log(one_minus), label=name)
  ax_ab.set(xlabel="t / T", ylabel=r"$\bar\alpha_t$", title="signal fraction")
  ax_snr.set(xlabel="t / T", ylabel=r"logSNR = $\log(\bar\alpha_t / (1 - \bar\alpha_t))$",
             title="log signal-to-noise ratio")
  for ax in (ax_ab, ax_snr):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  _save_figure(fig, path)


def sampler_family(spec: str) -> str:
  """An eval spec without its step count: the line its row belongs to in
  `metric_vs_nfe_plot` (``ddim:steps=10,eta=0`` -> ``ddim:eta=0``)."""
  method, _, options = spec.partition(":")
  kept = [o for o in options.split(",") if o and o.split("=")[0] not in ("steps", "num_steps")]
  return ":".join([method] + ([",".join(kept)] if kept else []))


def metric_vs_nfe_plot(path: str, rounds, metric: str = "fid", title: str | None = None,
                       figsize=(7.0, 4.5), dpi: int = 100) -> dict[str, list]:
  """PNG of `metric` against NFE (log axis) for the rows of an eval ``results.json``:
  one line per sampler family (`sampler_family`), the ``data:*`` row as a dashed
  horizontal line (the metric's floor at this N). Returns ``{family: [(nfe,
  value), ...]}``, sorted by NFE, as drawn.

  ``rounds`` may also be a mapping ``{label: rounds}`` (several models, e.g. one per
  formulation): the lines are then ``"label: family"``, one colour per sampler family
  and one line style per label, and each distinct floor is drawn once."""
  tables = dict(rounds) if isinstance(rounds, Mapping) else {None: rounds}
  lines: dict[str, list] = {}
  style: dict[str, tuple] = {}  # line -> (label's index, family)
  floors: dict[tuple, list] = {}
  for i, (label, rows) in enumerate(tables.items()):
    for row in rows:
      if row.get(metric) is None:
        continue
      if row["method"] == "data":
        floors.setdefault((row["spec"], round(row[metric], 6)), []).append(label)
        continue
      family = sampler_family(row["spec"])
      key = family if label is None else f"{label}: {family}"
      lines.setdefault(key, []).append((row["nfe"], row[metric]))
      style[key] = (i, family)
  if not lines:
    raise ValueError(f"no sampler rows with {metric!r} to plot")
  fig = _figure(figsize, dpi)
  ax = fig.subplots()
  families = list(dict.fromkeys(f for _, f in style.values()))
  linestyles, markers = ("-", "--", ":", "-."), "os^vD"
  for key, points in lines.items():
    points.sort()
    i, family = style[key]
    f = families.index(family)  # Past 10 families the colours repeat: other markers.
    ax.plot(*zip(*points), marker=(markers if f < 10 else "x*+PX")[i % len(markers)],
            linestyle=linestyles[i % len(linestyles)], color=f"C{f % 10}", label=key,
            markersize=6 if f < 10 else 8)
  for (spec, value), owners in floors.items():
    who = "" if None in owners or len(owners) == len(tables) else f" ({', '.join(owners)})"
    ax.axhline(value, color="gray", linestyle="--", label=f"{spec}{who} (floor at this N)")
  ax.set(xscale="log", xlabel="network evaluations (NFE)", ylabel=metric.upper(),
         title=title or f"{metric.upper()} against sampling cost")
  ax.grid(alpha=0.3, which="both")
  if len(tables) > 1:  # Many lines: the legend beside the axes.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
  else:
    ax.legend(fontsize=8)
  fig.tight_layout()
  _save_figure(fig, path)
  return lines


def save_labelled(path: str, grid, row_labels=(), col_labels=(), title: str | None = None,
                  dpi: int = 100) -> None:
  """Saves a uint8 `image_grid` with text labels by row and column (matplotlib).

  Labels sit at the centres of ``len(row_labels)`` equal rows and
  ``len(col_labels)`` equal columns of the grid.
  """
  grid = np.asarray(grid)
  h, w = grid.shape[:2]
  # Room on the left for the longest row label (~0.075 inch per character at size 9).
  left = max(1.4, 0.075 * max((len(str(r)) for r in row_labels), default=0) + 0.2)
  fig = _figure((w / dpi + left + 0.2, h / dpi + 0.8), dpi)
  ax = fig.add_axes([left / (w / dpi + left + 0.2), 0.2 / (h / dpi + 0.8),
                     w / (w + (left + 0.2) * dpi), h / (h + 0.8 * dpi)])
  ax.imshow(grid[..., 0] if grid.ndim == 3 and grid.shape[-1] == 1 else grid, cmap="gray",
            vmin=0, vmax=255, interpolation="nearest")
  ax.set_yticks([(i + 0.5) * h / len(row_labels) for i in range(len(row_labels))],
                list(row_labels))
  ax.set_xticks([(j + 0.5) * w / len(col_labels) for j in range(len(col_labels))],
                list(col_labels))
  ax.xaxis.tick_top()
  ax.tick_params(length=0, labelsize=9)
  if title:
    ax.set_xlabel(title, fontsize=8)
  _save_figure(fig, path)
