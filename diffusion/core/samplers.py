"""Samplers: pure functions of a model callable, a schedule or SDE, and a key.

Contract (DESIGN.md): ``eps_fn(x [B, ...], t int32 [B]) -> eps`` for the
discrete samplers, ``score_fn(x, t float32 [B]) -> score`` for the
continuous ones; any callable works (tests pass closed-form scores). Every
sampler

- runs its loop in ``lax.scan`` and compiles under ``jax.jit`` (mark
  ``shape``, ``num_steps`` and the method names static);
- takes ``x_init=`` (an array of ``shape``) to start from a given ``x_T``;
  otherwise it draws ``x_T`` from the first half of ``rng``;
- derives the step noise as ``fold_in(loop_key, step)``, so a step's noise
  does not depend on how many steps came before it;
- with ``return_trajectory=True`` returns ``(x, traj)`` where ``traj`` has
  ``"t"`` ``[S]``, ``"x"`` ``[S, ...]`` (the state after each step) and
  ``"x0"`` ``[S, ...]`` (the denoised estimate at each step).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.core import ode
from diffusion.core import schedules
from diffusion.core import sdes
from diffusion.core.pc_updates import CORRECTORS, PREDICTORS

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
ScoreFn = sdes.ScoreFn

_b = schedules.broadcast_to


# --------------------------------------------------------------------------
# Shared plumbing.
# --------------------------------------------------------------------------


def _start(rng, shape, x_init, prior: Callable[[jax.Array, tuple], jax.Array]):
  """Validates ``shape`` / ``x_init``; returns ``(x_T, loop_key)``."""
  shape = tuple(shape)
  if len(shape) < 1 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
    raise ValueError(f"shape must be a tuple of positive ints [B, ...], got {shape}")
  init_key, loop_key = jax.random.split(rng)
  if x_init is None:
    return prior(init_key, shape), loop_key
  if tuple(x_init.shape) != shape:
    raise ValueError(f"x_init has shape {tuple(x_init.shape)} but shape is {shape}")
  return jnp.asarray(x_init, jnp.float32), loop_key


def _normal(loop_key, step, x):
  return jax.random.normal(jax.random.fold_in(loop_key, step), x.shape, x.dtype)


def _std_normal(key, shape):
  return jax.random.normal(key, shape, jnp.float32)


def _finish(x, traj, return_trajectory):
  return (x, traj) if return_trajectory else x


def _check_steps(num_steps, name="num_steps", upper=None):
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"{name} must be an int >= 1, got {num_steps!r}")
  if upper is not None and num_steps > upper:
    raise ValueError(f"{name}={num_steps} exceeds the schedule's T={upper}; choose 1 <= {name} <= {upper}")


def _check_choice(value, valid, name):
  if value not in valid:
    raise ValueError(f"unknown {name} {value!r}; valid: {sorted(valid)}")


def _x0_from_eps(x, eps, a, clip):
  x0 = (x - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)
  return x0 if clip is None else jnp.clip(x0, -clip, clip)


# --------------------------------------------------------------------------
# Discrete samplers.
# --------------------------------------------------------------------------


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
  _check_choice(variance, ("beta", "beta_tilde"), "variance")
  x, loop_key = _start(rng, shape, x_init, _std_normal)
  B = x.shape[0]
  var_table = sched.betas if variance == "beta" else sched.posterior_variances

  def step(x, t):
    tb = jnp.full((B,), t, jnp.int32)
    a = _b(sched.alpha_bars[tb], x)
    x0 = _x0_from_eps(x, eps_fn(x, tb), a, clip_denoised)
    mean, _, _ = schedules.q_posterior(sched, x0, x, tb)
    std = jnp.where(t > 0, jnp.sqrt(var_table[t]), 0.0)
    x = mean + std * _normal(loop_key, t, x)
    return x, ({"t": t, "x": x, "x0": x0} if return_trajectory else None)

  x, traj = jax.lax.scan(step, x, jnp.arange(sched.num_steps - 1, -1, -1, dtype=jnp.int32))
  return _finish(x, traj, return_trajectory)


def ddim_timesteps(T: int, num_steps: int) -> np.ndarray:
  """The DDIM paper's uniform skip ``tau_i = i T // S``, ascending, int32 ``[S]``."""
  _check_steps(num_steps, upper=T)
  return (np.arange(num_steps, dtype=np.int64) * T // num_steps).astype(np.int32)


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
  taus = ddim_timesteps(sched.num_steps, num_steps)
  if isinstance(eta, (int, float, np.number)) and not 0.0 <= float(eta) <= 1.0:
    raise ValueError(f"eta must lie in [0, 1], got {eta}")
  deterministic = isinstance(eta, (int, float)) and eta == 0
  x, loop_key = _start(rng, shape, x_init, _std_normal)
  B = x.shape[0]
  pairs = jnp.asarray(np.stack([taus, np.concatenate([[-1], taus[:-1]])], axis=1)[::-1])

  def step(x, pair):
    t, t_prev = pair[0], pair[1]
    a, a_prev = sched.alpha_bars[t], _alpha_bar_or_one(sched, t_prev)
    eps = eps_fn(x, jnp.full((B,), t, jnp.int32))
    x0 = _x0_from_eps(x, eps, a, clip_denoised)
    if clip_denoised is not None:
      eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
    s = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
    x = jnp.sqrt(a_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - a_prev - s**2, 0.0)) * eps
    if not deterministic:  # a fixed eta = 0 draws no noise at all
      x = x + s * _normal(loop_key, t, x)
    return x, ({"t": t, "x": x, "x0": x0} if return_trajectory else None)

  x, traj = jax.lax.scan(step, x, pairs)
  return _finish(x, traj, return_trajectory)


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
  taus = ddim_timesteps(sched.num_steps, num_steps)
  B = x0.shape[0]
  pairs = jnp.asarray(np.stack([np.concatenate([[-1], taus[:-1]]), taus], axis=1))

  def step(x, pair):
    t_cur, t_next = pair[0], pair[1]
    a_cur, a_next = _alpha_bar_or_one(sched, t_cur), sched.alpha_bars[t_next]
    eps = eps_fn(x, jnp.full((B,), t_next, jnp.int32))
    x0_hat = (x - jnp.sqrt(1.0 - a_cur) * eps) / jnp.sqrt(a_cur)
    x = jnp.sqrt(a_next) * x0_hat + jnp.sqrt(1.0 - a_next) * eps
    return x, ({"t": t_next, "x": x, "x0": x0_hat} if return_trajectory else None)

  x, traj = jax.lax.scan(step, jnp.asarray(x0, jnp.float32), pairs)
  return _finish(x, traj, return_trajectory)


