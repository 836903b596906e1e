"""eps / x0 / v / score conversions: exact round trips for every noise process."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.core import parameterization as P
from diffusion.core.denoiser import Denoiser
from diffusion.core import schedules
from diffusion.core import sdes

from closed_form import gaussian


def _coeffs():
  sched = schedules.get("cosine", num_steps=100)
  t_int = jnp.array([1, 30, 60, 98])
  t = jnp.array([0.05, 0.3, 0.6, 0.95])
  yield "discrete", P.discrete_coeffs(sched, t_int)
  for sde in (sdes.VPSDE(), sdes.SubVPSDE(), sdes.VESDE(0.01, 50.0)):
    yield type(sde).__name__, sde.marginal_coeffs(t)


@pytest.mark.parametrize("name,coeffs", list(_coeffs()), ids=lambda v: v if isinstance(v, str) else "")
def test_round_trips(name, coeffs, strict_ranks):
  alpha, sigma = coeffs
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  x0 = jax.random.normal(k1, (4, 3, 3, 2))
  eps = jax.random.normal(k2, x0.shape)
  a, s = schedules.broadcast_to(alpha, x0), schedules.broadcast_to(sigma, x0)
  x_t = a * x0 + s * eps
  truth = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s}
  # float32: each conversion is a few multiply-adds of O(1) quantities, but VE
  # at sigma = 50 divides by alpha^2 + sigma^2 = 2500 and recovers x0 from x_t of
  # size ~50: relative 1e-5 of |x_t| / alpha.
  scale = float(jnp.max(jnp.abs(x_t)))
  for src, dst in itertools.product(P.KINDS, P.KINDS):
    got = P.convert(truth[src], x_t, alpha, sigma, src=src, dst=dst)
    ref = truth[dst]
    tol = 1e-5 * max(1.0, scale) * float(jnp.max(1.0 / jnp.minimum(alpha, sigma)))
    np.testing.assert_allclose(got, ref, atol=tol, err_msg=f"{name}: {src}->{dst}")


def test_model_wrappers_produce_exact_eps_and_score():
  sched = schedules.get("linear", num_steps=1000)
  sde = sdes.VPSDE()
  data = gaussian([0.5, -0.2], 0.3)
  x = jax.random.normal(jax.random.PRNGKey(3), (5, 2))
  t_int = jnp.array([0, 10, 200, 600, 999])
  eps_true = data.eps_fn(sched)(x, t_int)
  alpha, sigma = P.discrete_coeffs(sched, t_int)
  # A model that predicts x0 exactly, wrapped, gives the exact eps.
  x0_model = lambda x, t: P.from_eps("x0", data.eps_fn(sched)(x, t), x, *P.discrete_coeffs(sched, t))
  den = Denoiser(lambda x, t, cond: x0_model(x, t), "x0", sched)
  np.testing.assert_allclose(den.eps_fn()(x, t_int), eps_true, rtol=1e-4, atol=1e-5)
  t = jnp.array([0.01, 0.2, 0.5, 0.8, 1.0])
  score_true = data.score_fn(sde)(x, t)
  v_model = lambda x, t: P.from_eps("v", -sde.marginal_coeffs(t)[1][:, None] * score_true, x, *sde.marginal_coeffs(t))
  den = Denoiser(lambda x, t, cond: v_model(x, t), "v", sde)
  np.testing.assert_allclose(den.score_fn()(x, t), score_true, rtol=1e-4, atol=1e-5)


def test_discrete_eps_model_drives_continuous_samplers():
  """The nearest-step map gives the VP score to the accuracy of the alpha_bar match.

  alpha_bar_t and alpha((t+1)/T)^2 differ by up to 7% near t = T (see
  test_schedules), so compare at moderate noise where they agree to < 1%.
  """
  sched = schedules.get("linear", num_steps=1000)
  sde = sdes.VPSDE()
  data = gaussian([0.5], 0.3)
  eps_model = data.eps_fn(sched)
  score_fn = Denoiser(lambda x, t, cond: eps_model(x, t), "eps", sched).score_fn(sde)
  t = jnp.array([0.1, 0.2, 0.3])
  x = jnp.array([[0.1], [-0.4], [1.0]])
  np.testing.assert_allclose(score_fn(x, t), data.score_fn(sde)(x, t), rtol=2e-2)


def test_unknown_kind_lists_valid():
  with pytest.raises(ValueError, match=r"unknown src 'noise'.*'eps', 'x0', 'v', 'score'"):
    P.convert(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.ones(1), jnp.ones(1), src="noise", dst="x0")
  with pytest.raises(ValueError, match="unknown parameterization"):
    Denoiser(lambda x, t, cond: x, "epsilon", schedules.get("linear", num_steps=10))
