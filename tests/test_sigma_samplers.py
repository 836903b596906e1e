"""The sigma-space samplers (`diffusion.core.samplers.sigma`) against closed forms.

Data are Gaussian or a 2-D Gaussian mixture (`closed_form`), so the exact
denoiser ``D(x, sigma) = E[x0 | x]`` and, for a Gaussian, the exact
probability-flow map ``x(sigma_b) = mu + (x(sigma_a) - mu) sqrt(s^2 + sigma_b^2) /
sqrt(s^2 + sigma_a^2)`` are known. Statistical checks use 3 standard errors
(SE(mean) = std / sqrt(n); SE(var) = sqrt((m4 - var^2) / n)); a known
discretisation bias is stated beside its assertion.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.core import grids
from diffusion.core.samplers import sigma as S

from closed_form import Mixture, mixture_sample_errors, gaussian

KEY = jax.random.PRNGKey(0)
MU, SD = 0.3, 0.5
GAUSS = gaussian([MU], SD)


def _se_mean(x):
  return x.std() / math.sqrt(x.size)


def _se_var(x):
  m = x - x.mean()
  return math.sqrt((np.mean(m**4) - np.mean(m**2) ** 2) / x.size)


def _exact_map(x, sa, sb):
  return MU + (x - MU) * np.sqrt(SD**2 + sb**2) / np.sqrt(SD**2 + sa**2)


SOLVERS = {
    "euler": (S.euler, 1, 1),
    "heun": (S.heun, 2, 2),
    "dpm_solver-1": (lambda *a, **k: S.dpm_solver(*a, order=1, **k), 1, 1),
    "dpm_solver-2": (lambda *a, **k: S.dpm_solver(*a, order=2, **k), 2, 2),
    "dpm_solver-3": (lambda *a, **k: S.dpm_solver(*a, order=3, **k), 3, 3),
    "dpmpp_2m": (S.dpmpp_2m, 1, 2),
    "dpmpp_2s": (lambda *a, **k: S.dpmpp_singlestep(*a, order=2, **k), 2, 2),
    "dpmpp_3s": (lambda *a, **k: S.dpmpp_singlestep(*a, order=3, **k), 3, 3),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_convergence_order_on_the_exact_flow_map(name):
  """Fitted slope of log(max error) against log(NFE) on the Karras grid from sigma 20 to
  0.05 (no final step to 0, whose D(x) is not the flow map), 8 start points.

  Orders: Euler / DPM-Solver-1 1; Heun, DPM-Solver-2, DPM-Solver++(2M) and (2S) 2;
  DPM-Solver-3 and DPM-Solver++(3S) 3. The step counts are where the error ratios
  between doublings have settled (measured: within 10% of 2^p from 16 to 64 steps),
  so the fitted slope lies within 0.3 of p; the smallest errors (~1e-7 of the
  0.5-sized outputs for order 3 at 64 steps) stay 10x above float32 rounding.
  """
  fn, per_step, order = SOLVERS[name]
  x_init = jnp.linspace(-2.0, 2.0, 8)[:, None] * 20.0
  steps = (16, 32, 64) if order == 3 else (16, 32, 64, 128)
  errors, nfes = [], []
  den = jax.jit(lambda x, s: GAUSS.denoise(x, s))
  for n in steps:
    sig = np.asarray(grids.karras_sigmas(n, 0.05, 20.0))[:-1]
    out = jax.jit(lambda x: fn(den, sig, KEY, x.shape, x_init=x))(x_init)
    errors.append(np.max(np.abs(np.asarray(out, np.float64) - _exact_map(np.asarray(x_init), 20.0, sig[-1]))))
    nfes.append(per_step * (n - 1))
  slope = -np.polyfit(np.log(nfes), np.log(errors), 1)[0]
  assert abs(slope - order) < 0.3, (slope, errors)


MIX = Mixture(np.array([0.5, 0.3, 0.2]), 0.7 * np.array([[-1.0, -1.0], [1.0, 0.5], [0.0, 1.2]]),
              np.full(3, 0.15))
N_MIX = 20_000
STOCHASTIC = {
    "euler-eta1": lambda d, s, n: S.euler(d, s, KEY, n, eta=1.0),
    "edm_stochastic": lambda d, s, n: S.edm_stochastic(d, s, KEY, n, s_churn=40.0, s_tmin=0.05,
                                                       s_tmax=50.0, s_noise=1.003),
}
MIX_RUNS = {
    "euler-eta1": lambda d, s: STOCHASTIC["euler-eta1"](d, s, (N_MIX, 2)),
    "edm_stochastic": lambda d, s: STOCHASTIC["edm_stochastic"](d, s, (N_MIX, 2)),
    "heun": lambda d, s: S.heun(d, s, KEY, (N_MIX, 2)),
    "dpm_solver-3": lambda d, s: S.dpm_solver(d, s, KEY, (N_MIX, 2), order=3),
    "dpmpp_2m": lambda d, s: S.dpmpp_2m(d, s, KEY, (N_MIX, 2)),
    "dpmpp_2s": lambda d, s: S.dpmpp_singlestep(d, s, KEY, (N_MIX, 2), order=2),
    "dpmpp_3s": lambda d, s: S.dpmpp_singlestep(d, s, KEY, (N_MIX, 2), order=3),
}


@pytest.mark.parametrize("name", sorted(MIX_RUNS))
def test_mixture_weights_mean_and_variance(name):
  """40 Karras steps from sigma 80 to 0.002 (EDM's grid), then the step to 0; the
  stochastic samplers take 256 steps and skip the variance check: their weak error is
  first order (`test_stochastic_samplers_converge_weakly`)."""
  stochastic = name in STOCHASTIC
  sig = grids.karras_sigmas(256 if stochastic else 40, 0.002, 80.0)
  x = jax.jit(lambda: MIX_RUNS[name](MIX.denoise, sig))()
  # Variance allowance: the x = sigma_max z start ignores the data's variance (~0.5)
  # next to sigma_max^2 = 6400 (relative 4e-5), and 40 steps shrink or widen a
  # component's std by < 0.004 (measured), moving the total variance by < 2 * 0.15 *
  # 0.004 = 1.2e-3.
  assert mixture_sample_errors(x, MIX, var_allowance=None if stochastic else 1.2e-3) == []


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_samplers_converge_weakly(name):
  """Gaussian data, 100k samples, the Karras grid (0.002 .. 80) at N = 128 and 256 steps.

  The stochastic steps are first order in distribution: the output variance has a
  bias ~ c / N (measured: Euler-ancestral 0.250 - 0.229 at 128 and - 0.239 at 256;
  EDM Alg. 2 +0.0063 and +0.0020), so the Richardson value ``2 v(2N) - v(N)``
  cancels it up to O(1/N^2) (< 1e-3 from those figures) and must equal ``s^2``.
  Tolerance: 3 SE of that combination, ``sqrt(2^2 + 1) SE(var)`` (independent keys
  for the two runs), plus the 1e-3 remainder. The mean is unbiased (the data are
  symmetric about it under every step): within 3 SE at 256 steps.
  """
  n = 100_000
  runs = {}
  for steps, key in ((128, 1), (256, 2)):
    sig = grids.karras_sigmas(steps, 0.002, 80.0)
    runs[steps] = np.asarray(jax.jit(lambda: _with_key(name, sig, n, key))(), np.float64)[:, 0]
  v = 2 * runs[256].var() - runs[128].var()
  se = math.sqrt(4 * _se_var(runs[256]) ** 2 + _se_var(runs[128]) ** 2)
  assert abs(v - SD**2) < 3 * se + 1e-3, (runs[128].var(), runs[256].var())
  assert abs(runs[256].mean() - MU) < 3 * _se_mean(runs[256])


def _with_key(name, sig, n, key):
  k = jax.random.PRNGKey(key)
  if name == "euler-eta1":
    return S.euler(GAUSS.denoise, sig, k, (n, 1), eta=1.0)
  return S.edm_stochastic(GAUSS.denoise, sig, k, (n, 1), s_churn=40.0, s_tmin=0.05, s_tmax=50.0,
                          s_noise=1.003)


def test_churn_zero_is_heun():
  sig = grids.karras_sigmas(32, 0.002, 80.0)
  a = S.edm_stochastic(GAUSS.denoise, sig, KEY, (16, 1), s_churn=0.0)
  b = S.heun(GAUSS.denoise, sig, KEY, (16, 1))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_first_order_solvers_are_one_update():
  """DPM-Solver-1, DPM-Solver++ with one step of history and DDIM (Euler) are the same
  update ``x0 + (sigma_next / sigma) (x - x0)``: equal up to float rounding."""
  sig = grids.karras_sigmas(12, 0.01, 10.0)
  e = S.euler(GAUSS.denoise, sig, KEY, (64, 1))
  d1 = S.dpm_solver(GAUSS.denoise, sig, KEY, (64, 1), order=1)
  np.testing.assert_allclose(np.asarray(d1), np.asarray(e), atol=2e-6)


def _counting(den):
  calls = []
  def f(x, s):
    calls.append(1)
    return den(x, s)
  return f, calls


@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("edm_stochastic", 2),
                                        ("dpm_solver", 2), ("dpm_solver", 3), ("dpmpp_2m", 1),
                                        ("dpmpp_singlestep", 2), ("dpmpp_singlestep", 3)])
def test_nfe_counts_every_network_call(name, order):
  """Run eagerly (no jit, scans unrolled) counting the denoiser calls."""
  fn = {"euler": S.euler, "heun": S.heun, "edm_stochastic": S.edm_stochastic,
        "dpm_solver": S.dpm_solver, "dpmpp_2m": S.dpmpp_2m,
        "dpmpp_singlestep": S.dpmpp_singlestep}[name]
  kw = {"order": order} if name in ("dpm_solver", "dpmpp_singlestep") else {}
  sig = grids.karras_sigmas(5, 0.01, 10.0)
  den, calls = _counting(GAUSS.denoise)
  with jax.disable_jit():
    fn(den, sig, KEY, (2, 1), **kw)
  assert len(calls) == S.nfe(name, 5, order=order)


def test_multistep_history_lives_in_one_scan():
  """DPM-Solver++(2M)'s traced program has one scan whose size does not grow with N."""
  def size(n):
    sig = grids.karras_sigmas(n, 0.01, 10.0)
    jaxpr = jax.make_jaxpr(lambda r: S.dpmpp_2m(GAUSS.denoise, sig, r, (4, 1)))(KEY)
    return len(jaxpr.jaxpr.eqns), str(jaxpr).count("scan[")
  assert size(10) == size(200) and size(10)[1] == 1


def test_trajectory_and_grid_validation():
  sig = grids.karras_sigmas(6, 0.01, 10.0)
  x, traj = S.heun(GAUSS.denoise, sig, KEY, (3, 1), return_trajectory=True)
  assert traj["x"].shape == (6, 3, 1) and traj["x0"].shape == (6, 3, 1)
  np.testing.assert_allclose(np.asarray(traj["t"]), np.asarray(sig[1:]), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(traj["x"][-1]), np.asarray(x))
  with pytest.raises(ValueError, match="descending"):
    S.heun(GAUSS.denoise, np.array([1.0, 2.0, 0.0]), KEY, (3, 1))
  with pytest.raises(ValueError, match="order"):
    S.dpm_solver(GAUSS.denoise, sig, KEY, (3, 1), order=4)
  with pytest.raises(ValueError, match="eta"):
    S.euler(GAUSS.denoise, sig, KEY, (3, 1), eta=1.5)


def test_grids_match_their_formulas():
  """Karras eq. 5 with rho = 7 at EDM's 18 steps (0.002 .. 80), and log-uniform ends."""
  k = np.asarray(grids.karras_sigmas(18, 0.002, 80.0), np.float64)
  i = np.arange(18)
  ref = (80.0 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
  np.testing.assert_allclose(k[:-1], ref, rtol=2e-6)
  assert k[-1] == 0.0
  g = np.asarray(grids.log_snr_sigmas(5, 0.01, 100.0), np.float64)
  np.testing.assert_allclose(g, [100.0, 10.0, 1.0, 0.1, 0.01, 0.0], rtol=2e-6)
  with pytest.raises(ValueError, match="sigma_min < sigma_max"):
    grids.karras_sigmas(4, 1.0, 0.5)
