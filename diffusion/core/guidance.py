"""Guidance: denoisers that wrap a denoiser, so that every sampler guides.

Classifier-free guidance (Ho & Salimans 2022), the convention of this package:

    eps~(x, t) = eps_u(x, t) + w (eps_c(x, t) - eps_u(x, t))

with ``eps_c`` the model given the condition and ``eps_u`` the model given the
null condition (the null label, or the empty prompt). ``w = 1`` is the plain
conditional model, ``w = 0`` the unconditional one, ``w > 1`` guides. (Ho &
Salimans write ``(1 + w') eps_c - w' eps_u``: their ``w'`` is this ``w - 1``.)
x0, the score and every network parameterization are affine in eps at fixed
``(x, t)`` with coefficients that sum to one, so the same weights combine the
x0 and score estimates identically; the samplers read whichever they use
(`Views`). Both halves are one batched network call on ``[x; x]`` with
``[cond; null]``: a guided step costs one call on twice the batch, not two
calls. ``w == 1`` without an interval skips the unconditional half.

Guidance interval (Kynkaenniemi et al. 2024): ``interval = (lo, hi)`` applies
``w`` only where the noise level ``sigma~(t) = sigma / alpha`` lies in ``(lo,
hi]``; elsewhere the conditional model (weight 1) is used.

Classifier guidance (Dhariwal & Nichol 2021, Alg. 2): with a classifier
``log p(y | x_t, t)`` trained on noised images,

    score~ = score + s grad_x log p(y | x_t, t),   i.e.   eps~ = eps - s sigma(t) grad_x log p

with gradient scale ``s``; the classifier is differentiated through, once per
denoiser evaluation.

Nothing here imports Flax.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffusion.core import parameterization, processes, schedules
from diffusion.core.denoiser import Denoiser, Views

_b = schedules.broadcast_to


def _batch_t(t, x):
  t = jnp.asarray(t)
  return jnp.broadcast_to(t, (x.shape[0],)) if t.ndim == 0 else t


def concat_cond(cond, null_cond):
  """``[cond; null]`` along the batch axis of every leaf (the two halves of one call)."""
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), cond, null_cond)


def check_interval(interval) -> tuple[float, float] | None:
  """``(lo, hi)`` with ``0 <= lo < hi`` (floats), or None; ValueError otherwise."""
  if interval is None:
    return None
  try:
    lo, hi = (float(v) for v in interval)
  except (TypeError, ValueError):
    raise ValueError(f"guidance interval {interval!r} must be two noise levels (lo, hi)") from None
  if not 0.0 <= lo < hi:
    raise ValueError(f"guidance interval ({lo}, {hi}) must have 0 <= lo < hi (noise levels "
                     "sigma / alpha)")
  return lo, hi


class Wrapper(Views):
  """What a guided denoiser takes from the denoiser ``base`` it wraps (a dataclass field
  of the subclass): its process and coefficients; `bind` rebinds the base's condition."""

  @property
  def process(self):
    return self.base.process

  def coeffs(self, t):
    return self.base.coeffs(t)

  def bind(self, cond):
    return dataclasses.replace(self, base=self.base.bind(cond))


@dataclasses.dataclass(frozen=True)
class ClassifierFree(Wrapper):
  """Classifier-free guidance of `base` (module docstring).

  Attributes:
    base: the denoiser; its ``cond`` is the condition (labels ``[B]``, text
      embeddings ``{"context": [B, L, D], "mask": [B, L]}``, ...).
    null_cond: the null condition, a pytree of the structure and shapes of
      ``base.cond`` (the null label repeated, the empty prompt's embedding).
    scale: the guidance weight w (1 = conditional, 0 = unconditional).
    interval: None, or the noise levels ``(lo, hi]`` of ``sigma~`` where w applies.
  """

  base: Denoiser
  null_cond: Any
  scale: float = 1.0
  interval: tuple[float, float] | None = None

  def __post_init__(self):
    object.__setattr__(self, "interval", check_interval(self.interval))
    if self.base.cond is None:
      raise ValueError("classifier-free guidance needs a conditional denoiser (base.cond is None)")
    a, b = jax.tree.structure(self.base.cond), jax.tree.structure(self.null_cond)
    if a != b:
      raise ValueError(f"null_cond's structure {b} differs from the condition's {a}")

  @property
  def trivial(self) -> bool:
    """Whether this is the conditional model itself (w = 1, no interval)."""
    return self.scale == 1.0 and self.interval is None

  def weight(self, t, x) -> jax.Array:
    """w at ``t [B]`` as ``[B]``: `scale`, or 1 outside the interval."""
    w = jnp.full((x.shape[0],), self.scale, jnp.float32)
    if self.interval is None:
      return w
    s = processes.sigma_tilde(self.process, t)
    lo, hi = self.interval
    return jnp.where((s > lo) & (s <= hi), w, 1.0)

  def _combine(self, method: str, x, t):
    base = self.base
    if self.trivial:
      return getattr(base, method)(x, t)
    t = _batch_t(t, x)
    both = getattr(base.bind(concat_cond(base.cond, self.null_cond)), method)(
        jnp.concatenate([x, x]), jnp.concatenate([t, t]))
    out_c, out_u = jnp.split(both, 2)
    return out_u + _b(self.weight(t, x), x) * (out_c - out_u)

  def eps(self, x, t):
    return self._combine("eps", x, t)

  def x0(self, x, t):
    return self._combine("x0", x, t)

  def score(self, x, t):
    return self._combine("score", x, t)


@dataclasses.dataclass(frozen=True)
class ClassifierGuided(Wrapper):
  """Classifier guidance of `base` (module docstring).

  Attributes:
    base: the denoiser (unconditional, or conditional: guidance adds to it).
    log_prob: ``log_prob(x, t, labels) -> [B]``, ``log p(labels | x_t, t)`` of a
      classifier trained on noised images, with ``t`` on ``base.process``'s time axis.
    labels: int ``[B]``, the classes to guide towards.
    scale: the gradient scale s.
  """

  base: Denoiser
  log_prob: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
  labels: jax.Array
  scale: float = 1.0

  def grad(self, x, t):
    """``grad_x log p(labels | x, t)``, ``[B, ...]``."""
    t = _batch_t(t, x)
    return jax.grad(lambda z: jnp.sum(self.log_prob(z, t, self.labels)))(x)

  def eps(self, x, t):
    sigma = self.coeffs(_batch_t(t, x))[1]
    return self.base.eps(x, t) - self.scale * _b(sigma, x) * self.grad(x, t)

  def x0(self, x, t):
    alpha, sigma = self.coeffs(_batch_t(t, x))
    return parameterization.from_eps("x0", self.eps(x, t), x, alpha, sigma)

  def score(self, x, t):
    return self.base.score(x, t) + self.scale * self.grad(x, t)
