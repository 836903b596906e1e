"""Likelihoods against closed forms: PF-ODE log-density, divergence estimators, DDPM bound."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.core import likelihood
from diffusion.core import schedules
from diffusion.core import sdes

pytestmark = pytest.mark.usefixtures("strict_ranks")

LN2 = math.log(2.0)


def _phi(x):
  """Standard normal CDF in float64, independent of JAX."""
  return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _log_normal(x, mean, var):
  """``log N(x; mean, var I)`` per row of ``x [B, D]``, float64 numpy."""
  x = np.asarray(x, np.float64)
  return -0.5 * np.sum((x - mean) ** 2, -1) / var - 0.5 * x.shape[-1] * np.log(2 * np.pi * var)


def gaussian_score_fn(sde, mu, s):
  """Exact score of ``p_t = N(alpha mu, (alpha^2 s^2 + std^2) I)`` for data ``N(mu, s^2 I)``."""
  mu = jnp.asarray(mu, jnp.float32)[None, :]

  def score_fn(x, t):
    alpha, std = sde.marginal_coeffs(t)
    alpha, std = alpha[:, None], std[:, None]
    return -(x - alpha * mu) / (alpha**2 * s**2 + std**2)

  return score_fn


def _coeffs(sde, t):
  alpha, std = sde.marginal_coeffs(jnp.full((1,), t, jnp.float32))
  return float(alpha[0]), float(std[0])


# ---------------------------------------------------------------- PF-ODE log-density
MU, S = np.array([0.5, -0.3]), 0.4
# Test points x = mu + s w, |w_i| <= 1.5.
W = np.array([[0.0, 0.0], [1.0, 1.0], [-1.5, -1.0], [1.5, -1.5]])
X = MU + S * W
SDES = {
    "vp": sdes.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": sdes.SubVPSDE(beta_min=0.1, beta_max=20.0),
    "ve": sdes.VESDE(sigma_min=0.01, sigma_max=100.0),
}


def _exact_ode_answer(sde, x, mu, cov, eps):
  """What the PF-ODE returns for data N(mu, cov), exactly, and its end point z (float64).

  The marginal at t is N(alpha mu, Sigma_t), Sigma_t = alpha^2 cov + std^2 I;
  the flow maps x_eps to z = alpha_1 mu + Sigma_1^{1/2} Sigma_eps^{-1/2}
  (x - alpha_eps mu) (all Sigma_t commute), and the ODE returns
  log p_eps(x) - log p_1(z) + prior_logp(z).
  """
  (a0, s0), (a1, s1) = _coeffs(sde, eps), _coeffs(sde, 1.0)
  lam, q = np.linalg.eigh(np.asarray(cov, np.float64))
  v0, v1 = a0**2 * lam + s0**2, a1**2 * lam + s1**2

  def logp(y, mean, var):  # rows of y [B, D] under N(mean, q diag(var) q^T)
    u = (y - mean) @ q
    return -0.5 * np.sum(u**2 / var + np.log(2 * np.pi * var), -1)

  x = np.asarray(x, np.float64)
  z = a1 * mu + ((x - a0 * mu) @ q * np.sqrt(v1 / v0)) @ q.T
  prior = np.asarray(sde.prior_logp(jnp.asarray(z, jnp.float32)), np.float64)
  return logp(x, a0 * mu, v0) - logp(z, a1 * mu, v1) + prior, z


@pytest.mark.parametrize("name", sorted(SDES))
def test_pf_ode_log_density_of_gaussian_data(name):
  sde, eps, D = SDES[name], 1e-5, 2
  fn = jax.jit(lambda x, rng: likelihood.log_likelihood(
      gaussian_score_fn(sde, MU, S), sde, x, rng, eps=eps, divergence="exact"))
  logp, z, stats = fn(jnp.asarray(X, jnp.float32), jax.random.key(0))
  logp, z = np.asarray(logp, np.float64), np.asarray(z, np.float64)
  assert bool(stats["reached_end"]) and 0 < int(stats["nfe"]) < 1000

  # (a) Against the data density itself: 1e-2 nats/dim. Two known offsets
  # besides solver error, both evaluated for these points (float64, with the
  # exact flow map for z): the start density p_eps differs from p_0
  # (|offset| <= 3e-6 nats/dim for VP/sub-VP; 4e-4 for VE, whose p_eps carries
  # sigma(eps)^2 ~ 1e-4 of extra variance), and the prior differs from the
  # true t = 1 marginal N(alpha_1 mu, ...) (VP/sub-VP alpha_1 = 6.6e-3:
  # <= 3.9e-3 nats/dim; VE ~ mu.w/sigma_max: <= 6.0e-3). The sum is
  # <= 5.7e-3 nats/dim, leaving > 4e-3 for the solver (observed <= 1e-4).
  exact = _log_normal(X, MU, S**2)
  np.testing.assert_allclose(logp / D, exact / D, rtol=0, atol=1e-2)

  # (b) Against the ODE's exact answer (both offsets included exactly), only
  # the solver error is left. rk45 keeps each step's local error <= rtol |y|
  # = 1e-5 |y|, over <= 20 accepted steps here (nfe/6), with |delta| <= 10
  # nats: worst case 20 * 1e-5 * 10 nats / 2 dims = 1e-3 nats/dim (observed
  # <= 5e-5).
  ref, z_exact = _exact_ode_answer(sde, X, MU, S**2 * np.eye(2), eps)
  np.testing.assert_allclose(logp / D, ref / D, rtol=0, atol=1e-3)
  # z is exact up to the same 20 steps * 1e-5 relative error: 2e-4 |z|,
  # |z| <= 3 sd_1.
  a_1, s_1 = _coeffs(sde, 1.0)
  sd_1 = math.hypot(a_1 * S, s_1)
  np.testing.assert_allclose(z, z_exact, rtol=0, atol=6e-4 * sd_1)


def test_fixed_step_pf_ode_converges_at_second_order_for_heun():
  # Heun is order 2: halving h divides the error by ~4. The ratio of errors at
  # 20 and 40 steps lies in [3, 5] (the error constant changes by O(h)),
  # measured against the ODE's exact answer.
  sde = SDES["vp"]
  x = jnp.asarray(X, jnp.float32)
  score_fn = gaussian_score_fn(sde, MU, S)
  ref, _ = _exact_ode_answer(sde, X, MU, S**2 * np.eye(2), 1e-5)
  errs = []
  for n in (20, 40):
    logp, _, stats = jax.jit(lambda x: likelihood.log_likelihood(
        score_fn, sde, x, jax.random.key(0), method="heun", num_steps=n,
        divergence="exact"))(x)
    assert int(stats["nfe"]) == 2 * n
    errs.append(np.max(np.abs(np.asarray(logp, np.float64) - ref)))
  # Both errors sit far above float32 rounding (~1e-5 nats), so the ratio
  # measures truncation error (observed 0.032 and 0.0075, ratio 4.3).
  assert errs[1] > 1e-4, errs
  assert 3.0 <= errs[0] / errs[1] <= 5.0, errs


def test_held_fixed_hutchinson_probe_is_unbiased_over_the_solve():
  # Correlated Gaussian data: the drift's Jacobian is not diagonal, so each
  # Rademacher probe gives a different answer. The probe is held fixed over
  # the solve and all J(t) commute (functions of one matrix), so
  # E_v[int v^T J v dt] = int tr J dt: the mean over n = 2000 copies (each its
  # own probe) is within 3 SE of the ODE's exact answer, plus the solver
  # bound of 1e-3 nats/dim x 2 dims.
  sde = SDES["vp"]
  mu, cov = np.array([0.2, -0.1]), np.array([[0.16, 0.12], [0.12, 0.25]])
  lam, q = np.linalg.eigh(cov)
  lam_j, q_j, mu_j = (jnp.asarray(v, jnp.float32) for v in (lam, q, mu))

  def score_fn(x, t):  # -Sigma_t^{-1} (x - alpha mu), Sigma_t = q diag(alpha^2 lam + std^2) q^T
    alpha, std = sde.marginal_coeffs(t)
    var = alpha[:, None] ** 2 * lam_j[None] + std[:, None] ** 2
    return -(((x - alpha[:, None] * mu_j[None]) @ q_j) / var) @ q_j.T

  n, x1 = 2000, np.array([[0.5, 0.3]])
  x = jnp.broadcast_to(jnp.asarray(x1, jnp.float32), (n, 2))
  est = jax.jit(lambda x: likelihood.log_likelihood(score_fn, sde, x, jax.random.key(0))[0])(x)
  est = np.asarray(est, np.float64)
  ref = _exact_ode_answer(sde, x1, mu, cov, 1e-5)[0][0]
  assert est.std() > 1e-3  # the probes do make a difference
  se = est.std(ddof=1) / math.sqrt(n)
  assert abs(est.mean() - ref) <= 3 * se + 2e-3, (est.mean(), ref, se)


# ---------------------------------------------------------------- divergence
A3 = np.array([[0.9, -0.4, 0.3], [0.5, 1.2, -0.7], [-0.6, 0.8, 0.4]], np.float32)
X3 = np.array([0.3, -0.5, 0.8], np.float32)


def _tanh_fn(x, t):
  return jnp.tanh(x @ jnp.asarray(A3).T + t[:, None])


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
  # d tanh(Ax + t)_i / dx_i = (1 - tanh^2(u_i)) A_ii with u = Ax + t.
  t = 0.2
  u = A3.astype(np.float64) @ X3 + t
  exact = float(np.sum((1.0 - np.tanh(u) ** 2) * np.diag(A3)))
  # n copies of one x: each example gets its own probe, so the [n] outputs are
  # n independent single-probe estimates of the same divergence.
  n = 10_000
  x = jnp.broadcast_to(jnp.asarray(X3)[None], (n, 3))
  tt = jnp.full((n,), t, jnp.float32)
  div = jax.jit(lambda x, t, method: likelihood.divergence(
      _tanh_fn, x, t, jax.random.key(1), method=method, probe=probe), static_argnums=2)
  est = np.asarray(div(x, tt, "hutchinson"), np.float64)
  se = est.std(ddof=1) / math.sqrt(n)
  assert est.std() > 0.05  # J is not diagonal: single probes do differ.
  assert abs(est.mean() - exact) <= 3 * se, (est.mean(), exact, se)
  # The exact method agrees with the closed form to float32 rounding of O(1) terms.
  np.testing.assert_allclose(div(x[:2], tt[:2], "exact"), [exact, exact], rtol=0, atol=1e-5)


def test_exact_divergence_of_linear_map_is_trace_on_image_shaped_input():
  a = np.asarray(jax.random.normal(jax.random.key(2), (6, 6)), np.float32)
  fn = lambda x, t: (x.reshape(x.shape[0], 6) @ jnp.asarray(a).T).reshape(x.shape)
  x = jax.random.normal(jax.random.key(3), (3, 2, 3, 1))
  div = jax.jit(lambda x: likelihood.divergence(fn, x, jnp.zeros(3), jax.random.key(0),
                                                method="exact"))(x)
  assert div.shape == (3,)
  # Sum of 6 O(1) float32 diagonal entries: error <= 6 * 1.2e-7 * |a_ii|max.
  np.testing.assert_allclose(div, np.full(3, np.trace(a)), rtol=0, atol=1e-5)


def test_rademacher_is_exact_for_diagonal_jacobians_and_probes_average():
  n = 4000
  x = jax.random.normal(jax.random.key(4), (n, 2))
  t = jnp.zeros(n)
  # Elementwise map: J diagonal, v^T J v = sum_i J_ii v_i^2 = tr J for v_i = +-1.
  fn = lambda x, t: jnp.sin(x)
  div = jax.jit(lambda x: likelihood.divergence(fn, x, t, jax.random.key(5)))(x)
  np.testing.assert_allclose(div, jnp.sum(jnp.cos(x), -1), rtol=0, atol=1e-6)
  # Linear map in 2-D: v^T A v = tr A + (A12 + A21) v1 v2, so the mean of k
  # Rademacher probes has variance (A12 + A21)^2 / k exactly. Its sample
  # variance over n has relative SE sqrt((kurt - 1)/n) with kurt = 3 - 2/k
  # = 2.5 for k = 4: 0.019, so 3 SE = 0.06.
  a = jnp.asarray([[1.0, 0.7], [-0.2, 0.5]])
  lin = lambda x, t: x @ a.T
  est = jax.jit(lambda x: likelihood.divergence(lin, x, t, jax.random.key(6), num_probes=4))(x)
  est = np.asarray(est, np.float64)
  np.testing.assert_allclose(est.mean(), 1.5, atol=3 * 0.5 / math.sqrt(4 * n))
  assert abs(est.var(ddof=1) / (0.5**2 / 4) - 1.0) <= 0.06


# ---------------------------------------------------------------- bits per dim
def test_bits_per_dim_and_num_bins_offset():
  sde = SDES["vp"]
  score_fn = gaussian_score_fn(sde, MU, S)
  x = jnp.asarray(X, jnp.float32)
  kw = dict(method="euler", num_steps=8, divergence="hutchinson")

  @jax.jit
  def run(x, rng):
    logp = likelihood.log_likelihood(score_fn, sde, x, rng, **kw)[0]
    return (logp, likelihood.bits_per_dim(score_fn, sde, x, rng, **kw),
            likelihood.bits_per_dim(score_fn, sde, x, rng, num_bins=256, **kw),
            likelihood.bits_per_dim(score_fn, sde, x, rng, num_bins=2, **kw))

  logp, bpd, bpd256, bpd2 = (np.asarray(v, np.float64) for v in run(x, jax.random.key(0)))
  # float32 values of size ~10: rounding ~1e-6.
  np.testing.assert_allclose(bpd, -logp / (2 * LN2), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(bpd256 - bpd, math.log2(128), rtol=0, atol=1e-5)
  np.testing.assert_allclose(bpd2, bpd, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- DDPM bound
def _eps_fn_zero(x, t):
  return jnp.zeros_like(x)


@pytest.mark.parametrize("schedule", ["ddpm", "short"])
def test_vlb_prior_term_is_analytic_kl(schedule):
  if schedule == "ddpm":
    betas = schedules.linear_betas(1000)
  else:  # alpha_bar_T ~ 0.12: a prior term far from 0
    betas = schedules.linear_betas(20, 0.01, 0.2)
  sched = schedules.from_betas(betas)
  x0 = np.array([[0.9, -1.0, 0.1], [0.0, 0.5, -0.3]], np.float32)
  out = jax.jit(lambda x: likelihood.ddpm_vlb(_eps_fn_zero, sched, x, jax.random.key(0)))(
      jnp.asarray(x0))
  ab = float(sched.alpha_bars[-1])  # the table's float32 value, in float64 from here on
  mean, var = math.sqrt(ab) * x0.astype(np.float64), 1.0 - ab
  kl = 0.5 * np.sum(var + mean**2 - 1.0 - math.log(var), -1)
  # Relative 1e-5 (float32 arithmetic on O(1) terms), plus 1e-9 bits/dim for
  # the abar_T^2/2 ~ 1e-9 variance part of the DDPM schedule's tiny prior.
  np.testing.assert_allclose(out["prior"], kl / (3 * LN2), rtol=1e-5, atol=1e-9)


C = np.array([[(2 * 100 + 1) / 256 - 1, 0.3], [-1.0, 1.0], [0.5, -0.75]], np.float32)


def _point_mass_eps_fn(sched, c):
  """Exact eps for data = the single point c (per example)."""
  c = jnp.asarray(c)

  def eps_fn(x, t):
    ab, one_minus_ab = sched.alpha_bars[t][:, None], sched.one_minus_alpha_bars[t][:, None]
    return (x - jnp.sqrt(ab) * c) / jnp.sqrt(one_minus_ab)

  return eps_fn


def _bin_log_mass(c, mean, std, k_bins):
  """float64 ``log P(bin holding c)`` under N(mean, std^2), bins as in Ho et al. Sec. 3.3."""
  k = min(max(math.floor((c + 1.0) * k_bins / 2), 0), k_bins - 1)
  hi = 1.0 if k == k_bins - 1 else _phi((2 * (k + 1) / k_bins - 1 - mean) / std)
  lo = 0.0 if k == 0 else _phi((2 * k / k_bins - 1 - mean) / std)
  return math.log(hi - lo)


def test_vlb_point_mass_data():
  sched = schedules.get("linear", num_steps=1000)
  eps_fn = _point_mass_eps_fn(sched, C)
  vlb = jax.jit(lambda x, rng: [likelihood.ddpm_vlb(eps_fn, sched, x, rng, variance=v)
                                 for v in ("beta_tilde", "beta")])
  out, out_b = vlb(jnp.asarray(C), jax.random.key(7))
  out = {k: np.asarray(v, np.float64) for k, v in out.items()}
  # x0_hat = c up to float32 rounding (~1e-7 / sqrt(abar_t)), so each model
  # mean equals the true posterior mean to <= 1e-8 and every KL (same
  # variance) is <= 0.5 * (1e-8)^2 / beta_tilde_1 ~ 1e-12; the sum of 999 terms
  # is far below 1e-6 bits/dim.
  np.testing.assert_allclose(out["diffusion"], 0.0, rtol=0, atol=1e-6)
  np.testing.assert_allclose(out["total"], out["prior"] + out["decoder"], rtol=1e-6, atol=1e-6)
  # Decoder: bin mass around the mean c (x0_hat = c) with std sqrt(beta_0) = 0.01,
  # independently in float64. float32 rounding moves the mean by ~1e-7 = 1e-5 std,
  # changing log P by ~1e-5 * pdf/P <= 1e-4 nats: atol 1e-4 bits/dim.
  std = math.sqrt(float(sched.betas[0]))
  dec = [-sum(_bin_log_mass(float(ci), float(ci), std, 256) for ci in row) / (2 * LN2) for row in C]
  np.testing.assert_allclose(out["decoder"], dec, rtol=0, atol=1e-4)
  assert np.all(out["decoder"] > 0.1)  # bins narrower than the decoder std: a real check

  # variance="beta": the means still agree, so each term is the variance-only
  # KL 0.5 (log(beta/beta_tilde) + beta_tilde/beta - 1) per dim, computed here
  # in float64 from the schedule's float32 tables. float32 evaluation of ~2000
  # O(1)-cancelling terms: error <= 2000 * 6e-8 nats, i.e. < 1e-4 bits/dim.
  b = np.asarray(sched.betas, np.float64)[1:]
  bt = np.asarray(sched.posterior_variances, np.float64)[1:]
  ref = np.sum(0.5 * (np.log(b / bt) + bt / b - 1.0)) / LN2  # D * (...) / (D ln 2)
  np.testing.assert_allclose(out_b["diffusion"], np.full(3, ref), rtol=0, atol=1e-4)
  assert ref > 0.1


def test_vlb_bounds_discrete_nll_of_gaussian_data():
  # Data: N(mu, s^2) per dim, quantised to K = 256 bins and placed at the bin
  # centres; mu and s keep the data 4 s inside [-1, 1], so the end bins hold
  # < 1e-4 of the mass and the Gaussian model is the right one. The model's
  # eps is exact for the continuous Gaussian. E[VLB] >= E[-log2 p_model]
  # >= H(data) = E[-log2 P(k)], per example: mean(VLB - NLL) >= -3 SE.
  mu, s, K, D, n = np.array([0.2, -0.1]), 0.25, 256, 2, 1024
  rng = np.random.default_rng(0)
  k = np.clip(np.floor((rng.normal(mu, s, (n, D)) + 1) * K / 2), 0, K - 1)
  x0 = (2 * k + 1) / K - 1
  lo, hi = 2 * k / K - 1, 2 * (k + 1) / K - 1
  mass = np.vectorize(_phi)((hi - mu) / s) - np.vectorize(_phi)((lo - mu) / s)
  nll = -np.sum(np.log2(mass), -1) / D  # exact discrete NLL, bits/dim

  sched = schedules.get("linear", num_steps=1000)

  def eps_fn(x, t):
    ab, one_minus_ab = sched.alpha_bars[t][:, None], sched.one_minus_alpha_bars[t][:, None]
    return jnp.sqrt(one_minus_ab) * (x - jnp.sqrt(ab) * jnp.asarray(mu, jnp.float32)[None]) / (
        ab * s**2 + one_minus_ab)

  vlb = jax.jit(lambda x, r: {v: likelihood.ddpm_vlb(eps_fn, sched, x, r, variance=v)["total"]
                              for v in ("beta", "beta_tilde")})
  totals = {k_: np.asarray(v, np.float64) for k_, v in vlb(jnp.asarray(x0, jnp.float32),
                                                          jax.random.key(1)).items()}
  for variance, total in totals.items():
    gap = total - nll
    assert gap.mean() >= -3 * gap.std(ddof=1) / math.sqrt(n), (variance, gap.mean())
  # Meaningful: with variance="beta" the bound is tight (observed gap 0.045,
  # SE 0.03 bits/dim; "beta_tilde": 0.69), so a VLB in nats (x0.69), or
  # without its decoder or diffusion terms, would fall below the NLL. The gap
  # stays below 0.2 bits/dim (5 SE above the observed one).
  assert (totals["beta"] - nll).mean() < 0.2

  # The PF-ODE on dequantised data x = 2 (k + u)/K - 1 plus the log2(K/2)
  # offset estimates the same discrete NLL: its expected excess is the Jensen
  # gap of dequantisation, ~h^2/(24 s^2) = 4e-5 nats/dim for bin width h = 2/K,
  # plus solver error (<= 1e-3 nats/dim above); tolerance 3 SE + 2e-3 bits/dim.
  sde = SDES["vp"]
  xd = jnp.asarray(2 * (k + rng.uniform(size=k.shape)) / K - 1, jnp.float32)
  bpd = jax.jit(lambda x, r: likelihood.bits_per_dim(
      gaussian_score_fn(sde, mu, s), sde, x, r, num_bins=K, divergence="exact"))(
          xd, jax.random.key(2))
  ode_gap = np.asarray(bpd, np.float64) - nll
  assert abs(ode_gap.mean()) <= 3 * ode_gap.std(ddof=1) / math.sqrt(n) + 2e-3, ode_gap.mean()
  # ... and the DDPM bound lies above it.
  d = totals["beta"] - np.asarray(bpd, np.float64)
  assert d.mean() >= -3 * d.std(ddof=1) / math.sqrt(n)


# ---------------------------------------------------------------- errors
def test_bad_inputs_name_the_argument():
  sde = SDES["vp"]
  score_fn = gaussian_score_fn(sde, MU, S)
  x, key = jnp.zeros((2, 2)), jax.random.key(0)
  t = jnp.zeros(2)
  sched = schedules.get("linear", num_steps=10)
  ident = lambda x, t: x
  with pytest.raises(ValueError, match="method.*'nope'.*exact"):
    likelihood.divergence(ident, x, t, key, method="nope")
  with pytest.raises(ValueError, match="probe.*rademacher"):
    likelihood.divergence(ident, x, t, key, probe="normal")
  with pytest.raises(ValueError, match="num_probes"):
    likelihood.divergence(ident, x, t, key, num_probes=0)
  with pytest.raises(ValueError, match="x must .*shape \\[B, ...\\]"):
    likelihood.divergence(ident, jnp.zeros(2), t, key)
  with pytest.raises(ValueError, match="t must have shape"):
    likelihood.divergence(ident, x, jnp.zeros(3), key)
  with pytest.raises(ValueError, match="exact.*D = 4097"):
    likelihood.divergence(ident, jnp.zeros((1, 4097)), jnp.zeros(1), key, method="exact")
  with pytest.raises(ValueError, match="fn must map"):
    likelihood.divergence(lambda x, t: x[:, :1], x, t, key)
  with pytest.raises(ValueError, match="method.*'rk4'.*rk45"):
    likelihood.log_likelihood(score_fn, sde, x, key, method="rk4")
  with pytest.raises(ValueError, match="divergence.*'exactly'"):
    likelihood.log_likelihood(score_fn, sde, x, key, divergence="exactly")
  with pytest.raises(ValueError, match="probe"):
    likelihood.log_likelihood(score_fn, sde, x, key, probe="uniform")
  with pytest.raises(ValueError, match="eps"):
    likelihood.log_likelihood(score_fn, sde, x, key, eps=0.0)
  with pytest.raises(ValueError, match="num_steps"):
    likelihood.log_likelihood(score_fn, sde, x, key, method="euler", num_steps=0)
  with pytest.raises(ValueError, match="x must"):
    likelihood.bits_per_dim(score_fn, sde, jnp.zeros(4), key)
  with pytest.raises(ValueError, match="num_bins"):
    likelihood.bits_per_dim(score_fn, sde, x, key, num_bins=1)
  with pytest.raises(ValueError, match="num_bins"):
    likelihood.ddpm_vlb(_eps_fn_zero, sched, x, key, num_bins=1)
  with pytest.raises(ValueError, match="variance.*beta_tilde"):
    likelihood.ddpm_vlb(_eps_fn_zero, sched, x, key, variance="sigma")
  with pytest.raises(ValueError, match="x0 must"):
    likelihood.ddpm_vlb(_eps_fn_zero, sched, jnp.zeros(3), key)
  with pytest.raises(ValueError, match="eps_fn must return"):
    likelihood.ddpm_vlb(lambda x, t: x[:, :1], sched, x, key)
