"""The noise-process contract, and which sampler domain a process can run on.

Every process answers ``alpha(t)``, ``sigma(t)`` and ``log_snr(t)`` of its
marginal ``x_t = alpha x_0 + sigma eps`` on its own time axis:

- a `schedules.DiscreteSchedule` on integer steps ``0..T-1`` (0 the least
  noisy): the "discrete" domain;
- an SDE of `sdes` (VP, sub-VP, VE) on float ``t`` in [0, 1] (1 = the prior),
  with ``drift`` / ``diffusion`` / ``discretize`` too: the "continuous" domain.

A discrete schedule is a grid over a process: its step ``i`` sits at ``t = (i +
1) / T`` (`DiscreteSchedule.grid_times`, inverted by `step_at`). The linear
betas, from ``beta_1`` to ``beta_T``, are the continuous limit of ``VPSDE(beta_min=T
beta_1, beta_max=T beta_T)`` (``beta(t) dt`` with ``dt = 1 / T``; score_sde's
convention, ``alpha_bar_i ~ alpha((i + 1) / T)^2``), so the continuous samplers
can run a linear model (`on_domain`; the denoiser asks the network at the
nearest step, `Denoiser.score_fn`). The other discrete tables (cosine,
quadratic, sigmoid, custom) have no SDE here.

`on_domain` is the one place that decides whether a sampler's domain can run a
process; config checks, eval specs and the sample function all ask it.
"""
from __future__ import annotations

import jax.numpy as jnp

from diffusion.core import schedules, sdes

DOMAINS = ("discrete", "continuous")
# Discrete schedule kinds that are a uniform grid over an SDE (`sde_of`).
SDE_KINDS = ("linear",)


def is_discrete(process) -> bool:
  return isinstance(process, schedules.DiscreteSchedule)


def sde_of(sched: schedules.DiscreteSchedule):
  """The VP SDE a linear discrete schedule is a grid over (module docstring), or None:
  ``VPSDE(beta_min=T beta_1, beta_max=T beta_T)``."""
  if sched.kind not in SDE_KINDS:
    return None
  T = sched.num_steps
  betas = sched.betas
  return sdes.VPSDE(beta_min=float(T * float(betas[0])), beta_max=float(T * float(betas[-1])))


def on_domain(process, domain: str, sampler: str = "this sampler"):
  """The process `sampler` (of `domain`) runs on for a model trained on `process`.

  Returns `process` itself, or for a continuous sampler on a linear discrete
  schedule its SDE (`sde_of`). Raises ValueError saying why otherwise.
  """
  if domain not in DOMAINS:
    raise ValueError(f"unknown sampler domain {domain!r}; valid: {', '.join(DOMAINS)}")
  if domain == "discrete":
    if not is_discrete(process):
      raise ValueError(f"{sampler} runs on the integer steps of a discrete schedule; a "
                       f"continuous-time model ({type(process).__name__}) has none")
    return process
  if not is_discrete(process):
    return process
  sde = sde_of(process)
  if sde is None:
    raise ValueError(
        f"{sampler} (a continuous-time sampler) needs the VP SDE of the discrete schedule, "
        f"and only the schedules {list(SDE_KINDS)} have one (VPSDE(beta_min=T beta_1, "
        f"beta_max=T beta_T)); this one is {process.kind!r}")
  return sde


def time_dtype(process):
  """The dtype of the process's times: int32 steps (discrete) or float32 t."""
  return jnp.int32 if is_discrete(process) else jnp.float32
