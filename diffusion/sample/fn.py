"""Sampling from a model built by `experiment`: the jitted sample function used
during training and `--mode sample` on a trained workdir.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusion import experiment
from diffusion.run import checkpoint
from diffusion.dist import placement
from diffusion.core import parameterization
from diffusion.core import samplers
from diffusion.core import sdes
from diffusion.viz import images as visualize
from diffusion.run import writers


def sampler_process(config, process):
  """The schedule or SDE the sampler of `config.sample.method` runs on.

  A discrete model (linear betas ``beta_i``, ``i = 1..T``) under a continuous
  sampler runs on ``VPSDE(beta_min=T beta_1, beta_max=T beta_T)``, whose
  ``beta(t) dt`` at ``t = i / T``, ``dt = 1 / T`` is ``beta_i``; its network is
  asked at the nearest discrete step (`parameterization.score_fn_from_eps_fn`).
  """
  if config.diffusion.type == "continuous" or config.sample.method in samplers.DISCRETE_SAMPLERS:
    return process
  betas = np.asarray(process.betas, np.float64)  # Validated: a VP_SCHEDULES schedule.
  T = process.num_steps
  return sdes.VPSDE(beta_min=float(T * betas[0]), beta_max=float(T * betas[-1]))


def batch_sharding(mesh, num_samples: int):
  """The sharding of ``num_samples`` images split over every device of `mesh`
  (None when `mesh` is None or has one device, or the devices do not divide N)."""
  if mesh is None or mesh.devices.size == 1 or num_samples % mesh.devices.size:
    return None
  return NamedSharding(mesh, P(placement.AXIS))


def make_sample_fn(config, apply_fn, process, *, num_samples: int | None = None,
                   return_trajectory: bool = False, mesh=None) -> Callable:
  """A jitted ``sample_fn(params, rng) -> x [N, H, W, C]`` (config.sample).

  ``N = num_samples`` (default ``config.sample.num_samples``). With
  `return_trajectory` it returns ``(x, traj)`` as the samplers do (``traj["x"]``
  ``[S, N, H, W, C]``; not with ``ode_method="rk45"``).

  With a `mesh` whose devices divide N (`batch_sharding`), the N images are
  split over all its devices (of all processes): every network input is
  constrained to that batch sharding and so is the output, a global array
  (`placement.to_host` gathers it); `params` must then be replicated on the mesh
  and every process must make the call. The noise is drawn by the same
  counter-based threefry as without a mesh, so the samples do not depend on
  how many devices or processes share them (up to float rounding).
  """
  s, d = config.sample, config.diffusion
  n = s.num_samples if num_samples is None else num_samples
  shape = (n, config.data.image_size, config.data.image_size, config.data.channels)
  y = None
  if config.model.num_classes is not None:
    y = jnp.arange(n, dtype=jnp.int32) % config.model.num_classes
  clip = 1.0 if s.clip_denoised else None
  sde = sampler_process(config, process)
  traj = {"return_trajectory": True} if return_trajectory else {}
  sharding = batch_sharding(mesh, n)
  split = (lambda x: x) if sharding is None else (
      lambda x: jax.lax.with_sharding_constraint(x, sharding))

  def sample_fn(params, rng):
    net = lambda x, t: apply_fn(params, split(x), t, y)
    if d.type == "discrete":
      eps_fn = parameterization.eps_fn_from_model(net, d.prediction, process)
      if s.method == "ddpm":
        return samplers.ddpm(eps_fn, process, rng, shape, variance=s.variance,
                             clip_denoised=clip, **traj)
      if s.method == "ddim":
        return samplers.ddim(eps_fn, process, rng, shape, num_steps=s.num_steps, eta=s.eta,
                             clip_denoised=clip, **traj)
      score_fn = parameterization.score_fn_from_eps_fn(eps_fn, process)
    else:
      score_fn = parameterization.score_fn_from_model(net, d.prediction, process)
    if s.method == "euler_maruyama":
      return samplers.euler_maruyama(score_fn, sde, rng, shape, num_steps=s.num_steps,
                                     eps=s.eps, **traj)
    if s.method == "predictor_corrector":
      return samplers.predictor_corrector(
          score_fn, sde, rng, shape, num_steps=s.num_steps, predictor=s.predictor,
          corrector=s.corrector, snr=s.snr, corrector_steps=s.corrector_steps, eps=s.eps,
          **traj)
    return samplers.probability_flow(score_fn, sde, rng, shape, num_steps=s.num_steps,
                                     method=s.ode_method, eps=s.eps, **traj)

  if sharding is None:
    return jax.jit(sample_fn)

  def sharded_fn(params, rng):
    out = sample_fn(params, rng)
    return (split(out[0]), out[1]) if return_trajectory else split(out)

  return jax.jit(sharded_fn)


# --------------------------------------------------------------------------
# Sampling from a trained workdir.
# --------------------------------------------------------------------------


def sample(config, workdir: str) -> str:
  """Samples with the EMA params of a checkpoint of `workdir` (--mode sample).

  Uses ``config.sample.checkpoint_step`` (None: the latest) and any sampler of
  `config.sample` (a discrete linear-schedule model also takes the continuous
  ones). Writes, under ``samples/``:

  - ``final_XXXXXX.npz``: key "images", float32 ``[N, H, W, C]`` clipped to
    [-1, 1], ``N = sample.num_samples``, drawn in calls of ``sample.batch_size``;
  - ``final_XXXXXX.png``: a grid of the first ``G = min(N, sample.grid_size)``;
  - ``final_XXXXXX.gif``: the reverse process of those G images, from noise
    to the grid, in ``<= sample.gif_frames`` frames.

  The first G images come from one sampler call with the trajectory, key
  ``fold_in(sample_key, 0)``; the rest from calls ``c = 1, 2, ...`` with keys
  ``fold_in(sample_key, c)`` (the last one padded to the batch size and cut):
  deterministic given the seed, the checkpoint and config.sample.

  Returns:
    The PNG path.
  """
  experiment.validate_config(config)
  s = config.sample
  if s.method == "probability_flow" and s.ode_method == "rk45":
    raise ValueError("--mode sample writes a reverse-process GIF, which needs a trajectory; "
                     "sample.ode_method='rk45' has none: use 'euler' or 'heun'")
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise FileNotFoundError(f"{workdir} has no config.json: train there first")
  writers.check_config(config, workdir, write=False)
  model = experiment.build_model(config)
  process = experiment.noise_process(config)
  create_fn, _ = experiment.state_fns(config, model)
  state_key, sample_key = experiment.keys(config)
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), None) as ckpt:
    step = s.checkpoint_step
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first")
    # The params are replicated on every device of every process (several
    # processes restore collectively into global arrays); each sampler call is
    # split over all devices where they divide its batch, and process 0 writes.
    mesh = placement.make_mesh()
    state, _ = ckpt.restore(step, experiment.abstract_state(
        create_fn, state_key, placement.replicated(mesh)))
  apply_fn = experiment.make_apply_fn(model, config, process)
  n, grid_n = s.num_samples, min(s.num_samples, s.grid_size)
  batch = min(s.batch_size, n - grid_n) if n > grid_n else 0

  t0 = time.time()
  traj_fn = make_sample_fn(config, apply_fn, process, num_samples=grid_n, return_trajectory=True,
                           mesh=mesh)
  first, traj = traj_fn(state.ema_params, jax.random.fold_in(sample_key, 0))
  first, traj_x = placement.to_host(first), placement.to_host(traj["x"])
  chunks = [first]
  if batch:
    chunk_fn = make_sample_fn(config, apply_fn, process, num_samples=batch, mesh=mesh)
    for c in range(1, 1 + -(-(n - grid_n) // batch)):
      chunks.append(placement.to_host(
          chunk_fn(state.ema_params, jax.random.fold_in(sample_key, c))))
  images = np.clip(np.concatenate(chunks)[:n], -1.0, 1.0).astype(np.float32)

  stem = os.path.join(workdir, "samples", f"final_{step:06d}")
  if jax.process_index() == 0:
    visualize.save_png(stem + ".png", visualize.image_grid(images[:grid_n]))
    np.savez(stem + ".npz", images=images)
    visualize.save_gif(stem + ".gif", visualize.reverse_process_frames(
        traj_x, first, s.gif_frames))
  writers.echo(f"wrote {n} samples to {stem}.npz, a grid of {grid_n} to {stem}.png and its "
               f"reverse process to {stem}.gif ({s.method}, EMA params of step {step}, "
               f"{time.time() - t0:.1f}s)")
  return stem + ".png"
