"""Likelihoods: probability-flow ODE log-density and bits/dim, and the DDPM variational bound.

Continuous time (Song et al. 2021, App. D). Along the probability-flow ODE
``dx/dt = f~(x, t) = f(x, t) - g(t)^2 score(x, t) / 2`` the log-density obeys
``d log p_t(x_t) / dt = -div f~(x_t, t)``, so integrating the augmented state
``(x, delta)`` with ``d delta/dt = div f~`` forwards from ``t = eps`` to ``1``
gives

    log p_eps(x) = log p_1(z) + delta(1),      z = x(1),

with ``p_1`` replaced by the SDE's prior (`sdes.*.prior_logp`). The divergence
is exact (one ``jvp`` per data dimension) or Hutchinson's estimate
``E_v[v^T J v]`` with the probe ``v`` drawn once and held fixed over the whole
solve (FFJORD / score_sde practice: the ODE stays deterministic and smooth
for the adaptive solver; ``logp`` is unbiased over ``v`` up to solver error).

Discrete time (Ho et al. 2020, Eq. 5): `ddpm_vlb` returns the per-example
terms ``L_T``, ``sum_{t>=1} L_{t-1}`` and ``L_0`` of the variational bound on
``-log p(x0)`` of ``num_bins``-level data, in bits/dim.

Pure JAX functions of callables ``score_fn(x [B, ...], t float32 [B])`` /
``eps_fn(x [B, ...], t int32 [B])`` (tests pass closed forms); wrap calls in
``jax.jit`` with the callables closed over.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from diffusion.core import ode
from diffusion.core import checks, parameterization, schedules

DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")
# The exact divergence costs D jvps and ~2 D^2 B floats of memory; above this
# D (a 64x64 grey image) use the Hutchinson estimator.
MAX_EXACT_DIM = 4096

_b = schedules.broadcast_to




def _check_int(value, name, lower):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lower:
    raise ValueError(f"{name} must be an int >= {lower}, got {value!r}")


def _check_batched(x, name="x"):
  shape = getattr(x, "shape", None)
  if shape is None or len(shape) < 2 or 0 in shape:
    raise ValueError(f"{name} must be a non-empty array of shape [B, ...] (batch axis first, "
                     f"at least one data axis); got shape {shape}")




def _check_exact_dim(x):
  if _dim(x) > MAX_EXACT_DIM:
    raise ValueError(f"divergence 'exact' needs one jvp per dimension and is limited to "
                     f"D <= {MAX_EXACT_DIM}; x has D = {_dim(x)}; use 'hutchinson'")


def _dim(x) -> int:
  return math.prod(x.shape[1:])


def _sum_except_batch(v: jax.Array) -> jax.Array:
  return jnp.sum(v.reshape(v.shape[0], -1), axis=-1)


def _probes(method: str, probe: str, num_probes: int, x: jax.Array, rng) -> jax.Array | None:
  """Validated Hutchinson probes ``[P, B, ...]`` (``E[v v^T] = I``); None for "exact"."""
  checks.choice(probe, PROBES, "probe")
  _check_int(num_probes, "num_probes", 1)
  if method == "exact":
    _check_exact_dim(x)
    return None
  draw = jax.random.rademacher if probe == "rademacher" else jax.random.normal
  return draw(rng, (num_probes,) + tuple(x.shape), x.dtype)


def _value_and_divergence(fn_x: Callable, x: jax.Array, probes: jax.Array | None):
  """``(fn_x(x), div)``: one linearisation, then jvps along the probes or the basis.

  ``probes`` ``[P, B, ...]`` gives Hutchinson's ``mean_p v_p^T J v_p``; ``None``
  gives the exact trace, ``sum_i (J e_i)_i`` over the D basis directions (each
  direction is applied to every example at once, which is correct because
  ``fn_x`` acts on each example separately). Returns ``([B, ...], [B])``.
  """
  y, jvp = jax.linearize(fn_x, x)
  if y.shape != x.shape:
    raise ValueError(f"fn must map x of shape {x.shape} to the same shape; got {y.shape}")
  if probes is None:
    n, d = x.shape[0], _dim(x)
    basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])

    def diagonal_entry(e, i):  # (J e_i)_i for every example: [B]
      return jvp(jnp.broadcast_to(e, x.shape)).reshape(n, d)[:, i]

    return y, jnp.sum(jax.vmap(diagonal_entry)(basis, jnp.arange(d)), axis=0)
  jv = jax.vmap(jvp)(probes)  # [P, B, ...]
  return y, jnp.mean(jax.vmap(_sum_except_batch)(probes * jv), axis=0)


def divergence(fn: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, t: jax.Array,
               rng: jax.Array, *, method: str = "hutchinson", probe: str = "rademacher",
               num_probes: int = 1) -> jax.Array:
  """Divergence ``sum_i d fn(x, t)_i / d x_i`` of ``fn`` w.r.t. ``x``, per example ``[B]``.

  Args:
    fn: ``fn(x [B, ...], t [B]) -> [B, ...]``, acting on each example separately.
    rng: key for the Hutchinson probes (unused by "exact").
    method: "exact" (trace of the Jacobian from D jvps, vmapped over the basis;
      for D <= `MAX_EXACT_DIM` only, it costs D evaluations and ~2 D^2 B floats)
      or "hutchinson" (``mean_p v_p^T J v_p`` over ``num_probes`` probes, one
      jvp each; unbiased).
    probe: "rademacher" (+-1 entries; lower variance, and exact when J is
      diagonal) or "gaussian".
    num_probes: probes averaged per example (Hutchinson only).
  """
  checks.choice(method, DIVERGENCES, "method")
  _check_batched(x)
  checks.check_t(x, t)
  probes = _probes(method, probe, num_probes, x, rng)
  return _value_and_divergence(lambda v: fn(v, t), x, probes)[1]


def log_likelihood(score_fn: Callable[[jax.Array, jax.Array], jax.Array], sde, x: jax.Array,
                   rng: jax.Array, *, eps: float = 1e-5, method: str = "rk45",
                   num_steps: int = 1000, rtol: float = 1e-5, atol: float = 1e-5,
                   divergence: str = "hutchinson", probe: str = "rademacher",
                   num_probes: int = 1):
  """Log-density of ``x`` under the probability-flow ODE of ``score_fn``, in nats.

  Integrates ``(x, delta)`` with ``dx/dt = f~``, ``d delta/dt = div f~`` from
  ``t = eps`` to ``1`` and returns ``log p(x) = sde.prior_logp(z) + delta(1)``:
  the continuous density of ``x`` itself (strictly of ``p_eps``, the data
  marginal at ``t = eps``, which tends to ``p_0`` as ``eps -> 0``).

  Args:
    sde: a `sdes.VPSDE`, `sdes.SubVPSDE` or `sdes.VESDE`.
    rng: key for the Hutchinson probes, drawn once and held fixed over the solve.
    eps: start time in (0, 1).
    method: "rk45" (adaptive Dormand–Prince with ``rtol`` / ``atol``;
      ``num_steps`` is then the step limit), "euler" or "heun" (``num_steps``
      uniform steps).
    divergence: "hutchinson" or "exact" (see `divergence`).
    probe, num_probes: Hutchinson probe kind and count.

  Returns:
    ``(logp [B], z [B, ...], stats)``; ``stats["nfe"]`` counts evaluations of
    the augmented drift (each is one score evaluation plus its jvps). For rk45
    ``stats`` also has "steps", "rejected" and "reached_end"; when the step
    limit stops the solve short of ``t = 1``, ``logp`` is NaN rather than a
    silently wrong number.
  """
  checks.choice(method, ode.METHODS, "method")
  checks.choice(divergence, DIVERGENCES, "divergence")
  _check_int(num_steps, "num_steps", 1)
  _check_batched(x)
  if not 0.0 < float(eps) < 1.0:
    raise ValueError(f"eps (the start time) must lie in (0, 1), got {eps}")
  x = jnp.asarray(x, jnp.float32)
  n = x.shape[0]
  probes = _probes(divergence, probe, num_probes, x, rng)

  def augmented(state, t):
    tb = jnp.full((n,), t, jnp.float32)
    return _value_and_divergence(
        lambda v: sde.probability_flow_drift(score_fn, v, tb), state[0], probes)

  state0 = (x, jnp.zeros((n,), jnp.float32))
  if method == "rk45":
    (z, delta), stats = ode.integrate_adaptive(
        augmented, state0, eps, 1.0, rtol=rtol, atol=atol, max_steps=num_steps)
    logp = jnp.where(stats["reached_end"], sde.prior_logp(z) + delta, jnp.nan)
    return logp, z, dict(stats)
  ts = jnp.linspace(eps, 1.0, num_steps + 1, dtype=jnp.float32)
  z, delta = ode.integrate_fixed(augmented, state0, ts, method)
  stats = {"nfe": jnp.asarray(num_steps * ode.FIXED_STEP[method][1], jnp.int32)}
  return sde.prior_logp(z) + delta, z, stats


def bits_per_dim(score_fn, sde, x: jax.Array, rng: jax.Array, *, num_bins: int | None = None,
                 **kw) -> jax.Array:
  """Negative log-likelihood in bits per dimension, ``[B]``; ``kw`` go to `log_likelihood`.

  Without ``num_bins``: ``-log p(x) / (D ln 2)``, the continuous density of x.

  With ``num_bins = K``: bits/dim of the integer data ``k in {0..K-1}^D``
  that ``x`` dequantises, ``x = 2 (k + u) / K - 1`` with ``u ~ U[0, 1)^D``
  (so x lies in [-1, 1)). With ``y = k + u = K (x + 1) / 2`` the density of
  y is ``p_y(y) = p_x(x) |det dx/dy| = p_x(x) (2/K)^D``, and since the bins of y
  have unit volume, Jensen gives ``-log P(k) <= E_u[-log p_y(k + u)] =
  E_u[-log p_x(x)] + D log(K/2)``. In bits/dim the offset is ``+log2(K/2)``
  (7 for 8-bit data): pass dequantised ``x`` and average over the batch for
  the standard upper bound on the discrete NLL.
  """
  if num_bins is not None:
    _check_int(num_bins, "num_bins", 2)
  _check_batched(x)
  logp, _, _ = log_likelihood(score_fn, sde, x, rng, **kw)
  bpd = -logp / (_dim(x) * math.log(2.0))
  if num_bins is not None:
    bpd = bpd + math.log2(num_bins / 2.0)
  return bpd


def _normal_kl(mean1, log_var1, mean2, log_var2):
  """Elementwise ``KL(N(mean1, var1) || N(mean2, var2))``.

  The variance part ``(v1/v2 - 1 - log(v1/v2)) / 2`` uses ``expm1``: exactly 0
  for equal variances and accurate for nearly equal ones (``-1 + log v2 -
  log v1 + v1/v2`` loses ~1e-7 per term to rounding).
  """
  d = log_var1 - log_var2
  return 0.5 * (jnp.expm1(d) - d + (mean1 - mean2) ** 2 * jnp.exp(-log_var2))


def _log_diff_ndtr(a, b):
  """``log(Phi(b) - Phi(a))``, ``a < b`` (either may be infinite), stable in both tails.

  Reflects to the lower tail (``Phi(b) - Phi(a) = Phi(-a) - Phi(-b)``) when the
  centre is positive, then ``log Phi(b) + log(-expm1(log Phi(a) - log Phi(b)))``.
  """
  flip = a + b > 0
  a, b = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
  la, lb = log_ndtr(a), log_ndtr(b)
  return lb + jnp.log(-jnp.expm1(la - lb))


def discretized_gaussian_log_prob(x, mean, std, num_bins: int):
  """Elementwise log-mass of the bin holding ``x`` under ``N(mean, std^2)``.

  [-1, 1] is cut into ``num_bins = K`` bins of width 2/K, bin k being
  ``[2k/K - 1, 2(k+1)/K - 1)``; values outside [-1, 1] fall in the end bins
  (so +1 belongs to bin K-1), and the outer edges at -1 and +1 extend to
  -inf and +inf (Ho et al. 2020, Sec. 3.3), so the K masses sum to 1. These
  are the bins that `bits_per_dim`'s dequantisation ``x = 2 (k + u)/K - 1``
  fills. Data scaled as ``k / 127.5 - 1`` land in the right bin (bin k) but
  up to half a bin off its centre; ``(2k + 1)/K - 1`` is the centre.
  """
  k = jnp.clip(jnp.floor((x + 1.0) * (num_bins / 2.0)), 0, num_bins - 1)
  lo = jnp.where(k == 0, -jnp.inf, 2.0 * k / num_bins - 1.0)
  hi = jnp.where(k == num_bins - 1, jnp.inf, 2.0 * (k + 1.0) / num_bins - 1.0)
  return _log_diff_ndtr((lo - mean) / std, (hi - mean) / std)


def ddpm_vlb(eps_fn, sched: schedules.DiscreteSchedule, x0: jax.Array, rng: jax.Array, *,
             variance: str = "beta_tilde", num_bins: int = 256) -> dict:
  """Per-example terms of DDPM's variational bound (Ho et al. 2020, Eq. 5), bits/dim.

  Timesteps are 0..T-1 (DESIGN.md), so the paper's ``x_1..x_T`` are the
  latents at t = 0..T-1 here. Returns a dict of ``[B]`` arrays:

  - "prior": ``L_T = KL(q(x_{T-1} | x0) || N(0, I))`` (analytic);
  - "diffusion": ``sum_{t=1}^{T-1} KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))``,
    one Monte Carlo ``x_t ~ q(x_t | x0)`` per t with noise from
    ``fold_in(rng, t)``, summed in ``lax.scan``. The model mean is the
    posterior mean at ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``;
    the model variance is ``beta_t`` or ``beta_tilde_t`` (``variance``);
  - "decoder": ``L_0 = -log p(x0 | x_0-latent)``, the discretised Gaussian of
    `discretized_gaussian_log_prob` on ``num_bins`` bins, with the latent drawn
    with ``fold_in(rng, 0)``, mean the model's posterior mean at t = 0 (which
    is ``x0_hat``) and variance ``beta_0`` for both choices of
    ``variance`` (``beta_tilde_0 = 0``: the t = 0 posterior is a point mass, so
    "beta_tilde" falls back to ``beta_0`` there, as in Ho et al.);
  - "total": their sum, an upper bound (in expectation over ``rng``) on the
    model's negative log-likelihood of the ``num_bins``-level data, bits/dim.

  ``x0`` is ``[B, ...]`` data in [-1, 1]; ``num_bins`` (K >= 2) is the number
  of data levels (256 for 8-bit images).

  Long (~70 lines) because the docstring states each term; the code is four
  short closures in the order of the bound.
  """
  checks.choice(variance, schedules.VARIANCES, "variance")
  _check_int(num_bins, "num_bins", 2)
  _check_batched(x0, "x0")
  x0 = jnp.asarray(x0, jnp.float32)
  n, T = x0.shape[0], sched.num_steps
  var_table = schedules.variance_table(sched, variance)
  to_bpd = 1.0 / (_dim(x0) * math.log(2.0))

  def latent(t):
    tb = jnp.full((n,), t, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(rng, t), x0.shape, jnp.float32)
    return schedules.q_sample(sched, x0, tb, noise), tb

  def x0_hat(x_t, tb):
    eps = eps_fn(x_t, tb)
    if eps.shape != x_t.shape:
      raise ValueError(f"eps_fn must return the shape of x {x_t.shape}; got {eps.shape}")
    # sigma from the cancellation-free 1 - alpha_bar (exact at small t).
    alpha, sigma = sched.alpha(tb), jnp.sqrt(sched.one_minus_alpha_bars[tb])
    return parameterization.from_eps("x0", eps, x_t, alpha, sigma)

  ab_last = sched.alpha_bars[T - 1]
  prior = _sum_except_batch(_normal_kl(jnp.sqrt(ab_last) * x0, jnp.log1p(-ab_last), 0.0, 0.0))

  def diffusion_term(total, t):
    x_t, tb = latent(t)
    mean, _, _ = schedules.q_posterior(sched, x0, x_t, tb)
    model_mean, _, _ = schedules.q_posterior(sched, x0_hat(x_t, tb), x_t, tb)
    kl = _normal_kl(mean, jnp.log(sched.posterior_variances[t]), model_mean, jnp.log(var_table[t]))
    return total + _sum_except_batch(kl), None

  diffusion, _ = jax.lax.scan(diffusion_term, jnp.zeros((n,), jnp.float32),
                              jnp.arange(1, T, dtype=jnp.int32))

  # At t = 0 the posterior mean is x0_hat exactly (abar_{-1} = 1): used directly.
  x_1, tb0 = latent(0)
  decoder = -_sum_except_batch(discretized_gaussian_log_prob(
      x0, x0_hat(x_1, tb0), jnp.sqrt(sched.betas[0]), num_bins))

  terms = {"prior": prior, "diffusion": diffusion, "decoder": decoder}
  terms = {k: v * to_bpd for k, v in terms.items()}
  terms["total"] = terms["prior"] + terms["diffusion"] + terms["decoder"]
  return terms
