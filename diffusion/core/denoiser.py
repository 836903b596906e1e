"""The denoiser contract: a network plus its parameterization, read as x0 / eps / score.

    den = Denoiser(net, prediction="eps", process=sched)          # or an SDE
    den.eps(x, t), den.x0(x, t), den.score(x, t)                  # t in the process's time
    samplers.ddim(den.eps_fn(), sched, rng, shape)                # the public samplers' callables
    samplers.euler_maruyama(den.score_fn(sde), sde, rng, shape)   # any process it can run on

``net(x [B, ...], c_noise [B], cond) -> out [B, ...]`` is any callable (a
Flax apply with its params closed over, or a closed form in tests); ``out`` is
read as ``prediction`` ("eps", "x0", "v" or "score") and converted by
`parameterization`. The denoiser owns what the network is given as its noise
input ``c_noise``: the process's own time (``noise_input="time"``: integer
steps of a discrete schedule, float t of an SDE) or the noise level
``sigma(t)`` (``"sigma"``; for networks that embed ``log sigma``, e.g.
NCSN++'s Fourier features). ``cond`` is a pytree handed to the network
unchanged (class labels now, text embeddings later) or None; guidance is a
denoiser that wraps a denoiser.

Nothing here imports Flax.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from diffusion.core import parameterization, processes, schedules

NOISE_INPUTS = ("time", "sigma")
Net = Callable[[jax.Array, jax.Array, Any], jax.Array]

_b = schedules.broadcast_to


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """A network of a parameterization under a noise process (module docstring).

  Attributes:
    net: ``net(x, c_noise, cond) -> out``.
    prediction: what ``out`` is: one of `parameterization.KINDS`.
    process: the process the network was trained on (a `DiscreteSchedule` or
      an SDE); ``t`` below is on its time axis.
    noise_input: "time" or "sigma" (module docstring).
    cond: the conditioning pytree given to every call, or None (`bind`).
  """

  net: Net
  prediction: str
  process: Any
  noise_input: str = "time"
  cond: Any = None

  def __post_init__(self):
    parameterization._check_kind(self.prediction)  # pylint: disable=protected-access
    if self.noise_input not in NOISE_INPUTS:
      raise ValueError(f"unknown noise_input {self.noise_input!r}; valid: {list(NOISE_INPUTS)}")

  def bind(self, cond) -> "Denoiser":
    """The same denoiser with ``cond`` as its conditioning."""
    return dataclasses.replace(self, cond=cond)

  def coeffs(self, t: jax.Array):
    """``(alpha, sigma)`` of the process at ``t [B]``; each ``[B]``."""
    return self.process.alpha(t), self.process.sigma(t)

  def c_noise(self, t: jax.Array) -> jax.Array:
    """What the network is given for ``t``: ``t`` itself or ``sigma(t)``."""
    return t if self.noise_input == "time" else self.process.sigma(t)

  def output(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """The raw network output at ``(x, t)``."""
    return self.net(x, self.c_noise(t), self.cond)

  def eps(self, x: jax.Array, t: jax.Array) -> jax.Array:
    alpha, sigma = self.coeffs(t)
    return parameterization.to_eps(self.prediction, self.output(x, t), x, alpha, sigma)

  def x0(self, x: jax.Array, t: jax.Array) -> jax.Array:
    alpha, sigma = self.coeffs(t)
    return parameterization.from_eps("x0", self.eps(x, t), x, alpha, sigma)

  def score(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """``grad log p_t(x)`` estimate; a "score" network's output is returned as it is."""
    if self.prediction == "score":
      return self.output(x, t)
    return -self.eps(x, t) / _b(self.coeffs(t)[1], x)

  def eps_fn(self) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``eps_fn(x, t)`` for the discrete samplers (``t`` int32 ``[B]``)."""
    return self.eps

  def score_fn(self, sde=None) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``score_fn(x, t float32 [B])`` for the continuous samplers running on `sde`.

    For a continuous-time model `sde` is its own process (the default). A
    discrete model on the SDE its schedule is a grid over
    (`processes.sde_of`) is asked at the nearest step ``round(t T - 1)``, and
    its score is ``-eps / sqrt(1 - alpha_bar)`` of that step.
    """
    if not processes.is_discrete(self.process):
      return self.score
    sched = self.process

    def score_fn(x, t):
      t_int = sched.step_at(t)
      return -self.eps(x, t_int) / _b(sched.sigma(t_int), x)

    return score_fn