# --------------------------------------------------------------------------
# Continuous-time (SDE) samplers.
# --------------------------------------------------------------------------


def _time_grid(num_steps: int, eps: float) -> jax.Array:
  """``[N+1]`` times from 1 down to ``eps``."""
  if not 0.0 < eps < 1.0:
    raise ValueError(f"eps (the final time) must lie in (0, 1), got {eps}")
  return jnp.linspace(1.0, eps, num_steps + 1, dtype=jnp.float32)


def _tweedie_x0(sde, x, t, score):
  """``E[x0 | x_t] = (x + std^2 score) / alpha``."""
  alpha, std = sde.marginal_coeffs(t)
  return (x + _b(std, x) ** 2 * score) / _b(alpha, x)


def _pc_loop(predictor, corrector, score_fn, sde, rng, shape, num_steps, eps, snr,
             corrector_steps, x_init, return_trajectory):
  ts = _time_grid(num_steps, eps)
  dt = (1.0 - eps) / num_steps
  x, loop_key = _start(rng, shape, x_init, sde.prior_sample)
  B = x.shape[0]
  step_size_fn = CORRECTORS[corrector]

  def correct(x, t, key):
    def body(j, x):
      grad = score_fn(x, t)
      z = _normal(key, j, x)
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
    x, x_mean, score = predictor(sde, score_fn, x_in, t, dt, _normal(key, 0, x_in))
    out = {"t": ts[i], "x": x, "x0": _tweedie_x0(sde, x_in, t, score)} if return_trajectory else None
    return (x, x_mean), out

  (_, x_mean), traj = jax.lax.scan(step, (x, x), jnp.arange(num_steps))
  # The last step returns its mean: no noise is added at the final time.
  return _finish(x_mean, traj, return_trajectory)


def euler_maruyama(
    score_fn: ScoreFn, sde, rng: jax.Array, shape, *, num_steps: int = 1000, eps: float = 1e-3,
    x_init: jax.Array | None = None, return_trajectory: bool = False,
):
  """Euler–Maruyama on the reverse-time SDE from t = 1 to ``eps`` in ``num_steps`` steps.

  ``x <- x - [f - g^2 score] dt + g sqrt(dt) z`` (dt > 0, time decreasing); the
  final step returns its mean.
  """
  _check_steps(num_steps)
  return _pc_loop(PREDICTORS["euler_maruyama"], "none", score_fn, sde, rng, shape, num_steps, eps,
                  0.0, 0, x_init, return_trajectory)


