"""Conversions between the eps, x0, v and score views of a denoiser.

Every Gaussian perturbation used here has the form ``x_t = alpha x0 + sigma
eps`` with ``eps ~ N(0, I)``: discrete schedules have ``alpha = sqrt(alpha_bar_t)``,
``sigma = sqrt(1 - alpha_bar_t)``; an SDE has ``(alpha, sigma) =
sde.marginal_coeffs(t)`` (VE: ``alpha = 1``). With those two numbers

    x0    = (x_t - sigma eps) / alpha
    eps   = (x_t - alpha x0) / sigma
    score = grad log p(x_t | x0) = -eps / sigma
    v     = alpha eps - sigma x0          (Salimans & Ho 2022)
    x0    = (alpha x_t - sigma v) / (alpha^2 + sigma^2)
    eps   = (sigma x_t + alpha v) / (alpha^2 + sigma^2)

so any network output can feed any sampler. ``alpha`` and ``sigma`` are
``[B]`` or broadcastable to ``x_t`` (``[B, 1, ...]``).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion.core import schedules

KINDS = ("eps", "x0", "v", "score")

_b = schedules.broadcast_to


def _check_kind(kind: str, name: str = "parameterization") -> None:
  if kind not in KINDS:
    raise ValueError(f"unknown {name} {kind!r}; valid: {list(KINDS)}")


def to_eps(kind: str, out: jax.Array, x_t: jax.Array, alpha, sigma) -> jax.Array:
  """The eps prediction implied by a network output of kind ``kind``."""
  _check_kind(kind)
  alpha, sigma = _b(alpha, x_t), _b(sigma, x_t)
  if kind == "eps":
    return out
  if kind == "x0":
    return (x_t - alpha * out) / sigma
  if kind == "v":
    return (sigma * x_t + alpha * out) / (alpha**2 + sigma**2)
  return -sigma * out  # score


def from_eps(kind: str, eps: jax.Array, x_t: jax.Array, alpha, sigma) -> jax.Array:
  """Converts an eps prediction to ``kind``; inverse of `to_eps`."""
  _check_kind(kind)
  alpha, sigma = _b(alpha, x_t), _b(sigma, x_t)
  if kind == "eps":
    return eps
  x0 = (x_t - sigma * eps) / alpha
  if kind == "x0":
    return x0
  if kind == "v":
    return alpha * eps - sigma * x0
  return -eps / sigma  # score


def convert(out: jax.Array, x_t: jax.Array, alpha, sigma, *, src: str, dst: str) -> jax.Array:
  """Converts a prediction of kind ``src`` into kind ``dst``."""
  _check_kind(src, "src")
  _check_kind(dst, "dst")
  if src == dst:
    return out
  return from_eps(dst, to_eps(src, out, x_t, alpha, sigma), x_t, alpha, sigma)


def discrete_coeffs(sched: schedules.DiscreteSchedule, t: jax.Array):
  """``(alpha, sigma)``, each ``[B]``, of a discrete schedule at integer ``t [B]``."""
  ab = sched.alpha_bars[t]
  return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)


def eps_fn_from_model(
    model_fn: Callable, kind: str, sched: schedules.DiscreteSchedule
) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Wraps ``model_fn(x_t, t_int) -> prediction of kind`` into ``eps_fn(x, t_int)``."""
  _check_kind(kind)

  def eps_fn(x, t):
    alpha, sigma = discrete_coeffs(sched, t)
    return to_eps(kind, model_fn(x, t), x, alpha, sigma)

  return eps_fn


def score_fn_from_model(model_fn: Callable, kind: str, sde) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Wraps ``model_fn(x_t, t_float) -> prediction of kind`` into ``score_fn(x, t)``."""
  _check_kind(kind)

  def score_fn(x, t):
    alpha, sigma = sde.marginal_coeffs(t)
    out = model_fn(x, t)
    if kind == "score":
      return out
    return -to_eps(kind, out, x, alpha, sigma) / _b(sigma, x)

  return score_fn


def score_fn_from_eps_fn(eps_fn: Callable, sched: schedules.DiscreteSchedule) -> Callable:
  """Lets a discrete-time eps model drive the continuous-time (VP) samplers.

  Continuous ``t`` maps to the nearest discrete step ``round(t T - 1)``
  (``alpha_bar_t ~ alpha((t+1)/T)^2`` for the matching `VPSDE`), and the score
  is ``-eps / sqrt(1 - alpha_bar)`` of that step.
  """
  T = sched.num_steps

  def score_fn(x, t):
    t_int = jnp.clip(jnp.round(t * T - 1.0), 0, T - 1).astype(jnp.int32)
    return -eps_fn(x, t_int) / _b(jnp.sqrt(1.0 - sched.alpha_bars[t_int]), x)

  return score_fn
