"""Discrete schedules, forward process and posterior against closed forms."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.core import schedules

NAMES = sorted(schedules.SCHEDULES)


def test_linear_endpoints_match_ddpm():
  s = schedules.get("linear", num_steps=1000)
  np.testing.assert_allclose(s.betas[jnp.array([0, -1])], [1e-4, 0.02], rtol=1e-6)
  np.testing.assert_allclose(s.alphas, 1.0 - s.betas, rtol=0, atol=0)
  # alpha_bar_T of DDPM's schedule: prod(1 - beta) = 4.04e-5 (float64 reference).
  ref = np.prod(1.0 - np.linspace(1e-4, 0.02, 1000))
  np.testing.assert_allclose(s.alpha_bars[-1], ref, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_alpha_bar_monotone_and_in_unit_interval(name):
  s = schedules.get(name, num_steps=1000)
  ab = np.asarray(s.alpha_bars)
  assert np.all(np.diff(ab) < 0), "alpha_bar must strictly decrease"
  assert 0 < ab[-1] and ab[0] < 1
  # Stored alpha_bar is the float64 product rounded once to float32 (rel. error 6e-8).
  np.testing.assert_allclose(ab, np.cumprod(1.0 - schedules.SCHEDULES[name](1000)), rtol=1.2e-7)


def test_cosine_matches_closed_form_and_is_clipped():
  T, s = 1000, 0.008
  sched = schedules.get("cosine", num_steps=T)
  f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
  expect = np.array([f(t + 1) / f(0) for t in range(T)])
  # Before the clip kicks in alpha_bar is exactly f(t+1)/f(0); float32 rounding
  # of a product of 1000 factors stays within 1e-5 relative.
  unclipped = np.asarray(sched.betas) < 0.999
  assert unclipped[:-1].all() and not unclipped[-1]
  np.testing.assert_allclose(np.asarray(sched.alpha_bars)[:-1], expect[:-1], rtol=1e-4, atol=1e-7)
  assert float(sched.betas[-1]) == pytest.approx(0.999, rel=1e-6)


def test_quadratic_and_sigmoid_endpoints():
  q = schedules.get("quadratic", num_steps=10)
  np.testing.assert_allclose(np.sqrt(q.betas), np.linspace(1e-2, 0.02**0.5, 10), rtol=1e-5)
  sg = np.asarray(schedules.get("sigmoid", num_steps=11).betas)
  # sigmoid(+-6) = 0.99753 / 0.00247, symmetric about the middle value.
  np.testing.assert_allclose(sg[5], (1e-4 + 0.02) / 2, rtol=1e-6)
  np.testing.assert_allclose(sg[0], 1e-4 + (0.02 - 1e-4) / (1 + math.exp(6)), rtol=1e-5)


def test_q_sample_matches_iterated_forward_steps():
  """Closed-form q(x_t|x_0) equals t applications of q(x_s|x_{s-1}) in distribution."""
  sched = schedules.get("linear", num_steps=1000)
  n, t = 100_000, 300
  x0 = jnp.full((n, 1), 0.7)
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  direct = schedules.q_sample(sched, x0, jnp.full((n,), t), jax.random.normal(key_a, x0.shape))

  def body(x, s):
    noise = jax.random.normal(jax.random.fold_in(key_b, s), x.shape)
    return schedules.q_step(sched, x, jnp.full((n,), s), noise), None

  iterated, _ = jax.lax.scan(body, x0, jnp.arange(t + 1))
  ab = float(sched.alpha_bars[t])
  mean, var = math.sqrt(ab) * 0.7, 1 - ab
  for x in (direct, iterated):
    x = np.asarray(x, np.float64)
    # SE of a sample mean: sqrt(var/n); of a Gaussian sample variance: var*sqrt(2/(n-1)).
    assert abs(x.mean() - mean) < 3 * math.sqrt(var / n)
    assert abs(x.var() - var) < 3 * var * math.sqrt(2 / (n - 1))
  # The two samples against each other: SE of a difference is sqrt(2) times larger.
  assert abs(np.mean(direct) - np.mean(iterated)) < 3 * math.sqrt(2 * var / n)


def test_q_posterior_equals_gaussian_conjugacy():
  sched = schedules.get("cosine", num_steps=50)
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
  xt = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
  t = jnp.array([0, 1, 7, 20, 48, 49])
  mean, var, log_var = schedules.q_posterior(sched, x0, xt, t)
  ab = np.asarray(sched.alpha_bars, np.float64)
  b = np.asarray(sched.betas, np.float64)
  for i, ti in enumerate(np.asarray(t)):
    if ti == 0:  # x_{-1} is x_0 itself: a point mass at x_0.
      np.testing.assert_allclose(mean[i], x0[i], atol=1e-6)
      assert float(var[i].squeeze()) == 0.0
      assert np.isfinite(log_var[i]).all()
      continue
    # Prior x_{t-1}|x_0 ~ N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}); likelihood x_t|x_{t-1} ~ N(sqrt(1-b_t) x_{t-1}, b_t).
    prec = 1 / (1 - ab[ti - 1]) + (1 - b[ti]) / b[ti]
    m = (math.sqrt(ab[ti - 1]) * np.asarray(x0[i]) / (1 - ab[ti - 1])
         + math.sqrt(1 - b[ti]) * np.asarray(xt[i]) / b[ti]) / prec
    # Float32 tables: alpha_bar carries absolute error <= 6e-8, so 1 - alpha_bar
    # (and every coefficient divided by it) carries relative error 6e-8/(1 - ab);
    # allow 4x that (a few such factors) plus 2e-6 for the arithmetic.
    rtol = 4 * 6e-8 / (1 - ab[ti]) + 4 * 6e-8 / (1 - ab[ti - 1]) + 2e-6
    np.testing.assert_allclose(mean[i], m, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(var[i].squeeze(), 1 / prec, rtol=rtol)
    np.testing.assert_allclose(log_var[i].squeeze(), math.log(1 / prec), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_continuous_vp_identities(name):
  c = schedules.get_continuous(name)
  t = jnp.linspace(0.01, 0.99, 99)
  a, s = c.alpha(t), c.sigma(t)
  np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-6)
  np.testing.assert_allclose(c.log_snr(t), np.log(np.asarray(a, np.float64) ** 2 / np.asarray(s, np.float64) ** 2), rtol=1e-4, atol=1e-4)
  assert np.all(np.diff(np.asarray(c.log_snr(t))) < 0)


def test_discrete_and_continuous_linear_agree():
  """alpha_bar_t of linear DDPM ~ alpha((t+1)/T)^2 of LinearVP(0.1, 20).

  log alpha_bar_t = sum log(1 - b_s) = -sum b_s - sum b_s^2/2 - O(b^3), and the
  continuous exponent is the integral of beta, so
  log alpha_bar_t - 2 log alpha = -cumsum(b^2)/2 + r_t, where r_t is the Riemann
  error of the left sum against the integral: at most (t+1) * 0.5 (beta_max -
  beta_min) / T^2 <= 0.00995 for T = 1000, plus O(sum b^3) <= 3e-3.
  """
  T = 1000
  b = np.linspace(1e-4, 0.02, T)
  sched = schedules.get("linear", num_steps=T)
  t = (np.arange(T) + 1) / T
  diff = np.log(np.asarray(sched.alpha_bars, np.float64)) - 2 * np.asarray(schedules.LinearVP().log_alpha(t), np.float64)
  bound = (np.arange(T) + 1) * 0.5 * 19.9 / T**2 + np.cumsum(b**3) + 1e-5
  assert np.all(np.abs(diff + 0.5 * np.cumsum(b**2)) <= bound)


def test_discrete_and_continuous_cosine_agree():
  """Before clipping, discrete cosine alpha_bar_t is CosineVP.alpha((t+1)/T)^2 exactly."""
  T = 1000
  sched = schedules.get("cosine", num_steps=T)
  t = (np.arange(T - 10) + 1) / T
  np.testing.assert_allclose(sched.alpha_bars[: T - 10], schedules.CosineVP().alpha(t) ** 2, atol=1e-6)


def test_schedule_is_a_pytree_through_jit():
  sched = schedules.get("linear", num_steps=10)
  leaves = jax.tree.leaves(sched)
  assert len(leaves) == 2
  out = jax.jit(lambda s: s.alpha_bars[-1])(sched)
  assert float(out) == float(sched.alpha_bars[-1])


def test_bad_input_errors():
  with pytest.raises(ValueError, match=r"unknown schedule 'lin'.*'cosine'.*'linear'"):
    schedules.get("lin")
  with pytest.raises(ValueError, match="num_steps"):
    schedules.get("linear", num_steps=0)
  with pytest.raises(ValueError, match="bad keyword"):
    schedules.get("cosine", beta_start=0.1)
  with pytest.raises(ValueError, match="betas must lie in"):
    schedules.from_betas([0.5, 1.5])
  sched = schedules.get("linear", num_steps=10)
  x = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match=r"t must have shape \[B\] = \[4\]"):
    schedules.q_sample(sched, x, jnp.zeros((3,), jnp.int32), x)
  with pytest.raises(ValueError, match="noise shape"):
    schedules.q_sample(sched, x, jnp.zeros((4,), jnp.int32), jnp.zeros((4, 3)))
  with pytest.raises(ValueError, match="unknown continuous schedule"):
    schedules.get_continuous("quadratic")


def test_discrete_steps_are_a_grid_over_the_continuous_axis():
  """Step i sits at t = (i + 1) / T and `step_at` inverts that exactly; only the
  linear table has an SDE (`processes.sde_of`; how close its alpha is to
  alpha_bar is test_discrete_and_continuous_linear_agree's business)."""
  from diffusion.core import processes  # pylint: disable=g-import-not-at-top
  sched = schedules.get("linear", num_steps=100)
  t = sched.grid_times()
  np.testing.assert_array_equal(np.asarray(sched.step_at(t)), np.arange(100))
  np.testing.assert_array_equal(np.asarray(sched.step_at(jnp.array([0.0, 1.0, 2.0]))), [0, 99, 99])
  sde = processes.sde_of(sched)
  np.testing.assert_allclose([sde.beta_min, sde.beta_max], [100 * 1e-4, 100 * 0.02], rtol=1e-5)
  assert processes.sde_of(schedules.get("cosine", num_steps=100)) is None
