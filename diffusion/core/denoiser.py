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

Prediction "F" is EDM's preconditioned network (Karras et al. 2022, Table 1):
on ``x~ = x / alpha`` at noise level ``sigma~ = sigma / alpha``,
``D = c_skip x~ + c_out F(c_in x~, c_noise)`` with ``c_skip = sd^2 / (sigma~^2 +
sd^2)``, ``c_out = sigma~ sd / sqrt(sigma~^2 + sd^2)``, ``c_in = 1 / sqrt(sigma~^2 +
sd^2)`` (``sd = sigma_data``); `edm.preconditioning`. Its noise input
``"edm"`` is ``c_noise = log(sigma~) / 4``; VDM's network is given ``"gamma"``,
``gamma(t) = -log SNR(t)`` (Kingma et al. 2021).

`sigma_fn` is the sigma-space view ``D(x~, sigma~ [B]) -> x0`` that the samplers
of `samplers.sigma` take, for a model of any process (`processes.time_at_sigma`).

Nothing here imports Flax.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

import jax.numpy as jnp

from diffusion.core import edm, parameterization, processes, schedules

NOISE_INPUTS = ("time", "sigma", "edm", "gamma")
PREDICTIONS = parameterization.KINDS + ("F",)
Net = Callable[[jax.Array, jax.Array, Any], jax.Array]

_b = schedules.broadcast_to


class Views:
  """The samplers' callables of anything with ``process``, ``eps``, ``x0`` and ``score``
  (a `Denoiser`, or a guided denoiser of `core.guidance` that wraps one)."""

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

  def sigma_fn(self) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``D(x~, sigma~ float32 [B]) -> x0`` for the samplers of `samplers.sigma`.

    The network is asked at ``t = processes.time_at_sigma(process, sigma~)`` on
    ``x = alpha(t) x~``. A continuous process inverts exactly, so this is
    `x0`. A discrete schedule is asked at its nearest step, with ``alpha = 1 /
    sqrt(1 + sigma~^2)`` (exact for VP) and ``x0 = x~ - sigma~ eps``
    (k-diffusion's discrete-model wrapper): on the model's own noise levels (the
    "time" grid) this is exact too.
    """
    proc = self.process
    discrete = processes.is_discrete(proc)

    def denoise(x, s):
      t = processes.time_at_sigma(proc, s)
      if discrete:
        return x - _b(s, x) * self.eps(_b(jax.lax.rsqrt(1.0 + s**2), x) * x, t)
      return self.x0(_b(proc.alpha(t), x) * x, t)

    return denoise



@dataclasses.dataclass(frozen=True)
class Denoiser(Views):
  """A network of a parameterization under a noise process (module docstring).

  Attributes:
    net: ``net(x, c_noise, cond) -> out``.
    prediction: what ``out`` is: one of `parameterization.KINDS`, or "F" (EDM's
      preconditioned network; module docstring).
    process: the process the network was trained on (a `DiscreteSchedule` or
      an SDE); ``t`` below is on its time axis.
    noise_input: "time", "sigma", "edm" or "gamma" (VDM's ``-log SNR(t)``; module docstring).
    cond: the conditioning pytree given to every call, or None (`bind`).
    sigma_data: EDM's data standard deviation (prediction "F" only).
  """

  net: Net
  prediction: str
  process: Any
  noise_input: str = "time"
  cond: Any = None
  sigma_data: float = 0.5

  def __post_init__(self):
    if self.prediction != "F":
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
    """What the network is given for ``t``: ``t`` itself, ``sigma(t)``, or ``log(sigma~) / 4``."""
    if self.noise_input == "time":
      return t
    if self.noise_input == "sigma":
      return self.process.sigma(t)
    if self.noise_input == "gamma":  # VDM's network input, gamma(t) = -log SNR(t).
      return -self.process.log_snr(t)
    return 0.25 * jnp.log(processes.sigma_tilde(self.process, t))

  def output(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """The raw network output at ``(x, t)`` (for "F": of the scaled input ``c_in x~``)."""
    if self.prediction == "F":
      alpha, sigma = self.coeffs(t)
      _, _, c_in = edm.preconditioning(sigma / alpha, self.sigma_data)
      x = _b(c_in / alpha, x) * x
    return self.net(x, self.c_noise(t), self.cond)

  def eps(self, x: jax.Array, t: jax.Array) -> jax.Array:
    alpha, sigma = self.coeffs(t)
    if self.prediction == "F":
      return parameterization.to_eps("x0", self.x0(x, t), x, alpha, sigma)
    return parameterization.to_eps(self.prediction, self.output(x, t), x, alpha, sigma)

  def x0(self, x: jax.Array, t: jax.Array) -> jax.Array:
    alpha, sigma = self.coeffs(t)
    if self.prediction == "F":
      c_skip, c_out, _ = edm.preconditioning(sigma / alpha, self.sigma_data)
      return _b(c_skip / alpha, x) * x + _b(c_out, x) * self.output(x, t)
    return parameterization.from_eps("x0", self.eps(x, t), x, alpha, sigma)

  def score(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """``grad log p_t(x)`` estimate; a "score" network's output is returned as it is."""
    if self.prediction == "score":
      return self.output(x, t)
    return -self.eps(x, t) / _b(self.coeffs(t)[1], x)
