"""The probability-flow ODE sampler (Song et al. 2021): fixed-step Euler / Heun
or adaptive Dormand-Prince on ``dx/dt = f - g^2 score / 2``."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion.core import grids, ode
from diffusion.core.grids import check_steps
from diffusion.core.samplers.base import check_choice, start
from diffusion.core.samplers.sde import ScoreFn, tweedie_x0

def probability_flow(
    score_fn: ScoreFn, sde, rng: jax.Array, shape, *, num_steps: int = 100, method: str = "heun",
    eps: float = 1e-3, rtol: float = 1e-5, atol: float = 1e-5, x_init: jax.Array | None = None,
    return_trajectory: bool = False, t_start: float = 1.0,
):
  """Integrates the probability-flow ODE ``dx/dt = f - g^2 score / 2`` from 1 (or
  `t_start`, with `x_init` at that time: SDEdit, denoising) to ``eps``.

  ``method``: "euler" (order 1), "heun" (order 2; 2 evaluations per step) on
  a uniform grid of ``num_steps`` steps, or "rk45" (adaptive Dormand–Prince
  with ``rtol`` / ``atol``; ``num_steps`` is then the step limit; no
  trajectory; `probability_flow_adaptive` also returns its step counts).
  Returns ``x``, or ``(x, traj)`` with `return_trajectory`.
  """
  check_choice(method, ode.METHODS, "method")
  check_steps(num_steps)
  if method == "rk45":
    if return_trajectory:
      raise ValueError("return_trajectory is not available for method='rk45'; use 'heun'")
    return probability_flow_adaptive(score_fn, sde, rng, shape, max_steps=num_steps, eps=eps,
                                     rtol=rtol, atol=atol, x_init=x_init, t_start=t_start)[0]
  x, _ = start(rng, shape, x_init, sde.prior_sample)
  drift = _drift(score_fn, sde, x.shape[0])
  ts = grids.uniform_times(num_steps, eps, t_start)
  if not return_trajectory:
    return ode.integrate_fixed(drift, x, ts, method)
  x, xs = ode.integrate_fixed(drift, x, ts, method, return_trajectory=True)
  t_after = ts[1:]
  tb = jnp.broadcast_to(t_after[:, None], (num_steps, x.shape[0]))
  x0 = jax.vmap(lambda xi, ti: tweedie_x0(sde, xi, ti, score_fn(xi, ti)))(xs, tb)
  return x, {"t": t_after, "x": xs, "x0": x0}


def probability_flow_adaptive(
    score_fn: ScoreFn, sde, rng: jax.Array, shape, *, max_steps: int = 1000, eps: float = 1e-3,
    rtol: float = 1e-5, atol: float = 1e-5, x_init: jax.Array | None = None,
    t_start: float = 1.0,
):
  """The probability-flow ODE by adaptive Dormand–Prince from `t_start`; returns ``(x, stats)``
  with ``stats`` of `ode.integrate_adaptive` ("nfe", "steps", "rejected", "reached_end")."""
  check_steps(max_steps, "max_steps")
  x, _ = start(rng, shape, x_init, sde.prior_sample)
  return ode.integrate_adaptive(_drift(score_fn, sde, x.shape[0]), x, t_start, eps, rtol=rtol,
                                atol=atol, max_steps=max_steps)


def _drift(score_fn, sde, batch: int):
  return lambda y, t: sde.probability_flow_drift(score_fn, y, jnp.full((batch,), t))
