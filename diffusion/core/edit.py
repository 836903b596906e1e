"""Editing algorithms on a trained denoiser: inpainting (replacement, RePaint).

Inpainting completes an image ``x_known`` where ``mask == 1`` is kept and ``mask
== 0`` is generated.

**Replacement** (Song et al. 2021, score-SDE's imputation; also Sohl-Dickstein et
al. 2015): at every step the known pixels of the sampler's state are replaced by
a fresh forward sample ``alpha(t) x_known + sigma(t) n`` of the same noise level.
Here that replacement is done on the denoiser's input (`Replacement`, a
denoiser that wraps a denoiser, like guidance), and the known pixels are pasted
into the result at the end (`paste`). Every sampler of this package updates its
state elementwise from ``(x_t, D(x_t))``, so the generated pixels follow exactly
the replacement method's path while the state's own known pixels are never read
(they are pasted over): one wrapper gives the method to every sampler, in pixel or
latent space, with or without guidance. Its known bias: the generated pixels
are conditioned on the known ones only through the network's view of noised
copies, never on their exact values, so they under-condition (for a correlated
Gaussian, the completion's mean regresses less than the exact conditional's;
`tests/test_edit.py` gives the closed form).

**RePaint** (Lugmayr et al. 2022): on a discrete schedule, ancestral DDPM steps
with the known pixels replaced after every step, and *resampling*: every
``jump_length`` levels, the state is diffused forward again by ``jump_length``
levels (one draw of ``q(x_{t+j} | x_t)``) and the levels are denoised once more,
``jump_n_sample - 1`` times, so that the generated and the known pixels
harmonise. ``jump_n_sample = 1`` is the replacement method on DDPM. The network
is called about ``T * jump_n_sample`` times.

Nothing here imports Flax.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.core import grids, processes, schedules
from diffusion.core.denoiser import Denoiser
from diffusion.core.guidance import Wrapper
from diffusion.core.samplers.base import x0_from_eps

_b = schedules.broadcast_to


def check_mask(mask, x_known) -> jax.Array:
  """`mask` as float32 broadcast to `x_known`'s shape; ValueError unless its values are
  0 or 1 and its shape broadcasts (``[H, W]``, ``[H, W, 1]``, ``[B, H, W, C]``, ...)."""
  m = np.asarray(mask, np.float32)
  if not np.all((m == 0) | (m == 1)):
    raise ValueError("the inpainting mask must hold only 0 (generate) and 1 (keep)")
  shape = tuple(np.shape(x_known))
  try:
    if m.ndim == 2 and len(shape) == 4:  # [H, W]: every image, every channel.
      m = m[None, :, :, None]
    m = np.broadcast_to(m, shape)
  except ValueError:
    raise ValueError(f"the inpainting mask has shape {np.shape(mask)}, which does not fit "
                     f"the images' {shape}") from None
  return jnp.asarray(m)


def paste(x, x_known, mask):
  """``mask * x_known + (1 - mask) * x``: the known pixels put back."""
  return mask * x_known + (1.0 - mask) * x


def _fresh_noise(key, t, x):
  """Standard normal of `x`'s shape, a different draw for each time ``t [B]`` (its
  float32 bits folded into `key`), so that each step replaces with fresh noise."""
  t0 = jnp.asarray(t, jnp.float32).reshape(-1)[0]
  bits = jax.lax.bitcast_convert_type(t0, jnp.int32)
  return jax.random.normal(jax.random.fold_in(key, bits), x.shape, x.dtype)


@dataclasses.dataclass(frozen=True)
class Replacement(Wrapper):
  """The replacement method's denoiser (module docstring): `base` evaluated on
  ``x`` with its known pixels replaced by ``alpha(t) x_known + sigma(t) n``.

  Attributes:
    base: the denoiser (a `Denoiser` or a guided one).
    x_known: the images to complete, ``[B, ...]`` (the sampler's shape).
    mask: 1 where ``x_known`` is kept, 0 where it is generated, ``x_known``'s shape.
    key: the replacement noise's key (a fresh draw per time).
  """

  base: Denoiser
  x_known: jax.Array
  mask: jax.Array
  key: jax.Array

  def replaced(self, x, t):
    """``x`` with the known pixels of a forward sample at ``t``."""
    t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
    alpha, sigma = self.coeffs(t)
    noisy = _b(alpha, x) * self.x_known + _b(sigma, x) * _fresh_noise(self.key, t, x)
    return paste(x, noisy, self.mask)

  def eps(self, x, t):
    return self.base.eps(self.replaced(x, t), t)

  def x0(self, x, t):
    return self.base.x0(self.replaced(x, t), t)

  def score(self, x, t):
    return self.base.score(self.replaced(x, t), t)


def repaint_levels(num_steps: int, jump_length: int, jump_n_sample: int) -> np.ndarray:
  """The noise levels RePaint visits, ``[L]`` int32, from ``num_steps`` (the prior)
  to 0 (the clean image): level ``n`` is the state after ``n`` noising steps, i.e.
  at discrete time ``t = n - 1``. Going down one level is a reverse step; every
  time the descent reaches a positive multiple ``n`` of `jump_length` with ``n +
  jump_length <= num_steps``, it goes back up to ``n + jump_length`` (one forward
  jump) and descends again, ``jump_n_sample - 1`` times at each such ``n``."""
  for name, v in (("num_steps", num_steps), ("jump_length", jump_length),
                  ("jump_n_sample", jump_n_sample)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"RePaint {name}={v!r} must be an int >= 1")
  levels, n = [num_steps], num_steps
  redone = {}
  while n > 0:
    n -= 1
    levels.append(n)
    if (n > 0 and n % jump_length == 0 and n + jump_length <= num_steps
        and redone.get(n, 0) < jump_n_sample - 1):
      redone[n] = redone.get(n, 0) + 1
      n += jump_length
      levels.append(n)
  return np.asarray(levels, np.int32)


def repaint(eps_fn, sched: schedules.DiscreteSchedule, rng, x_known, mask, *,
            jump_length: int = 10, jump_n_sample: int = 10, clip_denoised=None,
            x_init=None, return_trajectory: bool = False):
  """RePaint (module docstring) on the discrete schedule `sched` with ``eps_fn(x, t
  int32 [B])``: completes `x_known` ``[B, ...]`` where `mask` is 0.

  Each reverse step from level ``n`` is DDPM's ancestral step at ``t = n - 1``
  (posterior mean of ``x0_hat``, variance beta~), after which the known pixels are a
  fresh ``q(x_{t-1} | x_known)`` draw (at level 0: ``x_known`` itself); each forward
  jump from level ``n`` to ``n + j`` draws ``q`` of the ``j`` steps at once,
  ``sqrt(ab_{n+j-1} / ab_{n-1}) x + sqrt(1 - ab_{n+j-1} / ab_{n-1}) z``. Returns
  the completed images (and with `return_trajectory` the state at every visited
  level, ``{"level", "x"}``)."""
  x_known = jnp.asarray(x_known, jnp.float32)
  mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), x_known.shape)
  levels = repaint_levels(sched.num_steps, jump_length, jump_n_sample)
  init_key, loop_key = jax.random.split(rng)
  x = (jax.random.normal(init_key, x_known.shape, jnp.float32) if x_init is None
       else jnp.asarray(x_init, jnp.float32))
  B = x.shape[0]
  ab = sched.alpha_bars
  ab_level = lambda n: jnp.where(n > 0, ab[jnp.maximum(n - 1, 0)], 1.0)  # Level 0: clean.

  def reverse(x, n, key):
    t = n - 1
    tb = jnp.full((B,), t, jnp.int32)
    x0 = x0_from_eps(x, eps_fn(x, tb), sched.alpha(tb), sched.sigma(tb), clip_denoised)
    mean, var, _ = schedules.q_posterior(sched, x0, x, tb)
    k1, k2 = jax.random.split(key)
    x = mean + jnp.where(t > 0, jnp.sqrt(var), 0.0) * jax.random.normal(k1, x.shape)
    a = ab_level(n - 1)
    known = jnp.sqrt(a) * x_known + jnp.sqrt(1.0 - a) * jax.random.normal(k2, x.shape)
    return paste(x, known, mask)

  def forward(x, n, dst, key):
    ratio = ab_level(dst) / ab_level(n)
    return jnp.sqrt(ratio) * x + jnp.sqrt(1.0 - ratio) * jax.random.normal(key, x.shape)

  def step(x, inputs):
    i, n, dst = inputs
    key = jax.random.fold_in(loop_key, i)
    x = jax.lax.cond(dst < n, lambda x: reverse(x, n, key), lambda x: forward(x, n, dst, key), x)
    return x, ({"level": dst, "x": x} if return_trajectory else None)

  idx = jnp.arange(len(levels) - 1, dtype=jnp.int32)
  x, traj = jax.lax.scan(step, x, (idx, jnp.asarray(levels[:-1]), jnp.asarray(levels[1:])))
  return (x, traj) if return_trajectory else x


# ----------------------------------------------------------------- SDEdit


def check_strength(strength) -> float:
  """`strength` as a float in (0, 1]; ValueError otherwise."""
  try:
    s = float(strength)
  except (TypeError, ValueError):
    raise ValueError(f"the SDEdit strength {strength!r} must be a number in (0, 1]") from None
  if not 0.0 < s <= 1.0:
    raise ValueError(f"the SDEdit strength {s} must lie in (0, 1] (0: the input itself, 1: "
                     "a fresh sample)")
  return s


def sdedit_steps(sched: schedules.DiscreteSchedule, strength) -> int:
  """The number k of the schedule's steps an edit of `strength` runs: ``round(s T)``,
  at least 1 (it starts at step ``k - 1``)."""
  return max(1, int(round(check_strength(strength) * sched.num_steps)))


def truncated(sched: schedules.DiscreteSchedule, k: int) -> schedules.DiscreteSchedule:
  """The schedule's first `k` steps (the same tables): a discrete sampler run on it
  starts at step ``k - 1`` and calls the network at the same integer steps as on the
  whole schedule. ``kind`` "table": it is no grid over an SDE."""
  if not 1 <= k <= sched.num_steps:
    raise ValueError(f"truncated: k={k} must lie in [1, {sched.num_steps}]")
  return schedules.DiscreteSchedule(sched.betas[:k], sched.alpha_bars[:k], "table")


def sdedit_start(sched: schedules.DiscreteSchedule, x_in, strength, key):
  """``(schedule, x_start)`` of SDEdit (Meng et al. 2022) at `strength` s on a discrete
  schedule: `truncated` to ``k = sdedit_steps(s)`` steps and the input noised to step
  ``k - 1``, ``x_start = sqrt(ab) x_in + sqrt(1 - ab) z``; any discrete sampler given
  ``(schedule, x_init=x_start)`` completes the edit. At s = 1 the start is the prior
  draw ``z`` itself (what the samplers start from), so the edit is the unconditional
  sampler from the same noise."""
  k = sdedit_steps(sched, strength)
  x_in = jnp.asarray(x_in, jnp.float32)
  z = jax.random.normal(key, x_in.shape, jnp.float32)
  if k == sched.num_steps:
    return sched, z
  t = jnp.full((x_in.shape[0],), k - 1, jnp.int32)
  return truncated(sched, k), schedules.q_sample(sched, x_in, t, z)


def sdedit_sigma_start(process, x_in, strength, key, num_steps: int, *, rho: float = 7.0,
                       eps: float = 1e-3):
  """``(sigmas, x_start)`` of SDEdit for the samplers of `samplers.sigma` on any process
  (x~ = x0 + sigma~ z): the noise level at the edit's time, ``sigma_s = sigma~(t_s)``
  with ``t_s = strength`` on a continuous process (the discrete schedule's step
  ``round(s T) - 1``), a Karras grid (rho 7) of `num_steps` steps from ``sigma_s`` down
  to the process's ``sigma_min`` and then 0, and ``x_start = x_in + sigma_s z``. Any
  sigma-space sampler given ``(sigmas, x_init=x_start)`` completes the edit."""
  s = check_strength(strength)
  if processes.is_discrete(process):
    t = jnp.asarray([sdedit_steps(process, s) - 1])
  else:
    t = jnp.asarray([s], jnp.float32)
  sigma_s = processes.sigma_tilde(process, t)[0]
  lo, _ = processes.sigma_limits(process, eps)
  sigmas = grids.karras_sigmas(num_steps, jnp.minimum(lo, 0.5 * sigma_s), sigma_s, rho)
  x_in = jnp.asarray(x_in, jnp.float32)
  return sigmas, x_in + sigma_s * jax.random.normal(key, x_in.shape, jnp.float32)


def strength_level(process, strength) -> float:
  """The noise level ``sigma~ = sigma / alpha`` an SDEdit edit of `strength` starts from:
  at time ``t = strength`` on a continuous process, at step ``round(s T) - 1`` of a
  discrete schedule (`sdedit_steps`)."""
  s = check_strength(strength)
  t = (jnp.asarray([sdedit_steps(process, s) - 1]) if processes.is_discrete(process)
       else jnp.asarray([s], jnp.float32))
  return float(processes.sigma_tilde(process, t)[0])


def start_at_level(process, domain: str, sigma_s: float, options):
  """How a sampler of `domain` on `process` carries a state ``y = x + sigma_s z`` (noise
  level `sigma_s` in the unit-alpha form of sigma space) down to the data: returns
  ``(process', options', kwargs, c)`` for ``record.run(den, process', rng, shape,
  options', x_init=c * y, **kwargs)``. Everything here is concrete (computed outside
  any trace, so the caller can jit over `y`). The same start serves SDEdit (``y = x_in +
  sigma_s z``) and denoising (``y`` the noisy input).

  - "discrete": the step ``k - 1`` whose ``sigma~`` is nearest (`processes.time_at_sigma`),
    the schedule `truncated` to k steps, ``c = sqrt(ab_{k-1})``;
  - "sigma": a Karras grid (rho 7) from `sigma_s` down (``kwargs["sigmas"]``), ``c = 1``;
  - "continuous" (SDE / ODE samplers): ``t_s`` with ``sigma~(t_s) = sigma_s``,
    ``c = alpha(t_s)`` and ``kwargs["t_start"] = t_s``.

  ``options.num_steps`` (where it has one) shrinks with the part of the run that is
  left (``k / T``; the part of ``[eps, 1]`` or of the log-sigma range), so an edit
  takes steps of the size the full run would."""
  sigma_s = float(sigma_s)
  if not sigma_s > 0:
    raise ValueError(f"the start noise level sigma={sigma_s} must be > 0")
  steps = getattr(options, "num_steps", None)
  scale = lambda frac: (options if steps is None else dataclasses.replace(
      options, num_steps=max(1, int(round(steps * min(1.0, max(frac, 0.0)))))))
  if domain == "discrete":
    k = int(processes.time_at_sigma(process, jnp.asarray([sigma_s]))[0]) + 1
    ab = float(process.alpha_bars[k - 1])
    return truncated(process, k), scale(k / process.num_steps), {}, float(np.sqrt(ab))
  eps = getattr(options, "eps", 1e-3)
  if domain == "sigma":
    lo, hi = (float(v) for v in processes.sigma_limits(process, eps))
    lo = min(lo, 0.5 * sigma_s)
    o = scale(np.log(sigma_s / lo) / np.log(max(hi, sigma_s) / lo))
    n = getattr(o, "num_steps", 18)
    return process, o, {"sigmas": grids.karras_sigmas(n, lo, sigma_s, 7.0)}, 1.0
  if domain != "continuous":
    raise ValueError(f"start_at_level: unknown domain {domain!r}")
  t_s = float(processes.time_at_sigma(process, jnp.asarray([sigma_s]))[0])
  if not eps < t_s <= 1.0:
    raise ValueError(f"the noise level sigma={sigma_s:g} lies outside the process's range at "
                     f"times ({eps}, 1] (t = {t_s:g})")
  alpha = float(process.alpha(jnp.asarray([t_s], jnp.float32))[0])
  return process, scale((t_s - eps) / (1.0 - eps)), {"t_start": t_s}, alpha


# -------------------------------------------------------------- denoising


def tweedie(den, y, sigma):
  """The one-step posterior mean ``E[x | y]`` of a noisy image ``y = x + sigma n`` (Tweedie's
  formula read through the denoiser): ``den.sigma_fn()(y, sigma)``, the denoiser's x0 at
  the process time whose noise level ``sigma / alpha`` is `sigma` (``[B]`` or a scalar).
  Exact on a continuous process; on a discrete schedule at its nearest step (exact on
  its own levels, `processes.time_at_sigma`)."""
  y = jnp.asarray(y, jnp.float32)
  s = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (y.shape[0],))
  return den.sigma_fn()(y, s)


def denoise_start(sched: schedules.DiscreteSchedule, y, sigma):
  """``(schedule, x_start)`` to denoise ``y = x + sigma n`` by running a discrete sampler
  from the matching step: k - 1 is the step whose ``sigma~ = sqrt(1 / ab - 1)`` is
  nearest to `sigma` (a float), the schedule is `truncated` to k steps and ``x_start =
  sqrt(ab_{k-1}) y``, a draw of ``q(x_{k-1} | x)`` when ``sigma`` is that step's level."""
  sigma = float(sigma)
  if not sigma > 0:
    raise ValueError(f"the noise level sigma={sigma} must be > 0")
  k = int(processes.time_at_sigma(sched, jnp.asarray([sigma]))[0]) + 1
  ab = sched.alpha_bars[k - 1]
  return truncated(sched, k), jnp.sqrt(ab) * jnp.asarray(y, jnp.float32)


def estimate_sigma(images) -> np.ndarray:
  """Each image's noise level from its finest diagonal Haar detail (Donoho & Johnstone
  1994): ``HH = (a - b - c + d) / 2`` over 2x2 blocks has the noise's std for white
  noise, and ``median |HH| / 0.6745`` is robust to the few large coefficients of edges.
  ``images [B, H, W, C]`` (H, W >= 2) -> ``[B]``; it overestimates on images with much
  fine texture (their own HH energy)."""
  x = np.asarray(images, np.float64)
  if x.ndim != 4 or x.shape[1] < 2 or x.shape[2] < 2:
    raise ValueError(f"estimate_sigma: images must be [B, H, W, C] with H, W >= 2, got {x.shape}")
  h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  x = x[:, :h, :w]
  hh = (x[:, 0::2, 0::2] - x[:, 0::2, 1::2] - x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) / 2
  return np.median(np.abs(hh).reshape(len(x), -1), axis=1) / 0.6745


# ----------------------------------------------------------- anomaly scores


def reconstruction_score(den, x, sigmas, key):
  """Per-image anomaly score: the mean over noise levels ``sigmas`` of the squared error
  ``mean (x - tweedie(x + sigma n, sigma))^2`` (noised, then denoised in one step).
  Images the model knows come back close; ``[B]``."""
  x = jnp.asarray(x, jnp.float32)
  total = jnp.zeros((x.shape[0],), jnp.float32)
  for i, sigma in enumerate(sigmas):
    n = jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
    err = x - tweedie(den, x + sigma * n, sigma)
    total = total + jnp.mean(jnp.square(err).reshape(x.shape[0], -1), axis=1)
  return total / len(sigmas)


def score_norm(den, x, sigma):
  """Per-image anomaly score: ``|| sigma^2 score(x, sigma) ||^2 / D`` at one small noise
  level ``sigma`` (the denoiser's correction ``D(x) - x`` squared, per dimension):
  large where the model would move the image far, ``[B]``."""
  x = jnp.asarray(x, jnp.float32)
  step = tweedie(den, x, sigma) - x
  return jnp.mean(jnp.square(step).reshape(x.shape[0], -1), axis=1)
