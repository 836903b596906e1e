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

The "sigma" domain runs every process: the samplers of `samplers.sigma` work on
``x~ = x0 + sigma~ z`` (the EDM / k-diffusion convention) with ``x~ = x / alpha``
and ``sigma~ = sigma / alpha = exp(-log_snr / 2)`` (`sigma_tilde`); the network
is asked at `time_at_sigma` (closed forms for VE, VP, EDM; the nearest step of a
discrete table; bisection on ``log_snr`` otherwise, e.g. a learned VDM
schedule). `sigma_limits` and `sigma_grid` give the noise levels a sampler walks.

`on_domain` is the one place that decides whether a sampler's domain can run a
process; config checks, eval specs and the sample function all ask it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion.core import grids, schedules, sdes

DOMAINS = ("discrete", "continuous", "sigma")
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
  if domain == "sigma":
    return process
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


# --------------------------------------------------------------------------
# The sigma view (module docstring).
# --------------------------------------------------------------------------


def sigma_tilde(process, t):
  """``sigma(t) / alpha(t)``: the noise level of ``x / alpha`` at ``t`` (same shape as t)."""
  return jnp.exp(-0.5 * process.log_snr(t))


def time_at_sigma(process, s: jax.Array) -> jax.Array:
  """The time of `process` whose `sigma_tilde` is ``s [B]`` (> 0).

  Discrete: the nearest integer step in ``log sigma~`` (int32). VE, VP and any
  process with its own ``time_at_sigma`` (EDM, ...): closed form, outside [0, 1]
  where ``s`` lies outside the process's range. Otherwise 50 bisection steps on
  ``log_snr`` over [0, 1] (monotone decreasing in t), float32-exact.
  """
  s = jnp.asarray(s, jnp.float32)
  if is_discrete(process):
    # log sigma~ rises with the step: the nearest of the two neighbours of a binary search
    # (O(B log T); a [B, T] argmin constant-folds for minutes on a fixed sigma).
    table = jnp.log(sigma_tilde(process, jnp.arange(process.num_steps)))
    ls = jnp.log(s)
    hi = jnp.clip(jnp.searchsorted(table, ls), 1, process.num_steps - 1)
    nearer_lo = (ls - table[hi - 1]) < (table[hi] - ls)
    return jnp.where(nearer_lo, hi - 1, hi).astype(jnp.int32)
  own = getattr(process, "time_at_sigma", None)
  if own is not None:
    return own(s)
  if isinstance(process, sdes.VESDE):
    return jnp.log(s / process.sigma_min) / jnp.log(process.sigma_max / process.sigma_min)
  if type(process) is sdes.VPSDE:  # pylint: disable=unidiomatic-typecheck  (SubVP differs)
    # -2 log alpha = b0 t + (b1 - b0) t^2 / 2 = log(1 + s^2).
    b0, d = process.beta_min, process.beta_max - process.beta_min
    c = jnp.log1p(s**2)
    return 2.0 * c / (b0 + jnp.sqrt(b0**2 + 2.0 * d * c))
  target = -2.0 * jnp.log(s)

  def body(_, lo_hi):
    lo, hi = lo_hi
    mid = 0.5 * (lo + hi)
    above = process.log_snr(mid) > target  # still too little noise: go later
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo, hi = jax.lax.fori_loop(0, 50, body, (jnp.zeros_like(s), jnp.ones_like(s)))
  return 0.5 * (lo + hi)


def sigma_limits(process, eps: float = 1e-3):
  """``(sigma~_min, sigma~_max)`` a sigma grid spans: a discrete table's steps 0 and T-1;
  a process's own ``sigma_limits`` (EDM); else `sigma_tilde` at ``t = eps`` and 1 (float32
  scalars, traced for a learned schedule inside jit)."""
  if is_discrete(process):
    ends = sigma_tilde(process, jnp.array([0, process.num_steps - 1]))
  elif hasattr(process, "sigma_limits"):
    return process.sigma_limits()
  else:
    ends = sigma_tilde(process, jnp.array([eps, 1.0], jnp.float32))
  return ends[0], ends[1]


def sigma_grid(process, grid: str, num_steps: int, *, eps: float = 1e-3,
               rho: float = 7.0) -> jax.Array:
  """``num_steps + 1`` descending noise levels ending at 0 for a sampler of the sigma domain.

  "karras" / "log_snr": `grids.karras_sigmas` / `grids.log_snr_sigmas` over
  `sigma_limits`. "time": the process's own grid read as noise levels: a discrete
  schedule's DDIM uniform skip (`grids.ddim_timesteps`), an EDM process's uniform
  t over [0, 1] (the Karras grid of its rho), else ``t`` uniform from 1 to ``eps``.
  """
  if grid not in grids.SIGMA_GRIDS:
    raise ValueError(f"unknown sigma grid {grid!r}; valid: {', '.join(grids.SIGMA_GRIDS)}")
  if grid == "time":
    grids.check_steps(num_steps)
    if is_discrete(process):
      t = jnp.asarray(grids.ddim_timesteps(process.num_steps, num_steps)[::-1].copy())
    elif num_steps == 1:
      t = jnp.ones(1, jnp.float32)
    elif hasattr(process, "sigma_limits"):
      t = jnp.linspace(1.0, 0.0, num_steps, dtype=jnp.float32)
    else:
      t = jnp.linspace(1.0, eps, num_steps, dtype=jnp.float32)
    return jnp.append(sigma_tilde(process, t), 0.0).astype(jnp.float32)
  lo, hi = sigma_limits(process, eps)
  if grid == "karras":
    return grids.karras_sigmas(num_steps, lo, hi, rho)
  return grids.log_snr_sigmas(num_steps, lo, hi)
