"""Forward SDEs ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, 1]`` (Song et al. 2021).

Each SDE is a frozen dataclass registered as a pytree (its numbers are leaves,
so an SDE can be passed through ``jax.jit``). Shapes: ``x`` is ``[B, ...]``,
``t`` is float ``[B]``; per-example scalars such as ``g(t)`` come back as
``[B]`` and are broadcast by the caller with `schedules.broadcast_to`.

``marginal(x0, t)`` gives the perturbation kernel ``p_t(x | x0) = N(mean,
std^2 I)``. For VE it is ``N(x0, sigma(t)^2)`` (the score_sde convention: the
data at ``t = 0`` carry ``sigma_min`` noise).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion.core import checks, schedules

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x [B, ...], t [B]) -> score [B, ...]

_b = schedules.broadcast_to




def _sum_except_batch(x: jax.Array) -> jax.Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def _gaussian_logp(z: jax.Array, std) -> jax.Array:
  """``log N(z; 0, std^2 I)`` summed over all but the batch axis; ``[B]``."""
  d = math.prod(z.shape[1:])
  return -0.5 * d * jnp.log(2 * jnp.pi * std**2) - 0.5 * _sum_except_batch(z**2) / std**2


class _SDE:
  """Shared methods; subclasses define drift, diffusion, marginal_coeffs, prior_std.

  The noise-process contract (`diffusion.core.processes`): ``alpha(t)``,
  ``sigma(t)`` and ``log_snr(t)`` of the marginal ``x_t = alpha x_0 + sigma
  eps`` at float times ``t [B]`` in [0, 1] (1 = prior).
  """

  def alpha(self, t):
    return self.marginal_coeffs(t)[0]

  def sigma(self, t):
    return self.marginal_coeffs(t)[1]

  def log_snr(self, t):
    alpha, sigma = self.marginal_coeffs(t)
    return 2.0 * (jnp.log(alpha) - jnp.log(sigma))

  def marginal(self, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(mean [B, ...], std [B, 1, ...])`` of ``p_t(x | x0)``."""
    checks.check_t(x0, t)
    alpha, std = self.marginal_coeffs(t)
    return _b(alpha, x0) * x0, _b(std, x0)

  def prior_sample(self, rng: jax.Array, shape) -> jax.Array:
    return self.prior_std * jax.random.normal(rng, shape, jnp.float32)

  def prior_logp(self, z: jax.Array) -> jax.Array:
    """``log p_T(z)`` per example, ``[B]``."""
    return _gaussian_logp(z, self.prior_std)

  def discretize(self, x: jax.Array, t: jax.Array, dt) -> tuple[jax.Array, jax.Array]:
    """Euler discretisation of one step of length ``dt > 0`` at time ``t``.

    Returns ``(f, G)`` with ``x_{t+dt} = x_t + f + G z``: ``f = f(x, t) dt``
    ``[B, ...]`` and ``G = g(t) sqrt(dt)`` ``[B]``. VP and VE override this
    with the DDPM / SMLD discretisations (exact for their discrete chains).
    """
    return self.drift(x, t) * dt, self.diffusion(t) * jnp.sqrt(dt)

  def reverse_drift(self, score_fn: ScoreFn, x: jax.Array, t: jax.Array) -> jax.Array:
    """Drift of the reverse-time SDE: ``f - g^2 score`` (integrated with dt < 0)."""
    g = _b(self.diffusion(t), x)
    return self.drift(x, t) - g**2 * score_fn(x, t)

  def probability_flow_drift(self, score_fn: ScoreFn, x: jax.Array, t: jax.Array) -> jax.Array:
    """Drift of the probability-flow ODE: ``f - g^2 score / 2``."""
    g = _b(self.diffusion(t), x)
    return self.drift(x, t) - 0.5 * g**2 * score_fn(x, t)


def _vp_fields(cls):
  return jax.tree_util.register_dataclass(
      dataclasses.dataclass(frozen=True)(cls), data_fields=["beta_min", "beta_max"], meta_fields=[]
  )


@_vp_fields
class VPSDE(_SDE):
  """Variance preserving: ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw`` (continuous DDPM)."""

  beta_min: float = 0.1
  beta_max: float = 20.0

  @property
  def _sched(self) -> schedules.LinearVP:
    return schedules.LinearVP(self.beta_min, self.beta_max)

  prior_std = 1.0

  def beta(self, t):
    return self._sched.beta(t)

  def drift(self, x, t):
    return -0.5 * _b(self.beta(t), x) * x

  def diffusion(self, t):
    return jnp.sqrt(self.beta(t))

  def marginal_coeffs(self, t):
    """``(alpha(t), std(t))``, each ``[B]``: ``alpha = exp(-int beta / 2)``, ``std^2 = 1 - alpha^2``."""
    return self._sched.alpha(t), self._sched.sigma(t)

  def discretize(self, x, t, dt):
    """DDPM discretisation with ``beta_i = beta(t) dt``: ``x + f = sqrt(1 - beta_i) x``."""
    beta_i = self.beta(t) * dt
    return (_b(jnp.sqrt(1.0 - beta_i), x) - 1.0) * x, jnp.sqrt(beta_i)


@_vp_fields
class SubVPSDE(VPSDE):
  """Sub-VP: ``dx = -beta x / 2 dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw``.

  Same drift as VP; its marginal std is ``1 - alpha(t)^2``, below the VP std
  at every t. Discretised with plain Euler.
  """

  def diffusion(self, t):
    # 1 - exp(-2 int_0^t beta) = 1 - alpha(t)^4.
    return jnp.sqrt(self.beta(t) * -jnp.expm1(4.0 * self._sched.log_alpha(t)))

  def marginal_coeffs(self, t):
    return self._sched.alpha(t), -jnp.expm1(2.0 * self._sched.log_alpha(t))

  discretize = _SDE.discretize


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["sigma_min", "sigma_max"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class VESDE(_SDE):
  """Variance exploding: ``dx = sqrt(d sigma(t)^2 / dt) dw``, ``sigma(t) = smin (smax/smin)^t``."""

  sigma_min: float = 0.01
  sigma_max: float = 50.0

  @property
  def prior_std(self):
    return self.sigma_max

  def sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def drift(self, x, t):
    return jnp.zeros_like(x)

  def diffusion(self, t):
    return self.sigma(t) * jnp.sqrt(2.0 * jnp.log(self.sigma_max / self.sigma_min))

  def marginal_coeffs(self, t):
    return jnp.ones_like(t), self.sigma(t)

  def discretize(self, x, t, dt):
    """SMLD discretisation: ``G^2 = sigma(t)^2 - sigma(t - dt)^2`` (``sigma(t - dt) = 0`` below 0)."""
    prev = jnp.where(t - dt > 0, self.sigma(t - dt), 0.0)
    return jnp.zeros_like(x), jnp.sqrt(self.sigma(t) ** 2 - prev**2)


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def get(name: str, **kwargs):
  """SDE by name: "vp", "subvp" or "ve"."""
  if name not in SDES:
    raise ValueError(f"unknown sde {name!r}; valid sdes: {sorted(SDES)}")
  return SDES[name](**kwargs)
