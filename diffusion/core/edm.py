"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models"): the process, the preconditioning and the training loss.

- `EDMProcess`: ``x = x0 + sigma z`` (``alpha = 1``) on the contract's time axis
  ``t in [0, 1]`` through the rho-warped map of the Karras grid,
  ``sigma(t) = (smin^(1/rho) + t (smax^(1/rho) - smin^(1/rho)))^rho``, so a uniform
  time grid is the Karras grid (eq. 5) and ``t = 1`` is the prior ``N(0, smax^2)``.
  As an SDE it is variance exploding: ``f = 0``, ``g^2 = d sigma^2 / dt``, so the
  score-SDE samplers run it too. `time_at_sigma` inverts the map in closed form
  (also beyond [0, 1]: the lognormal training sigmas may leave the sampling range).
- `preconditioning` (Table 1): ``c_skip, c_out, c_in`` from ``sigma`` and ``sigma_data``;
  ``c_noise = log(sigma) / 4`` is the denoiser's noise input "edm".
- `edm_loss` (eq. 2 and Table 1): ``ln sigma ~ N(P_mean, P_std^2)``, weight ``lambda =
  (sigma^2 + sd^2) / (sigma sd)^2``, computed as the unit-weight MSE of the raw
  network output ``F`` against its effective target ``(x0 - c_skip x) / c_out``
  (``lambda c_out^2 = 1``, so the two are equal).

Nothing here imports Flax.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from diffusion.core import schedules, sdes

_b = schedules.broadcast_to


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["sigma_min", "sigma_max", "rho", "sigma_data"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class EDMProcess(sdes._SDE):  # pylint: disable=protected-access
  """EDM's ``x = x0 + sigma(t) z`` with the rho-warped time axis (module docstring)."""

  sigma_min: float = 0.002
  sigma_max: float = 80.0
  rho: float = 7.0
  sigma_data: float = 0.5

  def _ends(self):
    return self.sigma_min ** (1.0 / self.rho), self.sigma_max ** (1.0 / self.rho)

  @property
  def prior_std(self):
    return self.sigma_max

  def sigma(self, t):
    lo, hi = self._ends()
    return (lo + jnp.asarray(t, jnp.float32) * (hi - lo)) ** self.rho

  def time_at_sigma(self, s):
    lo, hi = self._ends()
    return (jnp.asarray(s, jnp.float32) ** (1.0 / self.rho) - lo) / (hi - lo)

  def sigma_limits(self):
    return float(self.sigma_min), float(self.sigma_max)

  def marginal_coeffs(self, t):
    return jnp.ones_like(jnp.asarray(t, jnp.float32)), self.sigma(t)

  def drift(self, x, t):
    return jnp.zeros_like(x)

  def diffusion(self, t):
    """``g(t) = sqrt(d sigma^2 / dt) = sqrt(2 sigma rho (hi - lo) base^(rho - 1))``."""
    lo, hi = self._ends()
    base = lo + jnp.asarray(t, jnp.float32) * (hi - lo)
    return jnp.sqrt(2.0 * base**self.rho * self.rho * (hi - lo) * base ** (self.rho - 1.0))


def preconditioning(sigma, sigma_data: float = 0.5):
  """``(c_skip, c_out, c_in)`` of Karras et al. (2022, Table 1) at noise level ``sigma``."""
  sd2 = sigma_data**2
  total = sigma**2 + sd2
  return sd2 / total, sigma * sigma_data * jax.lax.rsqrt(total), jax.lax.rsqrt(total)


def c_noise(sigma):
  """EDM's noise input ``log(sigma) / 4``."""
  return 0.25 * jnp.log(sigma)


def loss_weight(sigma, sigma_data: float = 0.5):
  """``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` (= ``1 / c_out^2``)."""
  return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma(rng, batch_size: int, p_mean: float = -1.2, p_std: float = 1.2):
  """EDM's training noise levels: ``ln sigma ~ N(P_mean, P_std^2)``; ``[B]`` float32."""
  return jnp.exp(p_mean + p_std * jax.random.normal(rng, (batch_size,), jnp.float32))


def f_target(x0, x, sigma, sigma_data: float = 0.5):
  """The effective training target of F: ``(x0 - c_skip x) / c_out``."""
  c_skip, c_out, _ = preconditioning(sigma, sigma_data)
  return (x0 - _b(c_skip, x) * x) / _b(c_out, x)


def edm_loss(params, batch: dict, rng: jax.Array, *, model_fn, process: EDMProcess,
             p_mean: float = -1.2, p_std: float = 1.2):
  """EDM's training loss (module docstring), mean over pixels and batch.

  ``model_fn(params, x [B, ...], t [B], rng) -> F`` is the raw network output of a
  `Denoiser` with prediction "F" on `process` (``Denoiser.output``; ``t =
  process.time_at_sigma(sigma)``). Metrics: ``loss`` and ``x0_mse`` (the unweighted
  denoising error ``||D - x0||^2``, mean over pixels).
  """
  x0 = batch["image"]
  s_key, n_key, m_key = jax.random.split(rng, 3)
  sigma = sample_sigma(s_key, x0.shape[0], p_mean, p_std)
  x = x0 + _b(sigma, x0) * jax.random.normal(n_key, x0.shape, x0.dtype)
  out = model_fn(params, x, process.time_at_sigma(sigma), m_key).astype(jnp.float32)
  sq = (out - f_target(x0, x, sigma, process.sigma_data)) ** 2
  per = jnp.mean(sq.reshape(sq.shape[0], -1), axis=-1)
  loss = jnp.mean(per)
  x0_mse = jnp.mean(per / loss_weight(sigma, process.sigma_data))
  return loss, {"loss": loss, "x0_mse": x0_mse}
