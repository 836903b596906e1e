"""Discrete-time samplers on the integer steps of a `DiscreteSchedule`: DDPM, DDIM
and DDIM inversion. ``eps_fn(x [B, ...], t int32 [B]) -> eps``."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.core import grids, parameterization, schedules
from diffusion.core.samplers.base import finish, normal, start, std_normal, x0_from_eps

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
_b = schedules.broadcast_to


def ddpm(
    eps_fn: EpsFn,
    sched: schedules.DiscreteSchedule,
    rng: jax.Array,
    shape,
    *,
    variance: str = "beta",
    clip_denoised: float | None = None,
    x_init: jax.Array | None = None,
    return_trajectory: bool = False,
):
  """Ancestral sampling (Ho et al. 2020) over all T steps.

  ``x_{t-1} = mu(x0_hat, x_t) + sigma_t z`` with the posterior mean of
  `schedules.q_posterior` and ``sigma_t^2 = beta_t`` (``variance="beta"``) or
  ``beta_tilde_t`` (``"beta_tilde"``); no noise is added at ``t = 0``.
  ``clip_denoised=c`` clips ``x0_hat`` to ``[-c, c]`` (1.0 for images).
  """
  x, loop_key = start(rng, shape, x_init, std_normal)
  B = x.shape[0]
  var_table = schedules.variance_table(sched, variance)

  def step(x, t):
    tb = jnp.full((B,), t, jnp.int32)
    x0 = x0_from_eps(x, eps_fn(x, tb), sched.alpha(tb), sched.sigma(tb), clip_denoised)
    mean, _, _ = schedules.q_posterior(sched, x0, x, tb)
    std = jnp.where(t > 0, jnp.sqrt(var_table[t]), 0.0)
    x = mean + std * normal(loop_key, t, x)
    return x, ({"t": t, "x": x, "x0": x0} if return_trajectory else None)

  x, traj = jax.lax.scan(step, x, jnp.arange(sched.num_steps - 1, -1, -1, dtype=jnp.int32))
  return finish(x, traj, return_trajectory)


def _alpha_bar_or_one(sched, t):
  """``alpha_bar_t`` with ``alpha_bar_{-1} = 1``."""
  return jnp.where(t >= 0, sched.alpha_bars[jnp.maximum(t, 0)], 1.0)


def ddim(
    eps_fn: EpsFn,
    sched: schedules.DiscreteSchedule,
    rng: jax.Array,
    shape,
    *,
    num_steps: int = 50,
    eta: float = 0.0,
    clip_denoised: float | None = None,
    x_init: jax.Array | None = None,
    return_trajectory: bool = False,
):
  """DDIM (Song et al. 2021) on the uniform-skip subsequence, ending at alpha_bar = 1.

  ``x_prev = sqrt(a') x0_hat + sqrt(1 - a' - s^2) eps + s z`` with
  ``s = eta sqrt((1 - a')/(1 - a)) sqrt(1 - a/a')``. ``eta = 0`` is
  deterministic; ``eta = 1`` on the full grid (``num_steps = T``) is DDPM with
  ``beta_tilde`` step for step (same noise for the same key).
  """
  taus = grids.ddim_timesteps(sched.num_steps, num_steps)
  if isinstance(eta, (int, float, np.number)) and not 0.0 <= float(eta) <= 1.0:
    raise ValueError(f"eta must lie in [0, 1], got {eta}")
  deterministic = isinstance(eta, (int, float)) and eta == 0
  x, loop_key = start(rng, shape, x_init, std_normal)
  B = x.shape[0]
  pairs = jnp.asarray(np.stack([taus, np.concatenate([[-1], taus[:-1]])], axis=1)[::-1])

  def step(x, pair):
    t, t_prev = pair[0], pair[1]
    a, a_prev = sched.alpha_bars[t], _alpha_bar_or_one(sched, t_prev)
    eps = eps_fn(x, jnp.full((B,), t, jnp.int32))
    alpha, sigma = jnp.sqrt(a), jnp.sqrt(1.0 - a)
    x0 = x0_from_eps(x, eps, alpha, sigma, clip_denoised)
    if clip_denoised is not None:
      eps = parameterization.to_eps("x0", x0, x, alpha, sigma)
    s = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
    x = jnp.sqrt(a_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - a_prev - s**2, 0.0)) * eps
    if not deterministic:  # a fixed eta = 0 draws no noise at all
      x = x + s * normal(loop_key, t, x)
    return x, ({"t": t, "x": x, "x0": x0} if return_trajectory else None)

  x, traj = jax.lax.scan(step, x, pairs)
  return finish(x, traj, return_trajectory)


def ddim_invert(
    eps_fn: EpsFn,
    sched: schedules.DiscreteSchedule,
    x0: jax.Array,
    *,
    num_steps: int = 50,
    return_trajectory: bool = False,
):
  """Deterministic DDIM inversion ``x_0 -> x_T`` (eta = 0) on the same subsequence.

  Each step runs the DDIM update forwards, evaluating ``eps`` at the current
  state and the next (noisier) timestep; the error against exact inversion is
  first order in the step size.
  """
  taus = grids.ddim_timesteps(sched.num_steps, num_steps)
  B = x0.shape[0]
  pairs = jnp.asarray(np.stack([np.concatenate([[-1], taus[:-1]]), taus], axis=1))

  def step(x, pair):
    t_cur, t_next = pair[0], pair[1]
    a_cur, a_next = _alpha_bar_or_one(sched, t_cur), sched.alpha_bars[t_next]
    eps = eps_fn(x, jnp.full((B,), t_next, jnp.int32))
    x0_hat = parameterization.from_eps("x0", eps, x, jnp.sqrt(a_cur), jnp.sqrt(1.0 - a_cur))
    x = jnp.sqrt(a_next) * x0_hat + jnp.sqrt(1.0 - a_next) * eps
    return x, ({"t": t_next, "x": x, "x0": x0_hat} if return_trajectory else None)

  x, traj = jax.lax.scan(step, jnp.asarray(x0, jnp.float32), pairs)
  return finish(x, traj, return_trajectory)

