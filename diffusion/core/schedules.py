"""Noise schedules: discrete beta tables, the forward process and its posterior.

Conventions (see DESIGN.md): discrete timesteps are integers ``0..T-1`` with
``0`` the least noisy; ``alpha_bars[t] = prod_{s<=t} (1 - betas[s])`` is the
signal fraction of ``x_t``, so ``x_t = sqrt(alpha_bars[t]) x_0 + sqrt(1 -
alpha_bars[t]) eps``. Continuous time runs over ``[0, 1]`` (``1`` = prior) and
is described by ``alpha(t)`` (mean coefficient), ``sigma(t)`` (std) and
``log_snr(t) = log(alpha^2 / sigma^2)``.

Everything here is a pure array function; no Flax, no hidden state.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.core import checks

# --------------------------------------------------------------------------
# Discrete schedules.
# --------------------------------------------------------------------------


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["betas", "alpha_bars"],
    meta_fields=["kind"],
)
@dataclasses.dataclass(frozen=True)
class DiscreteSchedule:
  """A discrete noise schedule; a pytree of float32 ``[T]`` tables.

  Build it with `get` or `from_betas` (which computes ``alpha_bars`` in
  float64 before rounding, so long products stay accurate). ``kind`` is the
  name it was built by ("linear", "cosine", ...; "table" for `from_betas`):
  `diffusion.core.processes` reads it to tell which schedules are a grid over
  an SDE (the continuous samplers can run those).

  The noise-process contract on integer steps ``t [B]`` (0 the least noisy):
  `alpha`, `sigma` and `log_snr` with ``x_t = alpha x_0 + sigma eps``.
  """

  betas: jax.Array
  alpha_bars: jax.Array
  kind: str = "table"

  def alpha(self, t: jax.Array) -> jax.Array:
    """``sqrt(alpha_bar_t)``; same shape as the integer steps ``t``."""
    return jnp.sqrt(self.alpha_bars[t])

  def sigma(self, t: jax.Array) -> jax.Array:
    """``sqrt(1 - alpha_bar_t)``; same shape as ``t``."""
    return jnp.sqrt(1.0 - self.alpha_bars[t])

  def log_snr(self, t: jax.Array) -> jax.Array:
    """``log(alpha_bar_t / (1 - alpha_bar_t))``, with the cancellation-free ``1 - alpha_bar``."""
    return jnp.log(self.alpha_bars[t]) - jnp.log(self.one_minus_alpha_bars[t])

  def grid_times(self) -> jax.Array:
    """Where the steps sit on the continuous axis: step ``i`` at ``t = (i + 1) / T``; ``[T]``."""
    return (jnp.arange(self.num_steps, dtype=jnp.float32) + 1.0) / self.num_steps

  def step_at(self, t: jax.Array) -> jax.Array:
    """The nearest step to continuous times ``t`` (the inverse of `grid_times`):
    ``round(t T - 1)`` clipped to ``0..T-1``, int32, same shape as ``t``."""
    T = self.num_steps
    return jnp.clip(jnp.round(t * T - 1.0), 0, T - 1).astype(jnp.int32)

  @property
  def num_steps(self) -> int:
    return self.betas.shape[0]

  @property
  def alphas(self) -> jax.Array:
    return 1.0 - self.betas

  @property
  def alpha_bars_prev(self) -> jax.Array:
    """``alpha_bar_{t-1}`` with ``alpha_bar_{-1} = 1``; float32 ``[T]``."""
    return jnp.concatenate([jnp.ones((1,), self.alpha_bars.dtype), self.alpha_bars[:-1]])

  @property
  def one_minus_alpha_bars(self) -> jax.Array:
    """``1 - alpha_bar_t`` as ``(1 - alpha_bar_{t-1}) + alpha_bar_{t-1} beta_t``.

    Algebraically equal to ``1 - alpha_bars``, but without its float32
    cancellation at small t (at ``t = 0`` it is exactly ``beta_0``).
    """
    ab_prev = self.alpha_bars_prev
    return (1.0 - ab_prev) + ab_prev * self.betas

  @property
  def posterior_variances(self) -> jax.Array:
    """``beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)``; ``[T]``."""
    return self.betas * (1.0 - self.alpha_bars_prev) / self.one_minus_alpha_bars


# Reverse-step variances of DDPM: beta_t, or the posterior's beta_tilde_t.
VARIANCES = ("beta", "beta_tilde")


def variance_table(sched: DiscreteSchedule, variance: str) -> jax.Array:
  """The ``[T]`` table of reverse-step variances named `variance` (`VARIANCES`)."""
  checks.choice(variance, VARIANCES, "variance")
  return sched.betas if variance == "beta" else sched.posterior_variances


def from_betas(betas, kind: str = "table") -> DiscreteSchedule:
  """Schedule from a beta table (float64 cumulative product, stored float32)."""
  b = np.asarray(betas, dtype=np.float64)
  if b.ndim != 1 or b.size < 1:
    raise ValueError(f"betas must be a non-empty 1-D array, got shape {b.shape}")
  if not np.all((b > 0) & (b < 1)):
    raise ValueError(f"betas must lie in (0, 1); got min {b.min()}, max {b.max()}")
  alpha_bars = np.cumprod(1.0 - b)
  return DiscreteSchedule(betas=jnp.asarray(b, jnp.float32),
                          alpha_bars=jnp.asarray(alpha_bars, jnp.float32), kind=kind)


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """DDPM (Ho et al. 2020): betas linear from 1e-4 to 0.02 (T = 1000)."""
  return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def quadratic_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """Betas whose square roots are linear between the end points."""
  return np.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=np.float64) ** 2


def sigmoid_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
  """Betas following a logistic curve over [-6, 6] between the end points."""
  s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, num_steps, dtype=np.float64)))
  return beta_start + (beta_end - beta_start) * s


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal (2021): alpha_bar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2).

  ``beta_t = 1 - alpha_bar(t+1)/alpha_bar(t)``, clipped at ``max_beta``.
  """
  grid = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  f = np.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
  return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


