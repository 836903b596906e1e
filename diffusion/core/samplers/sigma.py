"""Samplers in sigma space: ``x = x0 + sigma z``, a denoiser ``D(x, sigma [B]) -> x0``.

The EDM / k-diffusion convention (Karras et al. 2022), so that each step can be
compared one for one with other implementations:

- ``denoise(x [B, ...], sigma float32 [B]) -> x0 [B, ...]`` (`Denoiser.sigma_fn`
  makes one from any model: a VP model is run on ``x / alpha``);
- ``sigmas``: a concrete, strictly descending grid, usually ending at 0
  (`grids.karras_sigmas`, `grids.log_snr_sigmas`, `processes.sigma_grid`);
  ``N = len(sigmas) - 1`` steps;
- ``x_init`` at scale ``sigmas[0]``; without it ``x = sigmas[0] z`` from the first
  half of ``rng``; step noise is ``fold_in(loop_key, step)``;
- the ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` (the probability flow);
- a step that ends at ``sigma = 0`` is first order, ``x <- D(x, sigma)``, one
  evaluation (EDM's "Euler on the last step", DPM-Solver's lower-order final
  step): every higher-order formula divides by 0 there;
- ``return_trajectory=True`` gives ``(x, traj)`` with ``traj["t"]`` the sigma
  after each step, ``traj["x"]`` the state after it and ``traj["x0"]`` the
  denoised estimate at its start.

Solvers (``h = log(sigma / sigma_next)``, the step in ``lambda = -log sigma``, the
half log-SNR; ``eps = (x - D) / sigma``):

- `euler`: DDIM (Song et al. 2021) in sigma space, ``x <- D + sigma_down eps +
  sigma_up z`` with ``sigma_up = min(sigma_next, eta sqrt(sigma_next^2 (sigma^2 -
  sigma_next^2) / sigma^2))`` and ``sigma_down^2 = sigma_next^2 - sigma_up^2``:
  ``eta = 0`` is Euler = DDIM = DPM-Solver-1; on a VP model's own grid this is
  DDIM's update exactly, ``eta = 1`` DDIM's ancestral one;
- `heun`: EDM Algorithm 1 (2nd order; NFE ``2N - 1``);
- `edm_stochastic`: EDM Algorithm 2 (``S_churn``, ``S_tmin``, ``S_tmax``, ``S_noise``);
- `dpm_solver`: DPM-Solver (Lu et al. 2022a, Algorithms 1-2), noise-prediction
  form, singlestep, orders 1, 2 (``r1 = 1/2``) and 3 (``r1 = 1/3, r2 = 2/3``);
- `dpmpp_2m`: DPM-Solver++(2M) (Lu et al. 2022b), data prediction, multistep:
  ``D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}``, ``r = h_{i-1} / h_i``; the first step
  (no history) is first order;
- `dpmpp_singlestep`: DPM-Solver++(2S) (``r = 1/2``) and (3S) (``r1 = 1/3, r2 = 2/3``).

The formulas are written out at each step below from the exact solution
``x_t = (sigma_t / sigma_s) x_s + sigma_t int e^lambda D dlambda`` (data form) or
``x_t = x_s - int e^-lambda eps dlambda`` (noise form) with ``D`` / ``eps`` Taylor
expanded in ``lambda``; the measured orders are in tests/test_sigma_samplers.py.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion.core import grids
from diffusion.core.samplers.base import finish, normal, start, std_normal

Denoise = Callable[[jax.Array, jax.Array], jax.Array]


def _d(denoise, x, sigma):
  """``D(x, sigma)`` with a scalar sigma broadcast over the batch."""
  return denoise(x, jnp.full((x.shape[0],), sigma, jnp.float32))


def _eps(denoise, x, sigma):
  return (x - _d(denoise, x, sigma)) / sigma


def _walk(step, final, sigmas, rng, shape, x_init, return_trajectory, carry_init=None,
          extra=None):
  """Runs ``step`` over every step whose ``sigma_next > 0`` in a ``lax.scan``, then
  ``final`` on a last step to 0 (outside the scan, unrolled).

  ``step(carry, (x, sigma, sigma_next, i, extra_i)) -> (carry, x, x0)`` where
  ``carry`` is the solver's own history (None for one-step solvers);
  ``final(x, sigma, i) -> x`` (x0 of the last step is x itself).
  """
  s, to_zero = grids.check_sigmas(sigmas)
  x, loop_key = start(rng, shape, x_init, lambda k, sh: s[0] * std_normal(k, sh))
  n = s.shape[0] - 1
  n_body = n - 1 if to_zero else n
  extra = jnp.zeros(n) if extra is None else jnp.asarray(extra, jnp.float32)

  def body(c, xs):
    carry, x = c
    sigma, sigma_next, i, e = xs
    carry, x, x0 = step(carry, x, sigma, sigma_next, i, e, loop_key)
    return (carry, x), ({"t": sigma_next, "x": x, "x0": x0} if return_trajectory else None)

  traj = None
  if n_body:
    xs = (s[:n_body], s[1:n_body + 1], jnp.arange(n_body, dtype=jnp.int32), extra[:n_body])
    (_, x), traj = jax.lax.scan(body, (carry_init, x), xs)
  if n_body < n:
    x = final(x, s[-2], n - 1, extra[-1], loop_key)
    if return_trajectory:
      last = {"t": jnp.zeros((1,), jnp.float32), "x": x[None], "x0": x[None]}
      traj = last if traj is None else jax.tree.map(
          lambda a, b: jnp.concatenate([a, b.astype(a.dtype)]), traj, last)
  return finish(x, traj, return_trajectory)


def _to_zero(denoise):
  """The first-order last step to sigma = 0: ``x <- D(x, sigma)``."""
  return lambda x, sigma, i, e, key: _d(denoise, x, sigma)


def euler(denoise: Denoise, sigmas, rng: jax.Array, shape, *, eta: float = 0.0,
          x_init: jax.Array | None = None, return_trajectory: bool = False):
  """DDIM in sigma space (module docstring): Euler for ``eta = 0``, ancestral for ``eta > 0``."""
  if not 0.0 <= float(eta) <= 1.0:
    raise ValueError(f"eta must lie in [0, 1], got {eta}")

  def step(carry, x, sigma, sigma_next, i, e, key):
    x0 = _d(denoise, x, sigma)
    if eta == 0:
      return carry, x0 + (sigma_next / sigma) * (x - x0), x0
    up = jnp.minimum(sigma_next, eta * jnp.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2)
                                                / sigma**2))
    down = jnp.sqrt(sigma_next**2 - up**2)
    return carry, x0 + (down / sigma) * (x - x0) + up * normal(key, i, x), x0

  return _walk(step, _to_zero(denoise), sigmas, rng, shape, x_init, return_trajectory)


def _heun_step(denoise, x, sigma, sigma_next):
  """One EDM Heun step ``sigma -> sigma_next > 0``; returns ``(x_next, x0)``."""
  x0 = _d(denoise, x, sigma)
  d = (x - x0) / sigma
  x_euler = x + (sigma_next - sigma) * d
  d_next = (x_euler - _d(denoise, x_euler, sigma_next)) / sigma_next
  return x + (sigma_next - sigma) * 0.5 * (d + d_next), x0


def heun(denoise: Denoise, sigmas, rng: jax.Array, shape, *, x_init: jax.Array | None = None,
         return_trajectory: bool = False):
  """EDM's deterministic sampler (Karras et al. 2022, Alg. 1): Heun's 2nd-order method on
  ``dx/dsigma = (x - D) / sigma``, Euler on a last step to 0. NFE ``2N - 1`` (``2N`` if the
  grid does not end at 0)."""

  def step(carry, x, sigma, sigma_next, i, e, key):
    x, x0 = _heun_step(denoise, x, sigma, sigma_next)
    return carry, x, x0

  return _walk(step, _to_zero(denoise), sigmas, rng, shape, x_init, return_trajectory)


def churn_gammas(sigmas, s_churn: float, s_tmin: float, s_tmax: float) -> jax.Array:
  """EDM Alg. 2's ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` where ``S_tmin <= sigma_i <=
  S_tmax``, else 0; ``[N]`` over the steps of a grid ending at 0 (N nonzero sigmas)."""
  s = jnp.asarray(sigmas, jnp.float32)[:-1]
  g = min(s_churn / s.shape[0], math.sqrt(2.0) - 1.0)
  return jnp.where((s >= s_tmin) & (s <= s_tmax), g, 0.0)


def edm_stochastic(denoise: Denoise, sigmas, rng: jax.Array, shape, *, s_churn: float = 0.0,
                   s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                   x_init: jax.Array | None = None, return_trajectory: bool = False):
  """EDM's stochastic sampler (Karras et al. 2022, Alg. 2).

  Each step first raises the noise ``sigma -> sigma_hat = (1 + gamma_i) sigma`` by adding
  ``sqrt(sigma_hat^2 - sigma^2) S_noise z`` (`churn_gammas`), then takes a Heun step
  ``sigma_hat -> sigma_next`` (Euler when ``sigma_next = 0``). ``s_churn = 0`` is `heun`.
  """
  s, _ = grids.check_sigmas(sigmas)
  for name, v in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
    if not v >= 0:
      raise ValueError(f"{name} must be >= 0, got {v}")
  gammas = churn_gammas(s, s_churn, s_tmin, s_tmax)

  def churn(x, sigma, gamma, i, key):
    # sqrt(sigma_hat^2 - sigma^2) written so that gamma = 0 adds exactly 0 (the
    # difference of squares can round below 0 and give NaN).
    z = normal(key, i, x)
    return x + sigma * jnp.sqrt(gamma * (2.0 + gamma)) * s_noise * z, sigma * (1.0 + gamma)

  def step(carry, x, sigma, sigma_next, i, gamma, key):
    x, sigma_hat = churn(x, sigma, gamma, i, key)
    x, x0 = _heun_step(denoise, x, sigma_hat, sigma_next)
    return carry, x, x0

  def final(x, sigma, i, gamma, key):
    x, sigma_hat = churn(x, sigma, gamma, i, key)
    return _d(denoise, x, sigma_hat)

  return _walk(step, final, s, rng, shape, x_init, return_trajectory, extra=gammas)


DPM_ORDERS = (1, 2, 3)


def dpm_solver(denoise: Denoise, sigmas, rng: jax.Array, shape, *, order: int = 2,
               x_init: jax.Array | None = None, return_trajectory: bool = False):
  """DPM-Solver (Lu et al. 2022a), noise-prediction form, singlestep of `order` 1-3.

  With ``alpha = 1``, ``sigma_s (e^{r h} - 1) = sigma - sigma_s`` for the
  intermediate level ``sigma_s = sigma e^{-r h}``, so (``eps_s`` at the start):
  order 1 ``x - (sigma - sigma_next) eps_s``; order 2 evaluates ``eps`` at
  ``u = x - (sigma - s1) eps_s``, ``s1 = sqrt(sigma sigma_next)``, and steps with it;
  order 3 is the paper's Algorithm 2 with ``r1 = 1/3, r2 = 2/3``. NFE ``order (N - 1) + 1``
  on a grid ending at 0.
  """
  if order not in DPM_ORDERS:
    raise ValueError(f"order must be one of {DPM_ORDERS}, got {order!r}")

  def step(carry, x, sigma, sigma_next, i, e, key):
    x0 = _d(denoise, x, sigma)
    eps_s = (x - x0) / sigma
    if order == 1:
      return carry, x - (sigma - sigma_next) * eps_s, x0
    h = jnp.log(sigma / sigma_next)
    if order == 2:
      s1 = jnp.sqrt(sigma * sigma_next)
      eps_1 = _eps(denoise, x - (sigma - s1) * eps_s, s1)
      return carry, x - (sigma - sigma_next) * eps_1, x0
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    s1, s2 = sigma * jnp.exp(-r1 * h), sigma * jnp.exp(-r2 * h)
    d1 = _eps(denoise, x - (sigma - s1) * eps_s, s1) - eps_s
    u2 = (x - (sigma - s2) * eps_s
          - s2 * (r2 / r1) * (jnp.expm1(r2 * h) / (r2 * h) - 1.0) * d1)
    d2 = _eps(denoise, u2, s2) - eps_s
    x = (x - (sigma - sigma_next) * eps_s
         - sigma_next / r2 * (jnp.expm1(h) / h - 1.0) * d2)
    return carry, x, x0

  return _walk(step, _to_zero(denoise), sigmas, rng, shape, x_init, return_trajectory)


def dpmpp_2m(denoise: Denoise, sigmas, rng: jax.Array, shape, *,
             x_init: jax.Array | None = None, return_trajectory: bool = False):
  """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): ``x <- (sigma_next / sigma) x - expm1(-h) D'``
  with the multistep ``D'`` of the module docstring; the previous ``D`` and ``h`` ride in
  the scan carry (no host round trip). NFE ``N``."""

  def step(carry, x, sigma, sigma_next, i, e, key):
    x0_prev, h_prev = carry
    x0 = _d(denoise, x, sigma)
    h = jnp.log(sigma / sigma_next)
    # 1 / (2 r) = h / (2 h_prev); 0 on the first step (no history: first order).
    c = jnp.where(i > 0, h / (2.0 * jnp.where(i > 0, h_prev, 1.0)), 0.0)
    d = (1.0 + c) * x0 - c * x0_prev
    return (x0, h), (sigma_next / sigma) * x - jnp.expm1(-h) * d, x0

  init = (jnp.zeros(tuple(shape), jnp.float32), jnp.float32(1.0))
  return _walk(step, _to_zero(denoise), sigmas, rng, shape, x_init, return_trajectory,
               carry_init=init)


def dpmpp_singlestep(denoise: Denoise, sigmas, rng: jax.Array, shape, *, order: int = 2,
                     x_init: jax.Array | None = None, return_trajectory: bool = False):
  """DPM-Solver++(2S) / (3S) (Lu et al. 2022b), data prediction, singlestep.

  With ``phi_1(h) = expm1(-h)`` and ``phi_2(h) = phi_1(h) / h + 1``:
  2S (``r = 1/2``): ``u = (s1 / sigma) x - phi_1(h/2) D``, ``x <- (sigma_next / sigma) x -
  phi_1(h) D(u, s1)``. 3S (``r1 = 1/3``, ``r2 = 2/3``): ``u1 = (s1/sigma) x - phi_1(r1 h) D``,
  ``u2 = (s2/sigma) x - phi_1(r2 h) D + (r2/r1) phi_2(r2 h) (D(u1) - D)``,
  ``x <- (sigma_next/sigma) x - phi_1(h) D + phi_2(h) (D(u2) - D) / r2``.
  NFE ``order (N - 1) + 1`` on a grid ending at 0.
  """
  if order not in (2, 3):
    raise ValueError(f"order must be 2 or 3, got {order!r}")

  def step(carry, x, sigma, sigma_next, i, e, key):
    x0 = _d(denoise, x, sigma)
    h = jnp.log(sigma / sigma_next)
    phi2 = lambda v: jnp.expm1(-v) / v + 1.0
    if order == 2:
      s1 = jnp.sqrt(sigma * sigma_next)
      x0_1 = _d(denoise, (s1 / sigma) * x - jnp.expm1(-0.5 * h) * x0, s1)
      return carry, (sigma_next / sigma) * x - jnp.expm1(-h) * x0_1, x0
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    s1, s2 = sigma * jnp.exp(-r1 * h), sigma * jnp.exp(-r2 * h)
    x0_1 = _d(denoise, (s1 / sigma) * x - jnp.expm1(-r1 * h) * x0, s1)
    u2 = ((s2 / sigma) * x - jnp.expm1(-r2 * h) * x0
          + (r2 / r1) * phi2(r2 * h) * (x0_1 - x0))
    x0_2 = _d(denoise, u2, s2)
    x = (sigma_next / sigma) * x - jnp.expm1(-h) * x0 + phi2(h) * (x0_2 - x0) / r2
    return carry, x, x0

  return _walk(step, _to_zero(denoise), sigmas, rng, shape, x_init, return_trajectory)


def nfe(name: str, num_steps: int, ends_at_zero: bool = True, order: int = 1) -> int:
  """Network evaluations of the solver `name` over `num_steps` steps."""
  body = num_steps - 1 if ends_at_zero else num_steps
  last = 1 if ends_at_zero else 0
  per = {"euler": 1, "dpmpp_2m": 1, "heun": 2, "edm_stochastic": 2, "dpm_solver": order,
         "dpmpp_singlestep": order}[name]
  return per * body + last
