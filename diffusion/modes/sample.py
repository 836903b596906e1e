"""`--mode sample`: N samples, a grid and the reverse process from a trained workdir."""
from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from diffusion import experiment
from diffusion.core import checks
from diffusion.eval import entries
from diffusion.dist import placement
from diffusion.run import checkpoint, console, resume
from diffusion.run.workdir import Workdir, save_npz
from diffusion.viz import images as visualize


def sample(config, workdir: str) -> str:
  """Samples with the EMA params of a checkpoint of `workdir` (--mode sample).

  Uses ``config.sample.checkpoint_step`` (None: the latest) and any sampler of
  `config.sample` that can run on the model (`core.processes.on_domain`: a
  discrete linear-schedule model also takes the continuous ones). Writes, under
  ``samples/``:

  - ``final_XXXXXX_<tag>.npz``: key "images", float32 ``[N, H, W, C]`` clipped
    to [-1, 1], ``N = sample.num_samples``, drawn in calls of ``sample.batch_size``;
  - ``final_XXXXXX_<tag>.uint8.npz``: key "arr_0", the same samples as uint8
    ``[N, H, W, C]`` (`viz.images.to_uint8`), the file ADM's evaluator and FID tools read;
  - ``final_XXXXXX_<tag>.png``: a grid of the first ``G = min(N, sample.grid_size)``;
  - ``final_XXXXXX_<tag>.gif``: the reverse process of those G images, from noise
    to the grid, in ``<= sample.gif_frames`` frames.

  ``<tag>`` names the sampler settings and N (`output_tag`); a file of that
  name is never overwritten (``<tag>-2``, ... instead).

  The first G images come from one sampler call with the trajectory, key
  ``fold_in(sample_key, 0)``; the rest from calls ``c = 1, 2, ...`` with keys
  ``fold_in(sample_key, c)`` (the last one padded to the batch size and cut):
  deterministic given the seed, the checkpoint and config.sample.

  One linear driver (~60 lines, half of them this docstring).

  Returns:
    The PNG path.
  """
  s = config.sample
  refuse_autoencoder(config, "sample")
  if s.guidance_sweep.strip():
    return guidance_sweep(config, workdir)
  with checks.config_errors():
    exp = experiment.build(config)
    record, options, on = exp.sampler()
    if not record.traceable(options):
      raise ValueError(f"--mode sample writes a reverse-process GIF, which needs a trajectory; "
                       f"config.sample.method={s.method!r} with these options has none (e.g. "
                       "config.sample.ode_method='rk45'): use 'euler' or 'heun'")
    resume.check_config(config, workdir, write=False, mode="sample")
    exp = experiment.with_trained_text(exp, workdir)
  # The params are replicated on every device of every process (several
  # processes restore collectively into global arrays); each sampler call is
  # split over all devices where they divide its batch, and process 0 writes.
  mesh = placement.make_mesh()
  with checkpoint.Checkpointer(Workdir(workdir).checkpoints_dir, None) as ckpt:
    params, step = experiment.restore_ema_params(exp, ckpt, s.checkpoint_step, mesh,
                                                 warn=console.echo)
  n, grid_n = s.num_samples, min(s.num_samples, s.grid_size)
  batch = min(s.batch_size, n - grid_n) if n > grid_n else 0

  t0 = time.time()
  rows = conditions(exp)  # Labels / prompts: one grid row each.
  nrow = grid_n // len(rows) if rows and grid_n % len(rows) == 0 else None
  traj_fn = exp.sample_fn(num_samples=grid_n, return_trajectory=True, mesh=mesh)
  first, traj = traj_fn(params, jax.random.fold_in(exp.sample_key, 0))
  first, traj_x = placement.to_host(first), placement.to_host(traj["x"])
  if experiment.runs_in_sigma_space(record, on) and not traj.get("scaled"):
    traj_x = experiment.unit_scale_frames(traj_x, placement.to_host(traj["t"]))
  chunks = [first]
  if batch:
    chunk_fn = exp.sample_fn(num_samples=batch, mesh=mesh)
    calls = -(-(n - grid_n) // batch)
    for c in console.progress(range(1, 1 + calls), "sample", unit="call"):
      chunks.append(placement.to_host(chunk_fn(params, jax.random.fold_in(exp.sample_key, c))))
  images = np.clip(np.concatenate(chunks)[:n], -1.0, 1.0).astype(np.float32)
  # What each sample was asked for: the grid call's, then every chunk's (cut to n).
  extra = {}
  if config.model.num_classes is not None:
    extra["labels"] = np.concatenate([np.asarray(exp.labels_of(grid_n))] + [
        np.asarray(exp.labels_of(batch))] * (len(chunks) - 1))[:n]
  elif experiment.text_conditional(config):
    extra["prompts"] = np.asarray((exp.prompts_of(grid_n) + exp.prompts_of(batch) * (
        len(chunks) - 1))[:n] if batch else exp.prompts_of(grid_n)[:n])

  out = _outputs(Workdir(workdir), step, output_tag(record, options, n, s))
  if jax.process_index() == 0:
    visualize.save_png(out["png"], visualize.image_grid(images[:grid_n], nrow))
    save_npz(out["npz"], images=images, **extra)
    save_npz(out["uint8.npz"], arr_0=visualize.to_uint8(images))
    visualize.save_gif(out["gif"], visualize.reverse_process_frames(
        traj_x, first, s.gif_frames, nrow))
  asked = (f"; rows: {', '.join(map(str, rows))}" if rows and nrow else "")
  guided = f", guidance w={s.guidance}" if rows and s.guidance != 1.0 else ""
  console.echo(f"wrote {n} samples to {out['npz']} (uint8 arr_0: {out['uint8.npz']}), a grid "
               f"of {grid_n} to {out['png']} and its reverse process to {out['gif']} "
               f"({s.method}{guided}, EMA params of step {step}, {time.time() - t0:.1f}s)"
               f"{asked}")
  return str(out["png"])


def refuse_autoencoder(config, mode: str) -> None:
  """ConfigError for ``--mode sample / eval`` of an autoencoder config."""
  if config.model.name == "autoencoder":
    raise checks.ConfigError(
        f"--mode {mode}: config.model.name='autoencoder' is an autoencoder, which has no "
        "sampler; its reconstruction grids are in samples/step_*.png and its PSNR and latent "
        "scale in autoencoder/step_*.json. Sample a latent model that names it "
        "(config.latent.autoencoder_workdir, e.g. configs/mnist_latent_text.py)")


def conditions(exp) -> list:
  """The labels (``sample.labels``) or prompts asked for, in grid-row order; []
  when the grid is not one row per condition (unconditional, labels cycled)."""
  s = exp.config.sample
  if experiment.text_conditional(exp.config):
    return experiment.prompt_list(s) or list(exp.default_prompts)
  return list(experiment.parse_labels(s.labels, exp.config.model.num_classes))


def output_tag(record, options, num_samples: int, section=None) -> str:
  """The sampler settings in a file name: the method, every option that differs
  from its default, the guidance and the labels, and N
  (``ddim_num_steps-50_eta-1.0_guidance-3.0_labels-3-7_n1000``), so runs with other
  settings write other files."""
  try:
    defaults = type(options)()
  except TypeError:  # A user's options without defaults: name every field.
    defaults = None
  changed = [f"{f.name}={getattr(options, f.name)}" for f in dataclasses.fields(options)
             if defaults is None or getattr(options, f.name) != getattr(defaults, f.name)]
  if section is not None:
    for key in ("guidance", "guidance_interval", "classifier_scale", "labels"):
      default = {"guidance": 1.0, "classifier_scale": 0.0}.get(key, "")
      if section[key] != default:
        changed.append(f"{key}={str(section[key]).replace(',', '-')}")
    if section.prompt or section.prompts_file:
      import zlib  # pylint: disable=g-import-not-at-top
      text = section.prompts_file or section.prompt
      changed.append(f"prompts={zlib.crc32(text.encode()) & 0xFFFFFFFF:08x}")
  spec = record.name + (":" + ",".join(changed) if changed else "")
  return f"{entries.spec_filename(spec)}_n{num_samples}"


def _outputs(wd: Workdir, step: int, tag: str) -> dict:
  """The output paths of this tag, with ``-2``, ``-3``, ... appended to the tag when
  a file of it exists already: a run never overwrites an earlier one's samples."""
  exts = ("png", "npz", "uint8.npz", "gif")
  n, name = 1, tag
  while any(wd.final_samples(step, ext, name).exists() for ext in exts):
    n += 1
    name = f"{tag}-{n}"
  return {ext: wd.final_samples(step, ext, name) for ext in exts}


def _sweep_weights(text: str) -> list[float]:
  try:
    ws = [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise checks.ConfigError(f"config.sample.guidance_sweep={text!r}: expected weights like "
                             "'1,2,4,8'") from None
  if not ws or any(not w >= 0 for w in ws):
    raise checks.ConfigError(f"config.sample.guidance_sweep={text!r}: weights must be >= 0")
  return ws


def guidance_sweep(config, workdir: str) -> str:
  """``sample.guidance_sweep="1,2,4,8"``: one figure of the conditions (rows: the labels
  of ``sample.labels`` or 0..K-1, or the prompts) against the guidance weights (a block
  of columns per w), every block drawn from the same noise and key, so a column shows
  what w alone changes. ``grid_size`` images per w (rounded down to a multiple of the
  rows). Writes ``samples/final_XXXXXX_guidance_sweep-1-2-4-8_<tag>.png`` (labelled) and
  ``.npz`` (``images [W, N, H, W, C]``, ``weights``, the conditions). Returns the PNG path."""
  s = config.sample
  with checks.config_errors():
    ws = _sweep_weights(s.guidance_sweep)
    exp = experiment.build(config)
    record, options, _ = exp.sampler()
    resume.check_config(config, workdir, write=False, mode="sample")
    exp = experiment.with_trained_text(exp, workdir)
    rows = conditions(exp)
    if not rows and config.model.num_classes is not None:
      rows = list(range(config.model.num_classes))
      s.labels = ",".join(map(str, rows))
    if not rows:
      raise checks.ConfigError("config.sample.guidance_sweep needs a conditional model")
    per_row = max(1, s.grid_size // len(rows))
    for w in ws:  # Every weight must be allowed (a trained null condition, w >= 0).
      section = s.copy_and_resolve_references()
      section.guidance = w
      experiment.check_conditioning(config, section)
  mesh = placement.make_mesh()
  with checkpoint.Checkpointer(Workdir(workdir).checkpoints_dir, None) as ckpt:
    params, step = experiment.restore_ema_params(exp, ckpt, s.checkpoint_step, mesh,
                                                 warn=console.echo)
  n = per_row * len(rows)
  blocks = []
  for w in console.progress(ws, "guidance sweep", unit="w"):
    section = s.copy_and_resolve_references()
    section.guidance = w
    fn = exp.sample_fn(section, num_samples=n, mesh=mesh)
    blocks.append(np.clip(placement.to_host(fn(params, jax.random.fold_in(exp.sample_key, 0))),
                          -1.0, 1.0))
  images = np.stack(blocks)  # [W, rows * per_row, H, W, C], row-major by condition.
  h, wd, c = images.shape[2:]
  tiles = images.reshape(len(ws), len(rows), per_row, h, wd, c).transpose(1, 0, 2, 3, 4, 5)
  grid = visualize.image_grid(tiles.reshape(-1, h, wd, c), len(ws) * per_row)
  tag = f"guidance_sweep-{'-'.join(f'{w:g}' for w in ws)}_{output_tag(record, options, n)}"
  out = _outputs(Workdir(workdir), step, tag)
  if jax.process_index() == 0:
    visualize.save_labelled(out["png"], grid, row_labels=[str(r) for r in rows],
                            col_labels=[f"w = {w:g}" for w in ws],
                            title=f"{s.method}, EMA params of step {step}; the same noise in "
                                  "every block")
    save_npz(out["npz"], images=images.astype(np.float32), weights=np.asarray(ws),
             conditions=np.asarray([str(r) for r in rows]))
  console.echo(f"wrote the guidance sweep (w = {', '.join(f'{w:g}' for w in ws)}; rows: "
               f"{', '.join(map(str, rows))}) to {out['png']} and {out['npz']}")
  return str(out["png"])
