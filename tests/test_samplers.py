"""Every sampler against closed-form answers (Gaussian and Gaussian-mixture data).

Statistical checks use 3 standard errors (SE) of the sample statistic:
SE(mean) = std / sqrt(n); SE(var) = sqrt((m4 - var^2) / n), which for a
Gaussian is var * sqrt(2 / n). Where a sampler has a known discretisation bias
the allowance is stated beside the assertion with its source.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.core import schedules
from diffusion.core import sdes
from diffusion.core import samplers

from closed_form import Mixture, gaussian, gaussian_flow_map

MU, S = 0.5, 0.3
DATA = gaussian([MU], S)
SCHED = schedules.get("linear", num_steps=1000)
KEY = jax.random.PRNGKey(0)


def _se_mean(x):
  return x.std() / math.sqrt(x.size)


def _se_var(x):
  m = x - x.mean()
  return math.sqrt((np.mean(m**4) - np.mean(m**2) ** 2) / x.size)


def _ddpm_chain_moments(variance):
  """Exact mean/var of DDPM's output for Gaussian data with the exact eps (float64).

  With eps affine in x_t, each step is x_{t-1} = A x_t + B + sigma_t z, so
  m <- A m + B and v <- A^2 v + sigma_t^2, starting from N(0, 1).
  """
  b = np.linspace(1e-4, 0.02, 1000)
  ab = np.cumprod(1 - b)
  ab_prev = np.concatenate([[1.0], ab[:-1]])
  m, v = 0.0, 1.0
  for t in range(999, -1, -1):
    k = math.sqrt(1 - ab[t]) / (ab[t] * S**2 + 1 - ab[t])  # eps = k (x - sqrt(ab) mu)
    p = (1 - math.sqrt(1 - ab[t]) * k) / math.sqrt(ab[t])  # x0_hat = p x + q
    q = math.sqrt(1 - ab[t]) * k * MU
    c0 = b[t] * math.sqrt(ab_prev[t]) / (1 - ab[t])
    c1 = (1 - ab_prev[t]) * math.sqrt(1 - b[t]) / (1 - ab[t])
    A, B = c0 * p + c1, c0 * q
    var_t = 0.0 if t == 0 else (b[t] if variance == "beta" else b[t] * (1 - ab_prev[t]) / (1 - ab[t]))
    m, v = A * m + B, A * A * v + var_t
  return m, v


# ---------------------------------------------------------------------------
# DDPM and DDIM.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ddpm_reproduces_exact_chain_and_target(variance):
  n = 100_000
  x = np.asarray(samplers.ddpm(DATA.eps_fn(SCHED), SCHED, KEY, (n, 1), variance=variance), np.float64)
  m, v = _ddpm_chain_moments(variance)
  assert abs(x.mean() - m) < 3 * _se_mean(x)
  assert abs(x.var() - v) < 3 * _se_var(x)
  # The chain itself is biased: sigma_t^2 = beta_t over-disperses, beta_tilde_t
  # under-disperses (the two extremes of Ho et al. 2020, Sec. 3.2); at T = 1000
  # the exact chain std is within 1.5% of the target and the mean within 1e-3.
  assert (math.sqrt(v) > S) == (variance == "beta")
  assert abs(math.sqrt(v) - S) < 0.015 * S and abs(m - MU) < 1e-3


def test_ddim_eta1_full_grid_equals_ddpm_beta_tilde_step_for_step():
  """Same key: the same noise per step, and sigma_t^2 = beta_tilde_t, so the same samples.

  Float32 roundoff (~1e-7 relative per operation, a few operations per step,
  1000 contracting steps) bounds the difference by ~1e-4.
  """
  eps_fn = DATA.eps_fn(SCHED)
  a = samplers.ddim(eps_fn, SCHED, KEY, (2000, 1), num_steps=1000, eta=1.0)
  b = samplers.ddpm(eps_fn, SCHED, KEY, (2000, 1), variance="beta_tilde")
  np.testing.assert_allclose(a, b, atol=1e-4)
  c = samplers.ddim(eps_fn, SCHED, jax.random.PRNGKey(1), (2000, 1), num_steps=1000, eta=1.0)
  assert float(jnp.mean(jnp.abs(a - c))) > 0.1  # different keys, different noise


def test_ddim_eta0_is_deterministic_and_eta_adds_noise():
  eps_fn = DATA.eps_fn(SCHED)
  x_init = jax.random.normal(jax.random.PRNGKey(5), (64, 1))
  a = samplers.ddim(eps_fn, SCHED, jax.random.PRNGKey(1), (64, 1), num_steps=20, x_init=x_init)
  b = samplers.ddim(eps_fn, SCHED, jax.random.PRNGKey(2), (64, 1), num_steps=20, x_init=x_init)
  np.testing.assert_array_equal(a, b)
  # eta > 0 MUST add noise (diffusers' Flax DDIM does not): keys now matter.
  c = samplers.ddim(eps_fn, SCHED, jax.random.PRNGKey(1), (64, 1), num_steps=20, eta=0.5, x_init=x_init)
  d = samplers.ddim(eps_fn, SCHED, jax.random.PRNGKey(2), (64, 1), num_steps=20, eta=0.5, x_init=x_init)
  assert float(jnp.std(c - d)) > 0.05


def _fit_slope(steps, errors):
  return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def test_ddim_eta0_converges_first_order_to_the_exact_flow_map():
  """DDIM (eta = 0) integrates the probability-flow ODE to first order.

  Deterministic, so no sampling error: the error against the exact Gaussian
  flow map should fall as 1/S. A first-order method's fitted slope is -1 up
  to O(h) pre-asymptotic terms; over S = 20..160 those stay within +-0.15.
  """
  eps_fn = DATA.eps_fn(SCHED)
  x_init = jax.random.normal(jax.random.PRNGKey(7), (512, 1))
  steps, errs = [20, 40, 80, 160], []
  for S_ in steps:
    ab = float(SCHED.alpha_bars[samplers.ddim_timesteps(1000, S_)[-1]])
    exact = gaussian_flow_map(np.asarray(x_init), MU, S, math.sqrt(ab), math.sqrt(1 - ab), 1.0, 0.0)
    x = samplers.ddim(eps_fn, SCHED, KEY, (512, 1), num_steps=S_, x_init=x_init)
    errs.append(float(np.mean(np.abs(np.asarray(x) - exact))))
  assert abs(_fit_slope(steps, errs) + 1.0) < 0.15, errs


def test_ddim_inversion_round_trip_is_first_order():
  eps_fn = DATA.eps_fn(SCHED)
  x0 = MU + S * jax.random.normal(jax.random.PRNGKey(9), (1000, 1))
  steps, errs = [100, 200, 500, 1000], []
  for S_ in steps:
    xT = samplers.ddim_invert(eps_fn, SCHED, x0, num_steps=S_)
    back = samplers.ddim(eps_fn, SCHED, KEY, x0.shape, num_steps=S_, x_init=xT)
    errs.append(float(jnp.mean(jnp.abs(back - x0))))
  # First order: slope -1 (+-0.15 as above), i.e. ~10x smaller error at S = 1000 than S = 100.
  assert abs(_fit_slope(steps, errs) + 1.0) < 0.15, errs
  assert errs[-1] < 5e-3 and errs[0] / errs[-1] > 8, errs


# ---------------------------------------------------------------------------
# SDE samplers.
# ---------------------------------------------------------------------------

VE = sdes.VESDE(sigma_min=0.01, sigma_max=50.0)
STOCHASTIC = {
    "em-vp": (samplers.euler_maruyama, sdes.VPSDE(), {}),
    "em-subvp": (samplers.euler_maruyama, sdes.SubVPSDE(), {}),
    "em-ve": (samplers.euler_maruyama, VE, {}),
    "pc-rd-langevin-vp": (samplers.predictor_corrector, sdes.VPSDE(), {}),
    "pc-rd-langevin-ve": (samplers.predictor_corrector, VE, {}),
    "pc-ancestral-vp": (samplers.predictor_corrector, sdes.VPSDE(), dict(predictor="ancestral", corrector="none")),
    "pc-ancestral-ve": (samplers.predictor_corrector, VE, dict(predictor="ancestral", corrector="none")),
    "pc-em-ald-subvp": (samplers.predictor_corrector, sdes.SubVPSDE(), dict(predictor="euler_maruyama", corrector="ald")),
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_sde_sampler_reproduces_gaussian(name):
  """Mean and std of 100k samples at N = 1000 steps.

  Tolerance: 3 SE + allowances for the known biases.
  - Predictor discretisation, O(1/N) (test_euler_maruyama_weak_order_one):
    with 2M samples at N = 500 the predictors' biases were <= 6e-4 (mean) and
    <= 3.4e-4 (std), so <= 1e-3 covers N = 1000.
  - A Langevin-type corrector is unadjusted Langevin (ULA) with step
    eps = 2 snr^2 v (||z||^2 / ||score||^2 ~ v for Gaussian data). ULA on
    N(m, v) has stationary variance v / (1 - eps / 2v) = v / (1 - snr^2), so
    its std can be inflated by up to a factor 1/sqrt(1 - snr^2) (+1.3% at
    snr = 0.16), independent of N.
  """
  fn, sde, kw = STOCHASTIC[name]
  n = 100_000
  x = np.asarray(fn(DATA.score_fn(sde), sde, KEY, (n, 1), num_steps=1000, **kw), np.float64)
  alpha, std = (float(v[0]) for v in sde.marginal_coeffs(jnp.array([1e-3])))  # final time eps
  m, sd = alpha * MU, math.sqrt(alpha**2 * S**2 + std**2)
  corrected = fn is samplers.predictor_corrector and kw.get("corrector", "langevin") != "none"
  ula = sd * (1 / math.sqrt(1 - 0.16**2) - 1) if corrected else 0.0
  assert abs(x.mean() - m) < 3 * _se_mean(x) + 1e-3
  assert abs(x.std() - sd) < 3 * _se_var(x) / (2 * sd) + 1e-3 + ula  # SE(std) = SE(var) / (2 std)


def test_euler_maruyama_weak_order_one():
  """Error of the sample mean falls as 1/N (weak order 1).

  The fitted slope is a weighted sum of the log-errors, slope = sum_i w_i
  log(err_i); each log-error is uncertain by 3 SE_i / err_i (3 standard errors
  of the sample mean), so the slope is within sum_i |w_i| 3 SE_i / err_i of its
  noise-free value, plus 0.1 for pre-asymptotic curvature (the noise-free
  errors at N = 16, 32, 64 fall by factors 1.95 and 1.98).
  """
  sde = sdes.VPSDE()
  n, steps, errs, rel_se = 1_000_000, np.array([16, 32, 64]), [], []
  target = float(sde.marginal_coeffs(jnp.array([1e-3]))[0][0]) * MU
  for N in steps:
    x = np.asarray(samplers.euler_maruyama(DATA.score_fn(sde), sde, jax.random.PRNGKey(int(N)), (n, 1), num_steps=int(N)))
    errs.append(abs(x.mean() - target))
    rel_se.append(3 * _se_mean(x) / errs[-1])
  logn = np.log(steps)
  w = (logn - logn.mean()) / np.sum((logn - logn.mean()) ** 2)  # least-squares slope weights
  tol = 0.1 + float(np.sum(np.abs(w) * np.array(rel_se)))
  assert abs(_fit_slope(steps, errs) + 1.0) < tol, (errs, tol)


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2)])
def test_probability_flow_convergence_order(method, order):
  """Deterministic: error against the exact flow map falls as N^-order (+-0.15, pre-asymptotic)."""
  sde = sdes.VPSDE()
  eps = 1e-3
  x_init = jax.random.normal(jax.random.PRNGKey(3), (512, 1))
  (a1, s1), (ae, se) = [tuple(float(v[0]) for v in sde.marginal_coeffs(jnp.array([t]))) for t in (1.0, eps)]
  exact = gaussian_flow_map(np.asarray(x_init), MU, S, a1, s1, ae, se)
  steps, errs = [20, 40, 80, 160], []
  for N in steps:
    x = samplers.probability_flow(DATA.score_fn(sde), sde, KEY, (512, 1), num_steps=N, method=method, x_init=x_init)
    errs.append(float(np.mean(np.abs(np.asarray(x) - exact))))
  assert abs(_fit_slope(steps, errs) + order) < 0.15, errs


@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.SubVPSDE(), VE], ids=["vp", "subvp", "ve"])
def test_probability_flow_rk45_matches_exact_map(sde):
  """Adaptive RK45 with rtol = atol = 1e-5 lands on the exact map to ~1e-4 (10x the tolerances)."""
  x_init = sde.prior_sample(jax.random.PRNGKey(4), (256, 1))
  (a1, s1), (ae, se) = [tuple(float(v[0]) for v in sde.marginal_coeffs(jnp.array([t]))) for t in (1.0, 1e-3)]
  exact = gaussian_flow_map(np.asarray(x_init), MU, S, a1, s1, ae, se)
  x, stats = samplers.probability_flow_adaptive(DATA.score_fn(sde), sde, KEY, (256, 1),
                                                x_init=x_init)
  assert bool(stats["reached_end"])
  assert float(np.max(np.abs(np.asarray(x) - exact))) < 1e-4 * max(1.0, sde.prior_std / 10)
  assert 20 < int(stats["nfe"]) < 1000


# ---------------------------------------------------------------------------
# Mixture of Gaussians in 2-D: weights, mean and variance.
# ---------------------------------------------------------------------------

MIX = Mixture(np.array([0.5, 0.3, 0.2]), 0.7 * np.array([[-1.0, -1.0], [1.0, 0.5], [0.0, 1.2]]), np.full(3, 0.15))
VP = sdes.VPSDE()
MIX_SAMPLERS = {
    "ddpm": lambda: samplers.ddpm(MIX.eps_fn(SCHED), SCHED, KEY, (20_000, 2), variance="beta_tilde"),
    "ddim100": lambda: samplers.ddim(MIX.eps_fn(SCHED), SCHED, KEY, (20_000, 2), num_steps=100),
    "em-vp": lambda: samplers.euler_maruyama(MIX.score_fn(VP), VP, KEY, (20_000, 2), num_steps=500),
    "pc-ve": lambda: samplers.predictor_corrector(MIX.score_fn(VE), VE, KEY, (20_000, 2), num_steps=500),
    "pf-heun-vp": lambda: samplers.probability_flow(MIX.score_fn(VP), VP, KEY, (20_000, 2), num_steps=100),
}


@pytest.mark.parametrize("name", sorted(MIX_SAMPLERS))
def test_mixture_weights_mean_and_variance(name):
  x = np.asarray(MIX_SAMPLERS[name](), np.float64)
  n = x.shape[0]
  # Components are >= 1.1 apart with std 0.15 (>= 3.7 std from the midpoint), so
  # nearest-mean assignment mislabels < 1e-4 of true samples.
  k = np.argmin(((x[:, None] - MIX.means[None]) ** 2).sum(-1), axis=1)
  w = np.bincount(k, minlength=3) / n
  se_w = np.sqrt(MIX.weights * (1 - MIX.weights) / n)  # binomial SE
  assert np.all(np.abs(w - MIX.weights) < 3 * se_w), (w, se_w)
  true_mean = MIX.weights @ MIX.means
  true_var = MIX.weights @ (MIX.means**2 + MIX.stds[:, None] ** 2) - true_mean**2
  for d in range(2):
    assert abs(x[:, d].mean() - true_mean[d]) < 3 * _se_mean(x[:, d])
    # Discretisation allowance for the component spread: the deterministic
    # samplers at 100 steps shrink each component's std by <= 0.009 (measured),
    # changing the total variance by <= 2 * 0.15 * 0.009 = 2.7e-3.
    assert abs(x[:, d].var() - true_var[d]) < 3 * _se_var(x[:, d]) + 2.7e-3


# ---------------------------------------------------------------------------
# Structure: compilation, trajectories, errors.
# ---------------------------------------------------------------------------


def test_loop_is_a_scan_not_unrolled():
  """The traced program has the same size for T = 10 and T = 1000: one scan, no Python loop."""
  def size(T):
    sched = schedules.get("linear", num_steps=T)
    jaxpr = jax.make_jaxpr(lambda r: samplers.ddpm(DATA.eps_fn(sched), sched, r, (4, 1)))(KEY)
    return len(jaxpr.jaxpr.eqns), str(jaxpr).count("scan[")
  assert size(10) == size(1000)
  assert size(10)[1] >= 1


def test_jit_matches_eager_and_trajectory_shapes():
  eps_fn = DATA.eps_fn(SCHED)
  f = jax.jit(functools.partial(samplers.ddim, eps_fn, SCHED, shape=(8, 1), num_steps=25, return_trajectory=True))
  x, traj = f(KEY)
  x2, _ = samplers.ddim(eps_fn, SCHED, KEY, (8, 1), num_steps=25, return_trajectory=True)
  np.testing.assert_allclose(x, x2, atol=1e-6)
  assert traj["x"].shape == (25, 8, 1) and traj["x0"].shape == (25, 8, 1) and traj["t"].shape == (25,)
  np.testing.assert_array_equal(traj["x"][-1], x)
  assert int(traj["t"][0]) == 960 and int(traj["t"][-1]) == 0  # tau_i = i * 1000 // 25, reversed
  sde = sdes.VPSDE()
  _, ptraj = samplers.predictor_corrector(DATA.score_fn(sde), sde, KEY, (8, 1), num_steps=30, return_trajectory=True)
  assert ptraj["x"].shape == (30, 8, 1)
  np.testing.assert_allclose(ptraj["t"][jnp.array([0, -1])], [1.0, 1.0 - 29 * (1 - 1e-3) / 30], rtol=1e-6)
  _, ftraj = samplers.probability_flow(DATA.score_fn(sde), sde, KEY, (8, 1), num_steps=10, return_trajectory=True)
  # The last x0 estimate (Tweedie at t = eps) of Gaussian data is close to the sample itself.
  assert ftraj["x0"].shape == (10, 8, 1)
  assert float(jnp.max(jnp.abs(ftraj["x0"][-1] - ftraj["x"][-1]))) < 1e-2


def test_x_init_shape_and_names_are_validated():
  eps_fn = DATA.eps_fn(SCHED)
  sde = sdes.VPSDE()
  score_fn = DATA.score_fn(sde)
  cases = [
      (lambda: samplers.ddim(eps_fn, SCHED, KEY, (2, 1), num_steps=1001), r"num_steps=1001 exceeds the schedule's T=1000"),
      (lambda: samplers.ddim(eps_fn, SCHED, KEY, (2, 1), num_steps=0), r"num_steps must be an int >= 1"),
      (lambda: samplers.ddim(eps_fn, SCHED, KEY, (2, 1), eta=1.5), r"eta must lie in \[0, 1\]"),
      (lambda: samplers.ddim(eps_fn, SCHED, KEY, (2, 1), eta=-0.1), r"eta must lie in \[0, 1\]"),
      (lambda: samplers.ddpm(eps_fn, SCHED, KEY, (2, 1), variance="fixed"), r"unknown variance 'fixed'.*'beta', 'beta_tilde'"),
      (lambda: samplers.ddpm(eps_fn, SCHED, KEY, (2, 1), x_init=jnp.zeros((3, 1))), r"x_init has shape \(3, 1\) but shape is \(2, 1\)"),
      (lambda: samplers.predictor_corrector(score_fn, sde, KEY, (2, 1), predictor="heun"),
       r"unknown predictor 'heun'.*'ancestral', 'euler_maruyama', 'none', 'reverse_diffusion'"),
      (lambda: samplers.predictor_corrector(score_fn, sde, KEY, (2, 1), corrector="mala"),
       r"unknown corrector 'mala'.*'ald', 'langevin', 'none'"),
      (lambda: samplers.predictor_corrector(score_fn, sdes.SubVPSDE(), KEY, (2, 1), predictor="ancestral"),
       r"'ancestral' is defined for VPSDE and VESDE only"),
      (lambda: samplers.probability_flow(score_fn, sde, KEY, (2, 1), method="rk4"), r"unknown method 'rk4'.*'euler', 'heun', 'rk45'"),
      (lambda: samplers.euler_maruyama(score_fn, sde, KEY, (2, 1), eps=0.0), r"eps \(the final time\) must lie in \(0, 1\)"),
      (lambda: samplers.get("unipc"), r"unknown sampler 'unipc'.*'ddim', 'ddpm'"),
  ]
  for fn, msg in cases:
    with pytest.raises(ValueError, match=msg):
      fn()
