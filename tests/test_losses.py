"""Losses against closed forms: zero for an exact model of point-mass data,
the irreducible error for Gaussian data, and the time samplers' layout."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.core import losses
from diffusion.core import parameterization as P
from diffusion.core import schedules
from diffusion.core import sdes

SCHED = schedules.get("linear", num_steps=1000)
C = jnp.array([0.3, -0.7, 0.1, 0.9])  # point-mass data


def _exact_point_model(kind, coeffs):
  """For data = C (a point mass), eps = (x_t - alpha C) / sigma exactly."""
  def model_fn(params, x, t, rng):
    alpha, sigma = coeffs(t)
    eps = (x - alpha[:, None] * C) / sigma[:, None]
    return P.from_eps(kind, eps, x, alpha, sigma)
  return model_fn


@pytest.mark.parametrize("prediction", losses.DISCRETE_PREDICTIONS)
@pytest.mark.parametrize("weighting", losses.DISCRETE_WEIGHTINGS)
def test_discrete_loss_is_zero_for_the_exact_model(prediction, weighting):
  batch = {"image": jnp.tile(C, (64, 1))}
  model = _exact_point_model(prediction, lambda t: P.discrete_coeffs(SCHED, t))
  loss, metrics = losses.discrete_loss(None, batch, jax.random.PRNGKey(0), model_fn=model, sched=SCHED,
                                       prediction=prediction, weighting=weighting)
  # Float32: eps recovered from x_t = alpha C + sigma eps with |x_t| <= ~4 and
  # sigma >= 0.01 (t = 0) has error <= ~4 * 6e-8 / 0.01 = 2.4e-5; squared ~1e-9.
  assert float(loss) < 1e-8 and float(metrics["mse"]) < 1e-8
  # A wrong model (off by 0.1 everywhere) gives exactly 0.01 unweighted MSE.
  wrong = lambda p, x, t, r: model(p, x, t, r) + 0.1
  _, m = losses.discrete_loss(None, batch, jax.random.PRNGKey(0), model_fn=wrong, sched=SCHED, prediction=prediction)
  np.testing.assert_allclose(m["mse"], 0.01, rtol=1e-3)


@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.SubVPSDE(), sdes.VESDE(0.01, 50.0)], ids=["vp", "subvp", "ve"])
@pytest.mark.parametrize("prediction", losses.CONTINUOUS_PREDICTIONS)
def test_continuous_loss_is_zero_for_the_exact_model(sde, prediction):
  batch = {"image": jnp.tile(C, (64, 1))}
  model = _exact_point_model(prediction, sde.marginal_coeffs)
  for weighting in losses.CONTINUOUS_WEIGHTINGS:
    loss, _ = losses.continuous_loss(None, batch, jax.random.PRNGKey(1), model_fn=model, sde=sde,
                                     prediction=prediction, weighting=weighting, eps=1e-3)
    # Relative float32 error of the recovered eps <= 1e-4 at t >= 1e-3; the
    # likelihood weight g^2/std^2 is at most ~2e3 (VP at t = 1e-3), so <= 1e-4.
    assert float(loss) < 1e-4, (weighting, float(loss))


def test_discrete_eps_loss_equals_irreducible_error_for_gaussian_data():
  """For x0 ~ N(mu, s^2) and the exact eps predictor at fixed t, E||eps - E[eps|x_t]||^2
  per dim = ab s^2 / (ab s^2 + 1 - ab) (posterior variance of eps). 3 SE on 100k."""
  mu, s, t_fix = 0.5, 0.3, 400
  ab = float(SCHED.alpha_bars[t_fix])
  sched_one = schedules.from_betas(np.full(1, 1 - ab))  # one step whose alpha_bar is ab
  def model(params, x, t, rng):
    return math.sqrt(1 - ab) * (x - math.sqrt(ab) * mu) / (ab * s**2 + 1 - ab)
  n = 100_000
  x0 = mu + s * jax.random.normal(jax.random.PRNGKey(2), (n, 1))
  _, m = losses.discrete_loss(None, {"image": x0}, jax.random.PRNGKey(3), model_fn=model, sched=sched_one)
  expect = ab * s**2 / (ab * s**2 + 1 - ab)
  # Per-example squared error of a Gaussian residual: variance 2 expect^2 -> SE = expect sqrt(2/n).
  assert abs(float(m["mse"]) - expect) < 3 * expect * math.sqrt(2 / n)


def test_min_snr_weights():
  snr = jnp.array([0.5, 5.0, 50.0])
  np.testing.assert_allclose(losses.min_snr_weight(snr, 5.0, "x0"), [0.5, 5.0, 5.0])
  np.testing.assert_allclose(losses.min_snr_weight(snr, 5.0, "eps"), [1.0, 1.0, 0.1])
  np.testing.assert_allclose(losses.min_snr_weight(snr, 5.0, "v"), [0.5 / 1.5, 5 / 6, 5 / 51], rtol=1e-6)


def test_time_sampling():
  t = np.sort(np.asarray(losses.sample_time(jax.random.PRNGKey(0), 8, 1e-5, antithetic=True)))
  # Low-discrepancy: exactly one t per 1/8 of the interval, equally spaced.
  np.testing.assert_allclose(np.diff(t), (1 - 1e-5) / 8, rtol=1e-5)
  u = np.asarray(losses.sample_time(jax.random.PRNGKey(0), 100_000, 0.1))
  assert u.min() >= 0.1 and u.max() <= 1.0
  assert abs(u.mean() - 0.55) < 3 * 0.9 / math.sqrt(12 * 100_000)  # SE of a uniform mean


def test_bad_names():
  with pytest.raises(ValueError, match=r"unknown prediction 'score'.*'eps', 'x0', 'v'"):
    losses.discrete_loss(None, {"image": jnp.zeros((2, 1))}, jax.random.PRNGKey(0),
                         model_fn=lambda *a: a[1], sched=SCHED, prediction="score")
  with pytest.raises(ValueError, match=r"unknown weighting 'snr'"):
    losses.continuous_loss(None, {"image": jnp.zeros((2, 1))}, jax.random.PRNGKey(0),
                           model_fn=lambda *a: a[1], sde=sdes.VPSDE(), weighting="snr")
