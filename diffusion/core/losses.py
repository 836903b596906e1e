"""Training losses: pure functions returning ``(loss, metrics)``.

The network enters as ``model_fn(params, x_t [B, ...], t [B], rng) -> out``,
its output read as the ``prediction`` kind ("eps", "x0", "v" or, for the
continuous losses, "score"); `parameterization` converts, so every loss
trains every parameterization. Squared errors are averaged over the
non-batch dimensions (so the loss scale does not depend on image size), then
over the batch.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion.core import checks
from diffusion.core import parameterization
from diffusion.core import schedules

ModelFn = Callable[[dict, jax.Array, jax.Array, jax.Array], jax.Array]

DISCRETE_PREDICTIONS = ("eps", "x0", "v")
DISCRETE_WEIGHTINGS = ("none", "min_snr")
CONTINUOUS_PREDICTIONS = ("eps", "x0", "v", "score")
CONTINUOUS_WEIGHTINGS = ("sigma2", "likelihood")
_b = schedules.broadcast_to




def _mean_except_batch(x):
  return jnp.mean(x.reshape(x.shape[0], -1), axis=-1)


def min_snr_weight(snr: jax.Array, gamma: float, prediction: str) -> jax.Array:
  """Min-SNR-gamma weights (Hang et al. 2023) for a loss on ``prediction``.

  The x0-space weight is ``min(snr, gamma)``; an eps loss equals the x0 loss
  times ``1/snr`` and a v loss times ``1/(snr + 1)``, so those are divided out.
  """
  w = jnp.minimum(snr, gamma)
  if prediction == "eps":
    return w / snr
  if prediction == "v":
    return w / (snr + 1.0)
  return w


def discrete_loss(
    params, batch: dict, rng: jax.Array, *, model_fn: ModelFn, sched: schedules.DiscreteSchedule,
    prediction: str = "eps", weighting: str = "none", min_snr_gamma: float = 5.0,
):
  """DDPM's simple loss: MSE between the network output and its target at uniform t.

  ``batch["image"]``: ``[B, ...]`` in [-1, 1]. ``t ~ U{0..T-1}``,
  ``x_t = q_sample(x0, t, eps)``; the target is eps, x0 or
  ``v = sqrt(ab) eps - sqrt(1 - ab) x0``. ``weighting="min_snr"`` applies
  `min_snr_weight`. Metrics: ``loss`` and ``mse`` (unweighted).
  """
  checks.choice(prediction, DISCRETE_PREDICTIONS, "prediction")
  checks.choice(weighting, DISCRETE_WEIGHTINGS, "weighting")
  x0 = batch["image"]
  t_key, n_key, m_key = jax.random.split(rng, 3)
  t = jax.random.randint(t_key, (x0.shape[0],), 0, sched.num_steps)
  eps = jax.random.normal(n_key, x0.shape, x0.dtype)
  x_t = schedules.q_sample(sched, x0, t, eps)
  alpha, sigma = sched.alpha(t), sched.sigma(t)
  target = parameterization.target(prediction, x0, eps, alpha, sigma)
  out = model_fn(params, x_t, t, m_key).astype(jnp.float32)
  mse = _mean_except_batch((out - target) ** 2)
  weight = 1.0
  if weighting == "min_snr":
    weight = min_snr_weight(alpha**2 / sigma**2, min_snr_gamma, prediction)
  loss = jnp.mean(weight * mse)
  return loss, {"loss": loss, "mse": jnp.mean(mse)}


def sample_time(rng: jax.Array, batch_size: int, eps: float, antithetic: bool = False) -> jax.Array:
  """``t`` in ``[eps, 1]``: i.i.d. uniform, or low-discrepancy (Kingma et al. 2021).

  Low-discrepancy: ``u_i = (u_0 + i / B) mod 1`` — one uniform offset, evenly
  spaced over the batch, which lowers the variance of the loss estimate.
  """
  if antithetic:
    u = jnp.mod(jax.random.uniform(rng, ()) + jnp.arange(batch_size) / batch_size, 1.0)
  else:
    u = jax.random.uniform(rng, (batch_size,))
  return eps + (1.0 - eps) * u


def continuous_loss(
    params, batch: dict, rng: jax.Array, *, model_fn: ModelFn, sde, prediction: str = "eps",
    weighting: str = "sigma2", eps: float = 1e-5, antithetic: bool = False,
):
  """Denoising score matching for a VP / sub-VP / VE SDE (Song et al. 2021, eq. 7).

  ``x_t = alpha x0 + std z``; the exact conditional score is ``-z / std``.
  The loss is ``lambda(t) ||score - (-z / std)||^2`` with ``lambda = std^2``
  ("sigma2": equals the eps-MSE) or ``lambda = g(t)^2`` ("likelihood": makes
  the loss a bound on the negative log-likelihood, Song et al. 2021b).
  """
  checks.choice(prediction, CONTINUOUS_PREDICTIONS, "prediction")
  checks.choice(weighting, CONTINUOUS_WEIGHTINGS, "weighting")
  x0 = batch["image"]
  t_key, n_key, m_key = jax.random.split(rng, 3)
  t = sample_time(t_key, x0.shape[0], eps, antithetic)
  z = jax.random.normal(n_key, x0.shape, x0.dtype)
  alpha, std = sde.marginal_coeffs(t)
  x_t = _b(alpha, x0) * x0 + _b(std, x0) * z
  out = model_fn(params, x_t, t, m_key).astype(jnp.float32)
  score = parameterization.from_eps("score", parameterization.to_eps(prediction, out, x_t, alpha, std), x_t, alpha, std)
  # ||std * score + z||^2 = std^2 ||score + z / std||^2, stable at small std.
  sq = _mean_except_batch((_b(std, x0) * score + z) ** 2)
  weight = 1.0 if weighting == "sigma2" else sde.diffusion(t) ** 2 / std**2
  loss = jnp.mean(weight * sq)
  return loss, {"loss": loss, "eps_mse": jnp.mean(sq)}

