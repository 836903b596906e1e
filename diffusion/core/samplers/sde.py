"""Reverse-SDE samplers on t in [0, 1]: Euler-Maruyama and predictor-corrector
(Song et al. 2021). ``score_fn(x [B, ...], t float32 [B]) -> score``."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion.core import grids, parameterization, schedules, sdes
from diffusion.core.grids import check_steps
from diffusion.core.samplers.base import check_choice, finish, normal, start
from diffusion.core.samplers.pc_rules import CORRECTORS, PREDICTORS

_b = schedules.broadcast_to


ScoreFn = sdes.ScoreFn


def tweedie_x0(sde, x, t, score):
  """``E[x0 | x_t] = (x + sigma^2 score) / alpha`` (Tweedie), via `parameterization`."""
  alpha, sigma = sde.marginal_coeffs(t)
  return parameterization.convert(score, x, alpha, sigma, src="score", dst="x0")


def _pc_loop(predictor, corrector, score_fn, sde, rng, shape, num_steps, eps, snr,
             corrector_steps, x_init, return_trajectory, t_start=1.0):
  ts = grids.uniform_times(num_steps, eps, t_start)
  dt = (t_start - eps) / num_steps
  x, loop_key = start(rng, shape, x_init, sde.prior_sample)
  B = x.shape[0]
  step_size_fn = CORRECTORS[corrector]

  def correct(x, t, key):
    def body(j, x):
      grad = score_fn(x, t)
      z = normal(key, j, x)
      step = _b(step_size_fn(sde, x, t, dt, grad, z, snr), x)
      return x + step * grad + jnp.sqrt(2.0 * step) * z
    return jax.lax.fori_loop(0, corrector_steps, body, x)

  def step(carry, i):
    x, _ = carry
    t = jnp.full((B,), ts[i])
    key = jax.random.fold_in(loop_key, i)
    if step_size_fn is not None:
      x = correct(x, t, jax.random.fold_in(key, 1))
    x_in = x
    x, x_mean, score = predictor(sde, score_fn, x_in, t, dt, normal(key, 0, x_in))
    out = {"t": ts[i], "x": x, "x0": tweedie_x0(sde, x_in, t, score)} if return_trajectory else None
    return (x, x_mean), out

  (_, x_mean), traj = jax.lax.scan(step, (x, x), jnp.arange(num_steps))
  # The last step returns its mean: no noise is added at the final time.
  return finish(x_mean, traj, return_trajectory)


def euler_maruyama(
    score_fn: ScoreFn, sde, rng: jax.Array, shape, *, num_steps: int = 1000, eps: float = 1e-3,
    x_init: jax.Array | None = None, return_trajectory: bool = False, t_start: float = 1.0,
):
  """Euler–Maruyama on the reverse-time SDE from t = 1 to ``eps`` in ``num_steps`` steps.

  ``x <- x - [f - g^2 score] dt + g sqrt(dt) z`` (dt > 0, time decreasing); the
  final step returns its mean. `t_start` < 1 starts part-way (with `x_init` a draw
  of the marginal there: SDEdit, denoising).
  """
  check_steps(num_steps)
  return _pc_loop(PREDICTORS["euler_maruyama"], "none", score_fn, sde, rng, shape, num_steps, eps,
                  0.0, 0, x_init, return_trajectory, t_start)


def predictor_corrector(
    score_fn: ScoreFn, sde, rng: jax.Array, shape, *, num_steps: int = 1000,
    predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16,
    corrector_steps: int = 1, eps: float = 1e-3, x_init: jax.Array | None = None,
    return_trajectory: bool = False, t_start: float = 1.0,
):
  """Predictor–corrector sampling (Song et al. 2021, Alg. 1–2).

  Predictors: `PREDICTORS` ("euler_maruyama", "reverse_diffusion" — the
  SDE's own discretisation —, "ancestral" for VP / VE, "none"). Correctors:
  `CORRECTORS` ("none", "langevin" with target signal-to-noise ratio ``snr``,
  "ald" annealed Langevin dynamics of NCSN). Each step runs
  ``corrector_steps`` corrector updates at time t, then the predictor. `t_start` as
  in `euler_maruyama`.
  """
  check_choice(predictor, PREDICTORS, "predictor")
  check_choice(corrector, CORRECTORS, "corrector")
  check_steps(num_steps)
  if predictor == "ancestral" and isinstance(sde, sdes.SubVPSDE):
    raise ValueError("predictor 'ancestral' is defined for VPSDE and VESDE only; got SubVPSDE")
  if corrector != "none" and (not isinstance(corrector_steps, int) or corrector_steps < 1):
    raise ValueError(f"corrector_steps must be an int >= 1, got {corrector_steps!r}")
  if predictor == "none" and corrector == "none":
    raise ValueError("predictor and corrector cannot both be 'none'")
  return _pc_loop(PREDICTORS[predictor], corrector, score_fn, sde, rng, shape, num_steps, eps,
                  snr, corrector_steps, x_init, return_trajectory, t_start)

