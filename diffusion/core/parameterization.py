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

so any network output can feed any sampler. `diffusion.core.denoiser` wraps a
network with these conversions. ``alpha`` and ``sigma`` are
``[B]`` or broadcastable to ``x_t`` (``[B, 1, ...]``).
"""
from __future__ import annotations

import jax

from diffusion.core import checks, schedules

KINDS = ("eps", "x0", "v", "score")

_b = schedules.broadcast_to


def _check_kind(kind: str, name: str = "parameterization") -> None:
  checks.choice(kind, KINDS, name)


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


def target(kind: str, x0: jax.Array, eps: jax.Array, alpha, sigma) -> jax.Array:
  """The training target of kind ``kind`` for clean ``x0`` and its noise ``eps``
  (``x_t = alpha x0 + sigma eps``): eps, x0, ``v = alpha eps - sigma x0``, or the
  conditional score ``-eps / sigma``."""
  _check_kind(kind)
  alpha, sigma = _b(alpha, x0), _b(sigma, x0)
  return {"eps": lambda: eps, "x0": lambda: x0, "v": lambda: alpha * eps - sigma * x0,
          "score": lambda: -eps / sigma}[kind]()


def discrete_coeffs(sched: schedules.DiscreteSchedule, t: jax.Array):
  """``(alpha, sigma)``, each ``[B]``, of a discrete schedule at integer ``t [B]``."""
  return sched.alpha(t), sched.sigma(t)
