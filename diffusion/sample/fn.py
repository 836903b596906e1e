"""The jitted sample function of an experiment record: used by the training grid,
`--mode sample` (`modes.sample`) and `--mode eval` (`modes.eval`).
"""
from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusion.dist import placement


def batch_sharding(mesh, num_samples: int):
  """The sharding of ``num_samples`` images split over every device of `mesh`
  (None when `mesh` is None or has one device, or the devices do not divide N)."""
  if mesh is None or mesh.devices.size == 1 or num_samples % mesh.devices.size:
    return None
  return NamedSharding(mesh, P(placement.AXIS))


def make_sample_fn(exp, section=None, *, num_samples: int | None = None,
                   return_trajectory: bool = False, mesh=None) -> Callable:
  """A jitted ``sample_fn(params, rng) -> x [N, H, W, C]`` of an `experiment.Experiment`.

  The sampler is ``config.sample``'s, or that of another sample `section` (an
  eval entry's); the sampler record (`core.samplers.registry`) runs the
  experiment's denoiser on the process its domain needs
  (`core.processes.on_domain`). ``N = num_samples`` (default
  ``config.sample.num_samples``); class-conditional models get labels
  ``0..num_classes-1`` cycled. With `return_trajectory` it returns ``(x,
  traj)`` as the samplers do (``traj["x"]`` ``[S, N, H, W, C]``; ValueError
  if the sampler has none, e.g. rk45).

  With a `mesh` whose devices divide N (`batch_sharding`), the N images are
  split over all its devices (of all processes): every network input is
  constrained to that batch sharding and so is the output, a global array
  (`to_host` gathers it); `params` must then be replicated on the mesh and
  every process must make the call. The noise is drawn by the same
  counter-based threefry as without a mesh, so the samples do not depend on
  how many devices or processes share them (up to float rounding).
  """
  config = exp.config
  record, options, process = exp.sampler(section)
  if return_trajectory and not record.traceable(options):
    raise ValueError(f"sampler {record.name} with these options has no trajectory (e.g. "
                     "ode_method='rk45'): use 'euler' or 'heun'")
  n = config.sample.num_samples if num_samples is None else num_samples
  shape = (n, config.data.image_size, config.data.image_size, config.data.channels)
  cond = exp.cond(n)
  traj = {"return_trajectory": True} if return_trajectory else {}
  sharding = batch_sharding(mesh, n)
  split = (lambda x: x) if sharding is None else (
      lambda x: jax.lax.with_sharding_constraint(x, sharding))

  def sample_fn(params, rng):
    out = record.run(exp.denoiser(params, cond, shard=split), process, rng, shape, options,
                     **traj)
    if sharding is None:
      return out
    return (split(out[0]), out[1]) if return_trajectory else split(out)

  return jax.jit(sample_fn)
