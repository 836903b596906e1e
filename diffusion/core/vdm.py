"""Variational Diffusion Models (Kingma et al. 2021, "Variational Diffusion Models").

A VDM describes the forward process by ``gamma(t) = -log SNR(t)``, monotone
increasing on ``t in [0, 1]`` (1 = prior), with the variance-preserving marginal

    z_t = alpha_t x + sigma_t eps,   alpha_t^2 = sigmoid(-gamma(t)),   sigma_t^2 = sigmoid(gamma(t)).

This module holds

- the gamma schedules (`LinearGamma`, `CosineGamma`, `LearnedGamma`: frozen
  dataclass pytrees whose numbers are leaves, no Flax), their registry `GAMMAS`
  and `get`;
- `VDMProcess`, the noise process and the VP SDE a schedule defines (it runs in
  `likelihood.bits_per_dim` and the continuous samplers);
- the ELBO of the paper in bits/dim, term by term (`prior_kl`,
  `reconstruction_loss`, `diffusion_loss`), per example (`elbo`) and as a
  training loss (`vdm_loss`), with the paper's variance-minimising gradient for
  a learned schedule's shape (Sec. 5.2 / App. I.2).

Conventions: ``x0`` is ``[B, ...]`` in [-1, 1]; the network enters as
``eps_fn(z_t [B, ...], gamma_t [B]) -> eps_hat [B, ...]`` (its noise input is
gamma, as in the paper); every loss term is summed over the data dimensions
and reported in bits/dim, i.e. divided by ``D ln 2`` with ``D`` the number of
dimensions of one example, as `likelihood` does.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.core import checks, losses, schedules, sdes

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]  # (z_t [B, ...], gamma_t [B]) -> eps_hat

_b = schedules.broadcast_to


def _pytree(*data_fields):
  """Frozen dataclass registered as a pytree whose ``data_fields`` are leaves."""
  def wrap(cls):
    return jax.tree_util.register_dataclass(
        dataclasses.dataclass(frozen=True)(cls), data_fields=list(data_fields), meta_fields=[])
  return wrap


def _as_times(t) -> jax.Array:
  return jnp.asarray(t, jnp.float32)


# --------------------------------------------------------------------------
# Gamma schedules.
# --------------------------------------------------------------------------


class _Gamma:
  """Shared methods; subclasses define ``gamma(t)`` (elementwise in ``t``)."""

  def gamma_and_derivative(self, t) -> tuple[jax.Array, jax.Array]:
    """``(gamma(t), d gamma / dt)``, each shaped like ``t``; the derivative by `jax.jvp`
    (exact: forward-mode autodiff, no finite differences). ``gamma`` acts on each
    element of ``t`` separately, so a tangent of ones gives the elementwise derivative."""
    t = _as_times(t)
    return jax.jvp(self.gamma, (t,), (jnp.ones_like(t),))

  def endpoints(self) -> tuple[jax.Array, jax.Array]:
    """``(gamma(0), gamma(1))`` as scalars: the values the decoder and prior terms use."""
    g = self.gamma(jnp.asarray([0.0, 1.0], jnp.float32))
    return g[0], g[1]


@_pytree("gamma_min", "gamma_max")
class LinearGamma(_Gamma):
  """``gamma(t) = gamma_min (1 - t) + gamma_max t`` (the paper's fixed linear schedule).

  Written as that convex combination so that both endpoints are exact in float32.
  """

  gamma_min: Any = -13.3
  gamma_max: Any = 5.0

  def gamma(self, t):
    t = _as_times(t)
    return self.gamma_min * (1.0 - t) + self.gamma_max * t

  def endpoints(self):
    return jnp.asarray(self.gamma_min, jnp.float32), jnp.asarray(self.gamma_max, jnp.float32)


@_pytree("gamma_min", "gamma_max")
class CosineGamma(_Gamma):
  """The cosine log-SNR schedule stretched to hit both endpoints.

  ``gamma(t) = 2 log tan(a t + b)`` with ``b = atan(exp(gamma_min / 2))`` and
  ``a = atan(exp(gamma_max / 2)) - b``, so ``gamma(0) = gamma_min`` and
  ``gamma(1) = gamma_max`` (up to float32 rounding of atan / tan, ~1e-6
  relative). With ``b = 0``, ``a = pi / 2`` it is the cosine schedule of Nichol &
  Dhariwal (``alpha^2 = cos^2(pi t / 2)``). Monotone increasing because ``tan``
  is on ``(0, pi / 2)``.
  """

  gamma_min: Any = -13.3
  gamma_max: Any = 5.0

  def _ab(self):
    b = jnp.arctan(jnp.exp(0.5 * jnp.asarray(self.gamma_min, jnp.float32)))
    a = jnp.arctan(jnp.exp(0.5 * jnp.asarray(self.gamma_max, jnp.float32))) - b
    return a, b

  def gamma(self, t):
    a, b = self._ab()
    u = a * _as_times(t) + b
    return 2.0 * (jnp.log(jnp.sin(u)) - jnp.log(jnp.cos(u)))


def _inverse_softplus(y: float) -> float:
  return float(np.log(np.expm1(y)))


def init_learned_gamma(rng: jax.Array, width: int = 1024, gamma_min: float = -13.3,
                       gamma_max: float = 5.0) -> dict:
  """Initial parameters of `LearnedGamma`: a dict of float32 arrays.

  ``{"gamma_min": [], "gamma_max": [], "shape": {"w1": [], "w2": [width],
  "b2": [width], "w3": [width]}}``: the endpoints apart from the shape network
  (the variance-minimising gradient treats them differently). The raw weights
  are mapped through softplus, so any values give a monotone schedule. Initial
  values: ``softplus(w1) = 1``, ``w2, b2, w3 ~ N(0, 1)``: a nearly linear
  start (the sigmoid layer's inputs span about one unit over [0, 1]).
  """
  if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
    raise ValueError(f"width must be an int >= 1, got {width!r}")
  k2, kb, k3 = jax.random.split(rng, 3)
  return {
      "gamma_min": jnp.asarray(gamma_min, jnp.float32),
      "gamma_max": jnp.asarray(gamma_max, jnp.float32),
      "shape": {
          "w1": jnp.asarray(_inverse_softplus(1.0), jnp.float32),
          "w2": jax.random.normal(k2, (width,), jnp.float32),
          "b2": jax.random.normal(kb, (width,), jnp.float32),
          "w3": jax.random.normal(k3, (width,), jnp.float32),
      },
  }


def _gamma_from_unit(gamma_min, gamma_max, h):
  """``gamma_min (1 - h) + gamma_max h``: exact at ``h = 0`` and ``h = 1``."""
  return gamma_min * (1.0 - h) + gamma_max * h


@_pytree("params")
class LearnedGamma(_Gamma):
  """The paper's monotone network for ``gamma(t)`` (Kingma et al. 2021, App. H).

  With positive weights ``w = softplus(raw)`` (so the schedule is monotone for
  any parameter values):

      l1(t) = w1 t,   l2(u) = w2 u + b2 (width units),   l3(v) = <w3, v> / width,
      gt(t) = l1(t) + l3(sigmoid(l2(l1(t)))),
      h(t)  = (gt(t) - gt(0)) / (gt(1) - gt(0))          in [0, 1], increasing,
      gamma(t) = gamma_min + (gamma_max - gamma_min) h(t).

  ``l1`` has no bias and ``l3`` is divided by the width: a bias of ``l1`` is
  absorbed into ``b2`` and one of ``l3`` cancels in ``h``, and the positive
  factor ``1 / width`` (as in the paper's code) keeps the two branches of
  ``gt`` of the same size at initialisation; the family of schedules is the
  paper's. ``h`` is computed as ``w1 t + <w3, sigmoid(l2(w1 t)) - sigmoid(b2)>
  / width`` over its value at ``t = 1``: a sum of non-decreasing terms, so no
  cancellation of ``gt(0)``. Its value is set to exactly 0 at ``t = 0`` and 1 at
  ``t = 1`` (a straight-through correction of the last rounding: the derivative
  is the network's), so ``gamma(0) = gamma_min`` and ``gamma(1) = gamma_max``
  exactly. Should ``gt(1) - gt(0)`` underflow to 0 (softplus of raw weights
  below about -100), ``h(t) = t``.

  ``params``: the dict of `init_learned_gamma`; ``gamma_min`` and
  ``gamma_max`` are learnable leaves like the rest.
  """

  params: Any

  @property
  def gamma_min(self):
    return self.params["gamma_min"]

  @property
  def gamma_max(self):
    return self.params["gamma_max"]

  @staticmethod
  def _rise(shape, t):
    """``gt(t) - gt(0)`` for times ``t`` of any shape (elementwise)."""
    w1 = jax.nn.softplus(shape["w1"])
    w2, w3 = jax.nn.softplus(shape["w2"]), jax.nn.softplus(shape["w3"])
    u = (w1 * t)[..., None]
    rise = jax.nn.sigmoid(u * w2 + shape["b2"]) - jax.nn.sigmoid(shape["b2"])
    return w1 * t + jnp.sum(rise * w3, axis=-1) / w3.shape[-1]

  def unit_shape(self, t) -> jax.Array:
    """The normalised shape ``h(t)`` in [0, 1] (0 at t = 0, 1 at t = 1 exactly); like ``t``."""
    t = _as_times(t)
    shape = self.params["shape"]
    total = self._rise(shape, jnp.ones((), jnp.float32))
    h = jnp.where(total > 0, self._rise(shape, t) / jnp.where(total > 0, total, 1.0), t)
    exact = jnp.where(t <= 0.0, 0.0, jnp.where(t >= 1.0, 1.0, h))
    return h + jax.lax.stop_gradient(exact - h)

  def unit_shape_and_derivative(self, t) -> tuple[jax.Array, jax.Array]:
    """``(h(t), h'(t))`` by `jax.jvp`; ``gamma'(t) = (gamma_max - gamma_min) h'(t)``."""
    t = _as_times(t)
    return jax.jvp(self.unit_shape, (t,), (jnp.ones_like(t),))

  def gamma(self, t):
    return _gamma_from_unit(self.gamma_min, self.gamma_max, self.unit_shape(t))

  def endpoints(self):
    return self.gamma_min, self.gamma_max


GAMMAS = {"linear": LinearGamma, "cosine": CosineGamma, "learned": LearnedGamma}


def get(name: str, **kwargs):
  """A gamma schedule by name: "linear" / "cosine" (``gamma_min``, ``gamma_max``) or
  "learned" (``params`` from `init_learned_gamma`)."""
  checks.choice(name, sorted(GAMMAS), "gamma schedule")
  return GAMMAS[name](**kwargs)


# --------------------------------------------------------------------------
# The process.
# --------------------------------------------------------------------------


@_pytree("gamma_schedule")
class VDMProcess(sdes._SDE):
  """The noise process of a gamma schedule, and the VP SDE it is.

  Marginal: ``alpha^2 = sigmoid(-gamma)``, ``sigma^2 = sigmoid(gamma)``,
  ``log_snr = -gamma``. Since ``d log alpha^2 / dt = -gamma' sigmoid(gamma)``,
  the SDE with these marginals is ``dx = -beta x / 2 dt + sqrt(beta) dw`` with
  ``beta(t) = gamma'(t) sigmoid(gamma(t))`` (Kingma et al. 2021, App. A / Song
  et al. 2021's VP SDE). Prior ``N(0, I)``; `discretize` is Euler
  (`sdes._SDE`), as are the reverse and probability-flow drifts.
  """

  gamma_schedule: Any

  prior_std = 1.0

  def gamma(self, t):
    return self.gamma_schedule.gamma(t)

  def marginal_coeffs(self, t):
    """``(alpha(t), sigma(t))``, each ``[B]``."""
    g = self.gamma(t)
    return jnp.sqrt(jax.nn.sigmoid(-g)), jnp.sqrt(jax.nn.sigmoid(g))

  def log_snr(self, t):
    return -self.gamma(t)

  def beta(self, t):
    g, dg = self.gamma_schedule.gamma_and_derivative(t)
    return dg * jax.nn.sigmoid(g)

  def drift(self, x, t):
    return -0.5 * _b(self.beta(t), x) * x

  def diffusion(self, t):
    return jnp.sqrt(self.beta(t))


# --------------------------------------------------------------------------
# The ELBO (bits/dim).
# --------------------------------------------------------------------------


def _dim(x) -> int:
  return math.prod(x.shape[1:])


def _sum_except_batch(v):
  return jnp.sum(v.reshape(v.shape[0], -1), axis=-1)


def _to_bpd(nats, x):
  return nats / (_dim(x) * math.log(2.0))


def _check_x(x0):
  if getattr(x0, "ndim", 0) < 2 or 0 in x0.shape:
    raise ValueError(f"x0 must be a non-empty array [B, ...] (at least one data axis); "
                     f"got shape {getattr(x0, 'shape', None)}")
  return jnp.asarray(x0, jnp.float32)


def _check_int(value, name, lower):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lower:
    raise ValueError(f"{name} must be an int >= {lower}, got {value!r}")


def bin_index(x0: jax.Array, num_bins: int = 256) -> jax.Array:
  """The bin ``k`` in ``0..K-1`` of each value: ``floor((x + 1) K / 2)`` clipped, int32.

  The bins of `likelihood.discretized_gaussian_log_prob`: ``[2k/K - 1, 2(k+1)/K - 1)``,
  with +1 in the last; data scaled as ``k / 127.5 - 1`` land in bin ``k``.
  """
  k = jnp.floor((jnp.asarray(x0, jnp.float32) + 1.0) * (num_bins / 2.0))
  return jnp.clip(k, 0, num_bins - 1).astype(jnp.int32)


def bin_centres(k: jax.Array, num_bins: int = 256) -> jax.Array:
  """The centre ``(2k + 1) / K - 1`` of bin ``k``: VDM's embedding of discrete data."""
  return (2.0 * jnp.asarray(k, jnp.float32) + 1.0) / num_bins - 1.0


def prior_kl(x0: jax.Array, schedule) -> jax.Array:
  """``KL(q(z_1 | x) || N(0, I))`` summed over dimensions, bits/dim ``[B]``.

  Per dimension ``(sigma_1^2 + alpha_1^2 x^2 - 1 - log sigma_1^2) / 2`` with
  ``sigma_1^2 - 1 = -alpha_1^2``: ``(alpha_1^2 (x^2 - 1) - log sigmoid(gamma_1)) / 2``.
  """
  x0 = _check_x(x0)
  g1 = schedule.endpoints()[1]
  a2 = jax.nn.sigmoid(-g1)
  kl = 0.5 * (a2 * (x0**2 - 1.0) - jax.nn.log_sigmoid(g1))
  return _to_bpd(_sum_except_batch(kl), x0)


def reconstruction_loss(x0: jax.Array, schedule, rng: jax.Array, *,
                        num_bins: int = 256) -> jax.Array:
  """``-log p(x | z_0)`` of the paper's discretised decoder, bits/dim ``[B]``.

  ``z_0 = alpha_0 x + sigma_0 eps`` (one draw from ``rng``); rescaled,
  ``z_0 / alpha_0 = x + exp(gamma_0 / 2) eps``. Per dimension the decoder is a
  softmax over the ``K = num_bins`` bin centres ``v_k`` (`bin_centres`) with
  logits ``-exp(-gamma_0) (z_0 / alpha_0 - v_k)^2 / 2``; the loss is minus its
  log-probability of the bin of ``x`` (`bin_index`), summed over dimensions.
  (Kingma et al. 2021, App. C; memory ``B D K`` floats.)
  """
  _check_int(num_bins, "num_bins", 2)
  x0 = _check_x(x0)
  g0 = schedule.endpoints()[0]
  z = x0 + jnp.exp(0.5 * g0) * jax.random.normal(rng, x0.shape, jnp.float32)
  centres = bin_centres(jnp.arange(num_bins), num_bins)
  logits = -0.5 * jnp.exp(-g0) * (z[..., None] - centres) ** 2
  logp = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(logp, bin_index(x0, num_bins)[..., None], axis=-1)[..., 0]
  return _to_bpd(-_sum_except_batch(picked), x0)


def _weighted_eps_error(eps_fn: EpsFn, x0, noise, gamma_t, weight):
  """``weight ||eps - eps_fn(z_t, gamma_t)||^2`` in bits/dim, ``[B]``."""
  z = _b(jnp.sqrt(jax.nn.sigmoid(-gamma_t)), x0) * x0 + _b(jnp.sqrt(jax.nn.sigmoid(gamma_t)), x0) * noise
  eps_hat = eps_fn(z, gamma_t)
  if eps_hat.shape != x0.shape:
    raise ValueError(f"eps_fn must return the shape of z_t {x0.shape}; got {eps_hat.shape}")
  return _to_bpd(weight * _sum_except_batch((noise - eps_hat.astype(jnp.float32)) ** 2), x0)


def _loss_from_gammas(eps_fn, x0, noise, gammas, num_steps):
  """Per-example diffusion loss from per-example gammas, bits/dim ``[B]``.

  Continuous (``num_steps = 0``), ``gammas = (gamma(t), gamma'(t))``: weight
  ``gamma' / 2``. Discrete, ``gammas = (gamma(t_i), gamma(s_i))``: weight
  ``T expm1(gamma(t_i) - gamma(s_i)) / 2``.
  """
  g_t, other = gammas
  weight = 0.5 * other if num_steps == 0 else 0.5 * num_steps * jnp.expm1(g_t - other)
  return _weighted_eps_error(eps_fn, x0, noise, g_t, weight)


def _times(rng, n, num_steps, antithetic):
  """``(t, s)`` ``[B]``: continuous ``t in [0, 1)`` (s unused, None) or the grid pair
  ``t_i = i / T``, ``s_i = (i - 1) / T`` with ``i = floor(u T) + 1`` uniform on 1..T."""
  u = losses.sample_time(rng, n, 0.0, antithetic)
  if num_steps == 0:
    return u, None
  i = jnp.minimum(jnp.floor(u * num_steps), num_steps - 1) + 1.0
  return i / num_steps, (i - 1.0) / num_steps


def _variance_grad_loss(fn, endpoints, shape_values, data):
  """``fn(endpoints, shape_values, data) -> L [B]`` with the shape values' gradient
  multiplied by ``2 L_i`` (see `diffusion_loss`); ``fn`` may close over traced values
  (the network's parameters), which `jax.closure_convert` makes explicit."""
  converted, consts = jax.closure_convert(fn, endpoints, shape_values, data)
  return _scaled_shape_vjp(converted, endpoints, shape_values, data, *consts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scaled_shape_vjp(fn, endpoints, shape_values, data, *consts):
  return fn(endpoints, shape_values, data, *consts)


def _scaled_shape_fwd(fn, endpoints, shape_values, data, *consts):
  loss, vjp = jax.vjp(fn, endpoints, shape_values, data, *consts)
  return loss, (loss, vjp)


def _scaled_shape_bwd(fn, res, g):
  loss, vjp = res
  d_end, d_shape, d_data, *d_consts = vjp(g)
  d_shape = jax.tree.map(lambda c: 2.0 * loss * c, d_shape)
  return (d_end, d_shape, d_data, *d_consts)


_scaled_shape_vjp.defvjp(_scaled_shape_fwd, _scaled_shape_bwd)


def diffusion_loss(x0: jax.Array, eps_fn: EpsFn, schedule, rng: jax.Array, *, num_steps: int = 0,
                   antithetic: bool = True, variance_gradient: bool = False) -> jax.Array:
  """The diffusion term of the VDM ELBO, one Monte Carlo draw per example, bits/dim ``[B]``.

  ``z_t = alpha_t x + sigma_t eps``, ``eps_hat = eps_fn(z_t, gamma(t))``.

  - ``num_steps = 0`` (continuous time, paper eq. 17 in eps form):
    ``L = gamma'(t) ||eps - eps_hat||^2 / 2`` with ``t ~ U[0, 1)``, which equals
    ``-SNR'(t) ||x - x_hat||^2 / 2``; ``gamma'`` by `jax.jvp`.
  - ``num_steps = T >= 1`` (discrete time, eq. 13 in eps form):
    ``L = T expm1(gamma(t_i) - gamma(s_i)) ||eps - eps_hat(z_{t_i})||^2 / 2`` with
    ``t_i = i / T``, ``s_i = (i - 1) / T``, ``i`` uniform on 1..T; ``L_T >= L_inf``
    for the optimal denoiser and decreases with T (the paper's Sec. 4.1).

  ``t`` (or ``i``) comes from `losses.sample_time` (``antithetic``: the paper's
  low-discrepancy sampler over the batch).

  ``variance_gradient`` (only for `LearnedGamma`; ignored by the fixed
  schedules, which have no shape parameters): the value is unchanged; under
  `jax.grad` of ``mean(L)`` the network and the endpoints ``gamma_min``,
  ``gamma_max`` get the ordinary gradient, and the shape parameters the
  gradient of ``mean(L^2)`` (paper Sec. 5.2: in continuous time ``E[L]``
  depends on the schedule only through its endpoints, so the shape may as well
  minimise the estimator's variance, ``E[L^2] - E[L]^2``). One forward and one
  backward pass: the per-example shape values (``h(t_i)`` and ``h'(t_i)``, or
  ``h(t_i)`` and ``h(s_i)``) are computed outside a `jax.custom_vjp` of
  ``(network, endpoints, shape values) -> L [B]``, whose backward multiplies the
  shape values' cotangents by ``2 L_i``. This is the gradient of ``mean L^2``
  because ``L_i`` depends on example i's shape values only, which needs an
  ``eps_fn`` that treats each example separately (no batch statistics). In
  discrete time ``E[L_T]`` also depends on the shape, so there the variance
  gradient minimises ``E[L_T^2]``, not the bound.
  """
  _check_int(num_steps, "num_steps", 0)
  x0 = _check_x(x0)
  t_key, n_key = jax.random.split(rng)
  t, s = _times(t_key, x0.shape[0], num_steps, antithetic)
  noise = jax.random.normal(n_key, x0.shape, jnp.float32)
  if not (variance_gradient and isinstance(schedule, LearnedGamma)):
    if num_steps == 0:
      gammas = schedule.gamma_and_derivative(t)
    else:
      gammas = (schedule.gamma(t), schedule.gamma(s))
    return _loss_from_gammas(eps_fn, x0, noise, gammas, num_steps)

  if num_steps == 0:
    shape_values = schedule.unit_shape_and_derivative(t)
  else:
    shape_values = (schedule.unit_shape(t), schedule.unit_shape(s))

  def per_example(endpoints, shape_values, data):
    (g_min, g_max), (h, other), (x, e) = endpoints, shape_values, data
    if num_steps == 0:  # other = h'(t): gamma' = (g_max - g_min) h'.
      gammas = (_gamma_from_unit(g_min, g_max, h), (g_max - g_min) * other)
    else:  # other = h(s).
      gammas = (_gamma_from_unit(g_min, g_max, h), _gamma_from_unit(g_min, g_max, other))
    return _loss_from_gammas(eps_fn, x, e, gammas, num_steps)

  return _variance_grad_loss(per_example, schedule.endpoints(), shape_values, (x0, noise))


def elbo(x0: jax.Array, eps_fn: EpsFn, schedule, rng: jax.Array, *, num_steps: int = 0,
         num_bins: int = 256, antithetic: bool = True, variance_gradient: bool = False,
         snap_to_bins: bool = True) -> dict:
  """The VDM bound on ``-log P(x)`` of ``num_bins``-level data, per example, bits/dim.

  Returns ``{"prior", "reconstruction", "diffusion", "total"}``, each ``[B]``:
  `prior_kl` + `reconstruction_loss` + `diffusion_loss` (Kingma et al. 2021,
  eq. 11). ``snap_to_bins``: the latent model sees each value's bin centre
  (`bin_centres` of `bin_index`), the paper's embedding of discrete data; pass
  False to use ``x0`` as it is (continuous data; the decoder still scores its bin).
  """
  x0 = _check_x(x0)
  x = bin_centres(bin_index(x0, num_bins), num_bins) if snap_to_bins else x0
  d_key, r_key = jax.random.split(rng)
  terms = {
      "prior": prior_kl(x, schedule),
      "reconstruction": reconstruction_loss(x, schedule, r_key, num_bins=num_bins),
      "diffusion": diffusion_loss(x, eps_fn, schedule, d_key, num_steps=num_steps,
                                  antithetic=antithetic, variance_gradient=variance_gradient),
  }
  terms["total"] = terms["prior"] + terms["reconstruction"] + terms["diffusion"]
  return terms


def vdm_loss(x0: jax.Array, eps_fn: EpsFn, schedule, rng: jax.Array, *, num_steps: int = 0,
             num_bins: int = 256, antithetic: bool = True, variance_gradient: bool = True,
             snap_to_bins: bool = True):
  """The VDM training loss: the batch mean of `elbo`'s total, bits/dim.

  Returns ``(loss, metrics)`` with metrics "loss", "bpd_prior",
  "bpd_reconstruction" and "bpd_diffusion" (batch means). With a `LearnedGamma`
  and ``variance_gradient=True`` (the default) `jax.grad` of ``loss`` gives the
  schedule's shape the variance-minimising gradient (`diffusion_loss`);
  ``False`` gives every parameter the plain ELBO gradient.
  """
  terms = elbo(x0, eps_fn, schedule, rng, num_steps=num_steps, num_bins=num_bins,
               antithetic=antithetic, variance_gradient=variance_gradient,
               snap_to_bins=snap_to_bins)
  loss = jnp.mean(terms["total"])
  metrics = {"loss": loss, "bpd_prior": jnp.mean(terms["prior"]),
             "bpd_reconstruction": jnp.mean(terms["reconstruction"]),
             "bpd_diffusion": jnp.mean(terms["diffusion"])}
  return loss, metrics