def predictor_corrector(
    score_fn: ScoreFn, sde, rng: jax.Array, shape, *, num_steps: int = 1000,
    predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16,
    corrector_steps: int = 1, eps: float = 1e-3, x_init: jax.Array | None = None,
    return_trajectory: bool = False,
):
  """Predictor–corrector sampling (Song et al. 2021, Alg. 1–2).

  Predictors: `PREDICTORS` ("euler_maruyama", "reverse_diffusion" — the
  SDE's own discretisation —, "ancestral" for VP / VE, "none"). Correctors:
  `CORRECTORS` ("none", "langevin" with target signal-to-noise ratio ``snr``,
  "ald" annealed Langevin dynamics of NCSN). Each step runs
  ``corrector_steps`` corrector updates at time t, then the predictor.
  """
  _check_choice(predictor, PREDICTORS, "predictor")
  _check_choice(corrector, CORRECTORS, "corrector")
  _check_steps(num_steps)
  if predictor == "ancestral" and isinstance(sde, sdes.SubVPSDE):
    raise ValueError("predictor 'ancestral' is defined for VPSDE and VESDE only; got SubVPSDE")
  if corrector != "none" and (not isinstance(corrector_steps, int) or corrector_steps < 1):
    raise ValueError(f"corrector_steps must be an int >= 1, got {corrector_steps!r}")
  if predictor == "none" and corrector == "none":
    raise ValueError("predictor and corrector cannot both be 'none'")
  return _pc_loop(PREDICTORS[predictor], corrector, score_fn, sde, rng, shape, num_steps, eps,
                  snr, corrector_steps, x_init, return_trajectory)


ODE_METHODS = ("euler", "heun", "rk45")


def probability_flow(
    score_fn: ScoreFn, sde, rng: jax.Array, shape, *, num_steps: int = 100, method: str = "heun",
    eps: float = 1e-3, rtol: float = 1e-5, atol: float = 1e-5, x_init: jax.Array | None = None,
    return_trajectory: bool = False, return_stats: bool = False,
):
  """Integrates the probability-flow ODE ``dx/dt = f - g^2 score / 2`` from 1 to ``eps``.

  ``method``: "euler" (order 1), "heun" (order 2; 2 evaluations per step) on
  a uniform grid of ``num_steps`` steps, or "rk45" (adaptive Dormand–Prince
  with ``rtol`` / ``atol``; ``num_steps`` is then the step limit). With
  ``return_stats`` the result is ``(x, {"nfe": ...})`` (trajectories are not
  available for rk45).
  """
  _check_choice(method, ODE_METHODS, "method")
  _check_steps(num_steps)
  x, _ = _start(rng, shape, x_init, sde.prior_sample)
  B = x.shape[0]

  def drift(y, t):
    return sde.probability_flow_drift(score_fn, y, jnp.full((B,), t))

  if method == "rk45":
    if return_trajectory:
      raise ValueError("return_trajectory is not available for method='rk45'; use 'heun'")
    x, stats = ode.integrate_adaptive(drift, x, 1.0, eps, rtol=rtol, atol=atol, max_steps=num_steps)
    return (x, stats) if return_stats else x
  ts = _time_grid(num_steps, eps)
  stats = {"nfe": jnp.asarray(num_steps * ode.FIXED_STEP[method][1], jnp.int32)}
  if not return_trajectory:
    x = ode.integrate_fixed(drift, x, ts, method)
    return (x, stats) if return_stats else x
  x, xs = ode.integrate_fixed(drift, x, ts, method, return_trajectory=True)
  t_after = ts[1:]
  tb = jnp.broadcast_to(t_after[:, None], (num_steps, B))
  x0 = jax.vmap(lambda xi, ti: _tweedie_x0(sde, xi, ti, score_fn(xi, ti)))(xs, tb)
  traj = {"t": t_after, "x": xs, "x0": x0}
  return ((x, traj, stats) if return_stats else (x, traj))


SAMPLERS = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler_maruyama": euler_maruyama,
    "predictor_corrector": predictor_corrector,
    "probability_flow": probability_flow,
}
DISCRETE_SAMPLERS = ("ddpm", "ddim")


def get(name: str) -> Callable:
  """Sampler by name (`SAMPLERS`); the error lists the valid names."""
  _check_choice(name, SAMPLERS, "sampler")
  return SAMPLERS[name]