SCHEDULES: dict[str, Callable[..., np.ndarray]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quadratic": quadratic_betas,
    "sigmoid": sigmoid_betas,
}


def get(name: str, num_steps: int = 1000, **kwargs) -> DiscreteSchedule:
  """Discrete schedule by name: one of `SCHEDULES` ("linear", "cosine", ...)."""
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; valid schedules: {sorted(SCHEDULES)}")
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  try:
    betas = SCHEDULES[name](int(num_steps), **kwargs)
  except TypeError as e:
    raise ValueError(f"bad keyword for schedule {name!r}: {e}") from None
  return from_betas(betas, kind=name)


# --------------------------------------------------------------------------
# Forward process and posterior.
# --------------------------------------------------------------------------




def broadcast_to(values: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes per-example values ``[B]`` to ``[B, 1, ..., 1]`` for ``x`` ``[B, ...]``."""
  return jnp.reshape(values, values.shape + (1,) * (x.ndim - values.ndim))


def signal_noise(sched: DiscreteSchedule, t: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))`` shaped ``[B, 1, ..]`` for ``x``."""
  checks.check_t(x, t)
  ab = broadcast_to(sched.alpha_bars[t], x)
  return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)


def q_sample(sched: DiscreteSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Samples ``q(x_t | x_0)`` in closed form.

  Args:
    sched: the schedule.
    x0: clean data ``[B, ...]``.
    t: int32 ``[B]`` in ``[0, T)``.
    noise: standard normal, same shape as ``x0``.
  Returns:
    ``x_t`` ``[B, ...]``.
  """
  if noise.shape != x0.shape:
    raise ValueError(f"noise shape {noise.shape} must equal x0 shape {x0.shape}")
  a, s = signal_noise(sched, t, x0)
  return a * x0 + s * noise


def q_step(sched: DiscreteSchedule, x_prev: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """One forward step ``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)``."""
  checks.check_t(x_prev, t)
  b = broadcast_to(sched.betas[t], x_prev)
  return jnp.sqrt(1.0 - b) * x_prev + jnp.sqrt(b) * noise


def q_posterior(sched: DiscreteSchedule, x0: jax.Array, x_t: jax.Array, t: jax.Array):
  """Posterior ``q(x_{t-1} | x_t, x_0)``.

  Returns ``(mean, variance, log_variance)``; ``mean`` is ``[B, ...]``, the
  other two ``[B, 1, ...]``. At ``t = 0`` the posterior is a point mass
  (variance 0); ``log_variance`` there is clipped to ``log(beta_tilde_1)`` as
  in DDPM so it stays finite (it is only used where the variance is nonzero).
  """
  if x0.shape != x_t.shape:
    raise ValueError(f"x0 shape {x0.shape} must equal x_t shape {x_t.shape}")
  checks.check_t(x_t, t)
  one_minus_ab = broadcast_to(sched.one_minus_alpha_bars[t], x_t)
  ab_prev = broadcast_to(sched.alpha_bars_prev[t], x_t)
  beta = broadcast_to(sched.betas[t], x_t)
  coef_x0 = beta * jnp.sqrt(ab_prev) / one_minus_ab
  coef_xt = (1.0 - ab_prev) * jnp.sqrt(1.0 - beta) / one_minus_ab
  mean = coef_x0 * x0 + coef_xt * x_t
  variances = sched.posterior_variances
  variance = broadcast_to(variances[t], x_t)
  floor = variances[1] if sched.num_steps > 1 else sched.betas[0]
  log_variance = broadcast_to(jnp.log(jnp.maximum(variances, floor))[t], x_t)
  return mean, variance, log_variance


# --------------------------------------------------------------------------
# Continuous-time views (VP): alpha(t)^2 + sigma(t)^2 = 1.
# --------------------------------------------------------------------------


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["beta_min", "beta_max"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class LinearVP:
  """Continuous limit of DDPM's linear schedule: beta(t) = beta_min + t (beta_max - beta_min).

  With T discrete steps, ``beta_min = T * 1e-4`` and ``beta_max = T * 0.02``
  (0.1 and 20 for T = 1000, as in score_sde) give ``alpha_bar_t ~ alpha((t+1)/T)^2``.
  """

  beta_min: float = 0.1
  beta_max: float = 20.0

  def beta(self, t):
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_alpha(self, t):
    """``log alpha(t) = -1/2 int_0^t beta(s) ds``."""
    return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  def alpha(self, t):
    return jnp.exp(self.log_alpha(t))

  def sigma(self, t):
    return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

  def log_snr(self, t):
    return -jnp.log(jnp.expm1(-2.0 * self.log_alpha(t)))


@functools.partial(jax.tree_util.register_dataclass, data_fields=["s"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class CosineVP:
  """Continuous cosine schedule: alpha(t) = cos((t + s)/(1 + s) pi/2) / cos(s/(1 + s) pi/2).

  ``alpha(1) = 0``, so ``log_snr(1) = -inf``; samplers stop short of 1 or clip.
  """

  s: float = 0.008

  def alpha(self, t):
    return jnp.cos((t + self.s) / (1 + self.s) * jnp.pi / 2) / math.cos(
        self.s / (1 + self.s) * math.pi / 2
    )

  def sigma(self, t):
    return jnp.sqrt(jnp.maximum(1.0 - self.alpha(t) ** 2, 0.0))

  def log_snr(self, t):
    a2 = self.alpha(t) ** 2
    return jnp.log(a2) - jnp.log1p(-a2)


CONTINUOUS = {"linear": LinearVP, "cosine": CosineVP}


def get_continuous(name: str, **kwargs):
  """Continuous VP schedule by name: "linear" or "cosine"."""
  if name not in CONTINUOUS:
    raise ValueError(f"unknown continuous schedule {name!r}; valid: {sorted(CONTINUOUS)}")
  return CONTINUOUS[name](**kwargs)
