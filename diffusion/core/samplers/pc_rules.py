"""Predictor and corrector update rules for `samplers.sde.predictor_corrector`.

A predictor takes one reverse-time step from ``t`` to ``t - dt`` (``dt > 0``)
given standard-normal noise ``z``; it returns ``(x_new, x_mean, score)``
where ``x_mean`` is the step without noise and ``score`` was evaluated at the
input. A corrector is described by its Langevin step size ``(sde, x, t, dt,
grad, z, snr) -> [B]``; `samplers` runs the Langevin updates
``x + step * score + sqrt(2 step) z``.
"""
from __future__ import annotations

import jax.numpy as jnp

from diffusion.core import schedules
from diffusion.core import sdes

_b = schedules.broadcast_to


def euler_maruyama_predictor(sde, score_fn, x, t, dt, z):
  score = score_fn(x, t)
  g = _b(sde.diffusion(t), x)
  x_mean = x - (sde.drift(x, t) - g**2 * score) * dt
  return x_mean + g * jnp.sqrt(dt) * z, x_mean, score


def reverse_diffusion_predictor(sde, score_fn, x, t, dt, z):
  score = score_fn(x, t)
  f, G = sde.discretize(x, t, dt)
  G = _b(G, x)
  x_mean = x - f + G**2 * score
  return x_mean + G * z, x_mean, score


def ancestral_predictor(sde, score_fn, x, t, dt, z):
  score = score_fn(x, t)
  if isinstance(sde, sdes.VESDE):
    sig, nxt = sde.sigma(t), jnp.where(t - dt > 0, sde.sigma(t - dt), 0.0)
    var = sig**2 - nxt**2
    x_mean = x + _b(var, x) * score
    std = jnp.sqrt(nxt**2 * var / sig**2)
  else:  # VPSDE (SubVPSDE is rejected up front).
    beta_i = sde.beta(t) * dt
    x_mean = (x + _b(beta_i, x) * score) / _b(jnp.sqrt(1.0 - beta_i), x)
    std = jnp.sqrt(beta_i)
  return x_mean + _b(std, x) * z, x_mean, score


def no_predictor(sde, score_fn, x, t, dt, z):
  return x, x, score_fn(x, t)


PREDICTORS = {
    "euler_maruyama": euler_maruyama_predictor,
    "reverse_diffusion": reverse_diffusion_predictor,
    "ancestral": ancestral_predictor,
    "none": no_predictor,
}


def _mean_norm(v):
  """Mean over the batch of the per-example L2 norms; a scalar."""
  return jnp.mean(jnp.sqrt(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=-1)))


def langevin_step_size(sde, x, t, dt, grad, z, snr):
  """Langevin step from the target signal-to-noise ratio ``snr = ||z|| / ||grad|| sqrt(step/2)``.

  As in Song et al. (2021, Alg. 4) and score_sde, the norms are averaged over
  the batch, so all samples of a batch share one step size (per-example norms
  are unstable in low dimension, where ``||grad||`` can be ~0); scaled by
  ``alpha_i = 1 - beta(t) dt`` for VP-type SDEs. Returns ``[B]``.
  """
  ratio = snr * _mean_norm(z) / _mean_norm(grad)
  return 2.0 * _langevin_alpha(sde, t, dt) * ratio**2


def ald_step_size(sde, x, t, dt, grad, z, snr):
  """Annealed Langevin dynamics (Song & Ermon 2019): step ~ (snr * std(t))^2."""
  _, std = sde.marginal_coeffs(t)
  return 2.0 * _langevin_alpha(sde, t, dt) * (snr * std) ** 2


def _langevin_alpha(sde, t, dt):
  return 1.0 - sde.beta(t) * dt if isinstance(sde, sdes.VPSDE) else jnp.ones_like(t)


CORRECTORS = {"none": None, "langevin": langevin_step_size, "ald": ald_step_size}
