"""EDM (Karras et al. 2022) against closed forms: the process, the preconditioning, the
loss of the exact model, and a model of one formulation sampled in another."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.core import edm, processes, schedules
from diffusion.core.denoiser import Denoiser
from diffusion.core.samplers import discrete
from diffusion.core.samplers import sigma as S

from closed_form import Mixture, mixture_sample_errors, gaussian

KEY = jax.random.PRNGKey(0)
PROC = edm.EDMProcess()


def test_process_time_axis_is_the_karras_map_and_inverts():
  t = jnp.linspace(0.0, 1.0, 11)
  s = np.asarray(PROC.sigma(t), np.float64)
  lo, hi = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
  np.testing.assert_allclose(s, (lo + np.linspace(0, 1, 11) * (hi - lo)) ** 7, rtol=3e-6)
  # The lognormal training sigmas reach beyond [0.002, 80]: the inverse extends there.
  sig = jnp.array([1e-4, 0.002, 0.3, 80.0, 500.0])
  np.testing.assert_allclose(PROC.sigma(PROC.time_at_sigma(sig)), sig, rtol=1e-5)
  # g^2 = d sigma^2 / dt, against jax.jvp of sigma(t)^2.
  tt = jnp.array([0.1, 0.5, 0.9])
  _, dsig2 = jax.jvp(lambda u: PROC.sigma(u) ** 2, (tt,), (jnp.ones(3),))
  np.testing.assert_allclose(PROC.diffusion(tt) ** 2, dsig2, rtol=1e-5)
  assert processes.sigma_limits(PROC) == (0.002, 80.0)


def test_preconditioning_table_1():
  """c_skip, c_out, c_in of Table 1; lambda c_out^2 = 1; at sigma = sigma_data,
  c_skip = 1/2 and c_out = c_in * sigma_data^2 = sigma_data / sqrt(2)."""
  sigma = jnp.array([0.01, 0.5, 3.0, 80.0])
  c_skip, c_out, c_in = edm.preconditioning(sigma, 0.5)
  s = np.asarray(sigma, np.float64)
  np.testing.assert_allclose(c_skip, 0.25 / (s**2 + 0.25), rtol=1e-6)
  np.testing.assert_allclose(c_out, s * 0.5 / np.sqrt(s**2 + 0.25), rtol=1e-6)
  np.testing.assert_allclose(c_in, 1 / np.sqrt(s**2 + 0.25), rtol=1e-6)
  np.testing.assert_allclose(edm.loss_weight(sigma, 0.5) * c_out**2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(edm.c_noise(sigma), np.log(s) / 4, rtol=1e-6)


MIX = Mixture(np.array([0.5, 0.3, 0.2]), 0.7 * np.array([[-1.0, -1.0], [1.0, 0.5], [0.0, 1.2]]),
              np.full(3, 0.15))


def _exact_f(mix, sigma_data):
  """The exact F network: the effective target ``(D - c_skip x) / c_out`` of the exact D."""
  def net(x_in, c_noise, cond):
    sigma = jnp.exp(4.0 * c_noise)
    _, _, c_in = edm.preconditioning(sigma, sigma_data)
    x = x_in / c_in[:, None]
    return edm.f_target(mix.denoise(x, sigma), x, sigma, sigma_data)
  return net


def test_preconditioned_denoiser_of_the_exact_f_is_the_exact_denoiser():
  """D = c_skip x + c_out F with F the exact effective target gives E[x0 | x] back, at
  every sigma from 0.002 to 80, through `Denoiser` (input scaling c_in, noise input
  log(sigma)/4) and its sigma view; eps and score agree with the mixture's."""
  den = Denoiser(_exact_f(MIX, 0.5), "F", PROC, noise_input="edm", sigma_data=0.5)
  sigma = jnp.array([0.002, 0.05, 0.5, 5.0, 80.0])
  x = MIX.sample(KEY, 5) + sigma[:, None] * jax.random.normal(jax.random.PRNGKey(1), (5, 2))
  t = PROC.time_at_sigma(sigma)
  want = np.asarray(MIX.denoise(x, sigma))
  np.testing.assert_allclose(den.x0(x, t), want, atol=2e-5 * 80)
  np.testing.assert_allclose(den.sigma_fn()(x, sigma), want, atol=2e-5 * 80)
  score = np.asarray(MIX.score(x, jnp.ones(5), sigma))
  np.testing.assert_allclose(den.score(x, t)[:3], score[:3], rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("data_std", [0.5, 1.0])
def test_training_loss_of_the_exact_model_is_its_irreducible_value(data_std):
  """Gaussian data N(0, s^2 I): the exact D = s^2 / (s^2 + sigma^2) x leaves the error
  E||D - x0||^2 / d = s^2 sigma^2 / (s^2 + sigma^2), so the EDM loss is
  E_sigma[lambda(sigma) s^2 sigma^2 / (s^2 + sigma^2)], exactly 1 when s = sigma_data,
  else a lognormal expectation computed here by 80-point Gauss-Hermite quadrature.
  The loss estimate (64 batches of 512 x 4 values, its own per-batch spread) must lie
  within 3 standard errors of it."""
  sd = 0.5
  data = gaussian(np.zeros(4), data_std)
  den = Denoiser(_exact_f(data, sd), "F", PROC, noise_input="edm", sigma_data=sd)
  model_fn = lambda p, x, t, r: den.output(x, t)

  @jax.jit
  def batch_loss(key):
    b_key, l_key = jax.random.split(key)
    batch = {"image": data.sample(b_key, 512)}
    return edm.edm_loss(None, batch, l_key, model_fn=model_fn, process=PROC)[0]

  values = np.array([float(batch_loss(jax.random.fold_in(KEY, i))) for i in range(64)])
  u, w = np.polynomial.hermite_e.hermegauss(80)
  sig = np.exp(-1.2 + 1.2 * u)
  lam = (sig**2 + sd**2) / (sig * sd) ** 2
  want = np.sum(w * lam * data_std**2 * sig**2 / (data_std**2 + sig**2)) / math.sqrt(2 * math.pi)
  if data_std == sd:
    assert abs(want - 1.0) < 1e-12
  se = values.std(ddof=1) / math.sqrt(len(values))
  assert abs(values.mean() - want) < 3 * se, (values.mean(), want, se)


def test_a_discrete_model_samples_the_same_under_ddim_and_edm_heun():
  """A discrete linear-schedule model (the exact eps of the mixture at its 1000 steps):
  DDIM with all 1000 steps and EDM-Heun on 500 of its own noise levels (the "time" grid)
  from the same x_T integrate one probability-flow ODE. The samples agree (measured per
  sample, max over the 2 coordinates: median 0.0033, 99th percentile 0.009, DDIM's
  first-order error at 1000 steps; a few in 10^4 that start near a boundary between
  modes, where the flow separates nearby points, end in another mode), and both sets
  match the mixture (3 SE; variance allowance 2.7e-3 as in test_samplers)."""
  sched = schedules.get("linear", num_steps=1000)
  den = Denoiser(lambda x, t, c: -sched.sigma(t)[:, None] * MIX.score(x, sched.alpha(t),
                                                                       sched.sigma(t)),
                 "eps", sched)
  n = 10_000
  z = jax.random.normal(KEY, (n, 2))
  a = jax.jit(lambda z: discrete.ddim(den.eps_fn(), sched, KEY, (n, 2), num_steps=1000,
                                      x_init=z))(z)
  grid = processes.sigma_grid(sched, "time", 500)
  alpha_T = float(sched.alpha(jnp.array(999)))
  b = jax.jit(lambda z: S.heun(den.sigma_fn(), grid, KEY, (n, 2), x_init=z / alpha_T))(z)
  diff = np.max(np.abs(np.asarray(a - b)), axis=-1)
  assert np.median(diff) < 0.01 and np.percentile(diff, 99) < 0.02, np.percentile(diff, [50, 99])
  assert mixture_sample_errors(a, MIX, var_allowance=2.7e-3) == []
  assert mixture_sample_errors(b, MIX, var_allowance=2.7e-3) == []


def test_sigma_ddim_on_the_models_own_grid_is_ddim():
  """Sigma-space Euler on a discrete model's uniform-skip noise levels is DDIM (eta = 0)
  step for step: x~ = x / sqrt(alpha_bar) throughout, equal outputs to float32 rounding."""
  sched = schedules.get("linear", num_steps=1000)
  data = gaussian([0.3], 0.5)
  den = Denoiser(lambda x, t, c: -sched.sigma(t)[:, None] * data.score(x, sched.alpha(t),
                                                                        sched.sigma(t)),
                 "eps", sched)
  z = jax.random.normal(KEY, (64, 1))
  a = jax.jit(lambda z: discrete.ddim(den.eps_fn(), sched, KEY, (64, 1), num_steps=50,
                                      x_init=z))(z)
  alpha_T = float(sched.alpha(jnp.array(980)))
  grid = processes.sigma_grid(sched, "time", 50)
  b = jax.jit(lambda z: S.euler(den.sigma_fn(), grid, KEY, (64, 1), x_init=z / alpha_T))(z)
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5)
