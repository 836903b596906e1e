"""VP / sub-VP / VE SDEs against their closed-form marginals."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.core import schedules
from diffusion.core import sdes

ALL = [sdes.VPSDE(), sdes.SubVPSDE(), sdes.VESDE(sigma_min=0.01, sigma_max=50.0)]
IDS = ["vp", "subvp", "ve"]


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_marginal_moments_solve_the_moment_odes(sde):
  """For dx = a(t) x dt + g dw: d alpha/dt = a alpha and d std^2/dt = 2 a std^2 + g^2.

  Checked with autodiff of marginal_coeffs at many t; float32 derivatives of
  smooth scalar functions are good to ~1e-5 relative.
  """
  t = jnp.linspace(0.05, 0.95, 19)
  alpha_fn = lambda s: sde.marginal_coeffs(s[None])[0][0]
  var_fn = lambda s: sde.marginal_coeffs(s[None])[1][0] ** 2
  dalpha = jax.vmap(jax.grad(alpha_fn))(t)
  dvar = jax.vmap(jax.grad(var_fn))(t)
  x = jnp.ones((t.shape[0], 1))
  a = sde.drift(x, t)[:, 0]  # drift coefficient (drift is linear: a(t) * x)
  alpha, std = sde.marginal_coeffs(t)
  g2 = sde.diffusion(t) ** 2
  np.testing.assert_allclose(dalpha, a * alpha, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(dvar, 2 * a * std**2 + g2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_marginal_matches_simulated_forward_sde(sde):
  """Euler–Maruyama of the forward SDE from x0 = 0.8 to t = 0.5, n = 100k paths.

  Weak error of EM with 500 steps is O(dt) ~ 1e-3 relative; tolerance =
  3 standard errors of the sample moments + that 1e-3 relative allowance.
  """
  n, steps, t_end = 100_000, 500, 0.5
  x = jnp.full((n, 1), 0.8)
  dt = t_end / steps
  key = jax.random.PRNGKey(1)

  def body(x, i):
    t = jnp.full((n,), i * dt)
    z = jax.random.normal(jax.random.fold_in(key, i), x.shape)
    return x + sde.drift(x, t) * dt + sde.diffusion(t)[:, None] * math.sqrt(dt) * z, None

  x, _ = jax.lax.scan(body, x, jnp.arange(steps))
  mean, std = sde.marginal(jnp.full((1, 1), 0.8), jnp.array([t_end]))
  mean, var = float(mean.squeeze()), float(std.squeeze()) ** 2
  if isinstance(sde, sdes.VESDE):  # VE's kernel includes sigma_min^2 at t = 0.
    var -= sde.sigma_min**2
  xs = np.asarray(x, np.float64)
  assert abs(xs.mean() - mean) < 3 * math.sqrt(var / n) + 1e-3 * abs(mean)
  assert abs(xs.var() - var) < 3 * var * math.sqrt(2 / (n - 1)) + 1e-3 * var


def test_vp_and_subvp_coefficients():
  t = jnp.linspace(0.01, 1.0, 50)
  a, s = sdes.VPSDE().marginal_coeffs(t)
  np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-6)
  a2, s2 = sdes.SubVPSDE().marginal_coeffs(t)
  np.testing.assert_allclose(a2, a, rtol=1e-6)
  np.testing.assert_allclose(s2, 1.0 - a**2, rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(s2) < np.asarray(s))
  ve = sdes.VESDE(0.01, 50.0)
  np.testing.assert_allclose(ve.marginal_coeffs(jnp.array([0.0, 1.0]))[1], [0.01, 50.0], rtol=1e-5)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_prior(sde):
  z = jnp.array([[0.3, -1.2, 2.0]])
  std = sde.prior_std
  expect = -1.5 * math.log(2 * math.pi * std**2) - 0.5 * float(jnp.sum(z**2)) / std**2
  np.testing.assert_allclose(sde.prior_logp(z), [expect], rtol=1e-6)
  n = 200_000
  x = np.asarray(sde.prior_sample(jax.random.PRNGKey(0), (n, 1)), np.float64)
  assert abs(x.std() - std) < 3 * std / math.sqrt(2 * (n - 1))  # SE of a sample std


def test_vp_discretize_is_ddpm_linear_schedule():
  """VP with dt = 1/T at t_i = i/(T-1) gives G^2 = beta_i of linear DDPM and x + f = sqrt(1 - beta_i) x."""
  T = 1000
  sched = schedules.get("linear", num_steps=T)
  i = jnp.array([0, 10, 500, 999])
  x = jnp.ones((4, 1))
  f, G = sdes.VPSDE().discretize(x, i / (T - 1), 1.0 / T)
  np.testing.assert_allclose(G**2, sched.betas[i], rtol=1e-5)
  np.testing.assert_allclose((x + f)[:, 0], jnp.sqrt(1 - sched.betas[i]), rtol=1e-6)


def test_ve_discretize_is_smld():
  ve = sdes.VESDE(0.01, 50.0)
  t = jnp.array([0.5, 0.001])
  _, G = ve.discretize(jnp.zeros((2, 1)), t, 0.01)
  np.testing.assert_allclose(G**2, [ve.sigma(0.5) ** 2 - ve.sigma(0.49) ** 2, ve.sigma(0.001) ** 2], rtol=1e-5)


@pytest.mark.parametrize("sde", ALL, ids=IDS)
def test_reverse_and_probability_flow_drifts(sde):
  x = jnp.array([[0.5, -1.0], [2.0, 0.1]])
  t = jnp.array([0.3, 0.7])
  score = lambda x, t: -2.0 * x
  g2 = (sde.diffusion(t) ** 2)[:, None]
  f = sde.drift(x, t)
  np.testing.assert_allclose(sde.reverse_drift(score, x, t), f + 2 * g2 * x, rtol=1e-6)
  np.testing.assert_allclose(sde.probability_flow_drift(score, x, t), f + g2 * x, rtol=1e-6)


def test_sde_is_a_pytree_and_registry_errors():
  out = jax.jit(lambda s, x, t: s.marginal(x, t)[1])(sdes.VESDE(0.01, 50.0), jnp.ones((1, 1)), jnp.ones((1,)))
  np.testing.assert_allclose(out.squeeze(), 50.0, rtol=1e-5)
  assert jax.tree.leaves(sdes.SubVPSDE(0.2, 10.0)) == [0.2, 10.0]
  with pytest.raises(ValueError, match=r"unknown sde 'vpp'.*\['subvp', 've', 'vp'\]"):
    sdes.get("vpp")
  with pytest.raises(ValueError, match=r"t must have shape \[B\] = \[2\]"):
    sdes.VPSDE().marginal(jnp.ones((2, 3)), jnp.ones((3,)))
