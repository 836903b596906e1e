"""Editing algorithms against closed forms (issue 17): inpainting.

Inpainting a correlated Gaussian: data x ~ N(0, S) in 2-D with S = [[1, r], [r, 1]],
r = 0.9; coordinate 0 is known (x_k = 1.5), coordinate 1 is generated. The exact
conditional is N(r x_k, 1 - r^2) = N(1.35, 0.19). With the exact eps of Gaussian data,
eps(x_t) = s Cov_t^{-1} x_t (Cov_t = a^2 S + s^2 I), every step of the replacement
method and of RePaint is affine in the state plus independent Gaussian noise, so the
completion's mean and variance under each algorithm follow exactly from propagating
the state's mean and covariance (`_propagate`, float64 NumPy). That gives two proofs:
the implementation's Monte Carlo moments equal the propagated ones of the same
algorithm (within 3 standard errors), and the propagated moments against the exact
conditional state the replacement method's bias and show RePaint's shrinking as its
resampling count grows (noise-free numbers).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.core import edit, samplers, schedules
from diffusion.core.denoiser import Denoiser

R, XK = 0.9, 1.5
S = np.array([[1.0, R], [R, 1.0]])
T = 100
SCHED = schedules.get("cosine", num_steps=T)
AB = np.asarray(SCHED.alpha_bars, np.float64)
N = 20000  # Monte Carlo completions.


def _cov_inv(t):
  a2 = AB[t]
  return np.linalg.inv(a2 * S + (1 - a2) * np.eye(2))


def exact_eps(x, t, cov=S):
  """E[eps | x_t] for N(0, cov) data: s Cov_t^{-1} x_t (batched, jit-safe)."""
  ab = SCHED.alpha_bars[t]  # [B]
  inv = jnp.linalg.inv(ab[:, None, None] * jnp.asarray(cov, jnp.float32)
                       + (1 - ab)[:, None, None] * jnp.eye(2))
  return jnp.sqrt(1 - ab)[:, None] * jnp.einsum("bij,bj->bi", inv, x)


def _propagate(levels):
  """Exact (mean, var) of coordinate 1 after RePaint over `levels` with the exact eps
  (`edit.repaint`'s steps, ancestral variance beta~), given x_k."""
  beta = np.asarray(SCHED.betas, np.float64)
  ab_prev = np.concatenate([[1.0], AB[:-1]])
  post_var = beta * (1 - ab_prev) / (1 - AB)
  ab_level = lambda n: AB[n - 1] if n > 0 else 1.0
  m, C = np.zeros(2), np.eye(2)
  for n, dst in zip(levels[:-1], levels[1:]):
    if dst < n:  # Reverse: x0_hat = W x, mean = c0 x0_hat + ct x.
      t = n - 1
      a, s = np.sqrt(AB[t]), np.sqrt(1 - AB[t])
      W = (np.eye(2) - s * s * _cov_inv(t)) / a
      c0 = beta[t] * np.sqrt(ab_prev[t]) / (1 - AB[t])
      ct = (1 - ab_prev[t]) * np.sqrt(1 - beta[t]) / (1 - AB[t])
      A = c0 * W + ct * np.eye(2)
      v = post_var[t] if t > 0 else 0.0
      a_new = ab_level(n - 1)
      mu, var_u = A[1] @ m, A[1] @ C @ A[1] + v
      m = np.array([np.sqrt(a_new) * XK, mu])
      C = np.diag([1 - a_new, var_u])
    else:  # Forward jump q(x_dst | x_n).
      r = ab_level(dst) / ab_level(n)
      m, C = np.sqrt(r) * m, r * C + (1 - r) * np.eye(2)
  return m[1], C[1, 1]


def _known(n=N):
  x_known = jnp.zeros((n, 2)).at[:, 0].set(XK)
  mask = jnp.zeros((n, 2)).at[:, 0].set(1.0)
  return x_known, mask


def _moment_errors(x, mean, var):
  """``(known coordinate exact?, |MC mean - mean| in SEs, |MC var - var| in SEs)`` of the
  completions `x` against the propagated moments: the mean's SE is sqrt(var / N), the
  variance's var sqrt(2 / (N - 1)) (Gaussian completions)."""
  x = np.asarray(x, np.float64)
  return (bool(np.all(x[:, 0] == XK)), abs(x[:, 1].mean() - mean) / np.sqrt(var / N),
          abs(x[:, 1].var(ddof=1) - var) / (var * np.sqrt(2 / (N - 1))))


def test_repaint_levels_by_hand():
  assert edit.repaint_levels(6, 2, 1).tolist() == [6, 5, 4, 3, 2, 1, 0]
  # Jumps back up 2 levels at n = 4 and n = 2 (n + 2 <= 6), once each (count 2).
  assert edit.repaint_levels(6, 2, 2).tolist() == [6, 5, 4, 6, 5, 4, 3, 2, 4, 3, 2, 1, 0]
  # Count 3 at T = 4, L = 2: only n = 2 qualifies; twice.
  assert edit.repaint_levels(4, 2, 3).tolist() == [4, 3, 2, 4, 3, 2, 4, 3, 2, 1, 0]
  with pytest.raises(ValueError, match="jump_length=0 must be an int >= 1"):
    edit.repaint_levels(6, 0, 2)


@pytest.fixture(scope="module")
def propagated():
  """Exact (mean, var) for resampling counts 1, 2, 5, 10 (jump length 10)."""
  return {r: _propagate(edit.repaint_levels(T, 10, r)) for r in (1, 2, 5, 10)}


def test_replacement_bias_and_repaint_shrinking_it(propagated):
  """The replacement method (count 1) under-conditions: its completion has mean 0.930
  and variance 0.298 against the exact 1.35 and 0.19. RePaint's resampling (jump
  length 10) shrinks both errors monotonically with the count: (1.110, 0.244) at 2,
  (1.232, 0.218) at 5, (1.263, 0.214) at 10, the summed error under a third of the
  replacement's (exact propagation: no sampling noise). What remains comes from the
  last 10 levels, which are never resampled (length 1 gives (1.316, 0.166))."""
  mean1, var1 = propagated[1]
  assert mean1 < 0.8 * R * XK and var1 > 1.5 * (1 - R * R), propagated[1]
  errs = [abs(propagated[r][0] - R * XK) + abs(propagated[r][1] - (1 - R * R))
          for r in (1, 2, 5, 10)]
  assert all(a > b for a, b in zip(errs, errs[1:])), errs
  assert errs[-1] < errs[0] / 3, errs


@pytest.mark.parametrize("count", [1, 5])
def test_repaint_matches_its_propagated_moments(propagated, count):
  x_known, mask = _known()
  fn = jax.jit(lambda k: edit.repaint(exact_eps, SCHED, k, x_known, mask, jump_length=10,
                                      jump_n_sample=count))
  exact, mean_se, var_se = _moment_errors(fn(jax.random.PRNGKey(count)), *propagated[count])
  assert exact and mean_se < 3 and var_se < 3, (exact, mean_se, var_se)  # 3 SE.


def test_replacement_wrapper_on_ddpm_is_repaint_without_resampling(propagated):
  """The wrapper given to the DDPM sampler (posterior variance) is the replacement
  method: the same moments as RePaint with count 1."""
  x_known, mask = _known()
  den = Denoiser(lambda x, t, c: exact_eps(x, t), "eps", SCHED)
  key = jax.random.PRNGKey(7)
  wrapped = edit.Replacement(den, x_known, mask, jax.random.fold_in(key, 1))
  fn = jax.jit(lambda k: edit.paste(
      samplers.ddpm(wrapped.eps_fn(), SCHED, k, (N, 2), variance="beta_tilde"), x_known, mask))
  exact, mean_se, var_se = _moment_errors(fn(key), *propagated[1])
  assert exact and mean_se < 3 and var_se < 3, (exact, mean_se, var_se)  # 3 SE.


def test_replacement_wrapper_is_transparent_without_known_pixels():
  """Mask 0 everywhere: the wrapped denoiser is the denoiser (DDIM-20 bit for bit); mask
  1 everywhere: the pasted result is the input."""
  den = Denoiser(lambda x, t, c: exact_eps(x, t), "eps", SCHED)
  x_known = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
  key = jax.random.PRNGKey(3)
  for m, want in ((0.0, None), (1.0, x_known)):
    mask = jnp.full((8, 2), m)
    w = edit.Replacement(den, x_known, mask, key)
    out = edit.paste(samplers.ddim(w.eps_fn(), SCHED, key, (8, 2), num_steps=20), x_known, mask)
    ref = samplers.ddim(den.eps_fn(), SCHED, key, (8, 2), num_steps=20) if want is None else want
    np.testing.assert_array_equal(out, ref)


def test_mask_checks():
  x = np.zeros((2, 4, 4, 1))
  assert edit.check_mask(np.ones((4, 4)), x).shape == (2, 4, 4, 1)
  with pytest.raises(ValueError, match="only 0 .* and 1"):
    edit.check_mask(np.full((4, 4), 0.5), x)
  with pytest.raises(ValueError, match=r"shape \(3, 3\), which does not fit"):
    edit.check_mask(np.ones((3, 3)), x)


# ---------------------------------------------------------------------- SDEdit


def _ddim_map(k, num_steps):
  """The exact linear map G of DDIM (eta 0, `num_steps` steps over the first k) with the
  exact eps: x_out = G x_start (float64)."""
  taus = (np.arange(num_steps) * k // num_steps).tolist()
  G = np.eye(2)
  for i in range(num_steps - 1, -1, -1):
    t = taus[i]
    ab_prev = AB[taus[i - 1]] if i > 0 else 1.0
    a, s = np.sqrt(AB[t]), np.sqrt(1 - AB[t])
    eps_map = s * _cov_inv(t)
    x0_map = (np.eye(2) - s * eps_map) / a
    G = (np.sqrt(ab_prev) * x0_map + np.sqrt(1 - ab_prev) * eps_map) @ G
  return G


def _flow_map(t):
  """The probability-flow ODE's exact map from step t to 0 for N(0, S) data:
  S^(1/2) (a^2 S + s^2 I)^(-1/2) (S and Cov_t share eigenvectors)."""
  lam, U = np.linalg.eigh(S)
  a2 = AB[t]
  return U @ np.diag(np.sqrt(lam / (a2 * lam + 1 - a2))) @ U.T


def test_sdedit_strength_one_is_the_unconditional_sampler():
  den = Denoiser(lambda x, t, c: exact_eps(x, t), "eps", SCHED)
  key = jax.random.PRNGKey(11)
  x_in = jnp.full((16, 2), 0.7)
  sched, x_start = edit.sdedit_start(SCHED, x_in, 1.0, jax.random.split(key)[0])
  assert sched is SCHED
  for run in (lambda **kw: samplers.ddim(den.eps_fn(), sched, key, (16, 2), num_steps=25, **kw),
              lambda **kw: samplers.ddpm(den.eps_fn(), sched, key, (16, 2), **kw)):
    np.testing.assert_array_equal(run(x_init=x_start), run())


def test_sdedit_small_strength_returns_the_input():
  """Strength 1/T (one step, t = 0): x_start = a0 x + s0 z and the output is x0_hat =
  x + r (z - eps_hat) with r = s0 / a0 = sqrt(1 / ab_0 - 1) (cosine, T = 100: 0.0251),
  where eps_hat = E[z | x_start], so E[(z - eps_hat)^2] = E Var(z | x_start) <= 1: the
  RMS error is at most r. Over n = 512 coordinates the mean square has SE <= sqrt(2 / n)
  (Gaussian: Var z^2 = 2), so mean square < r^2 (1 + 3 sqrt(2 / n)); and no |z -
  eps_hat| reaches 5 (P(|N(0, 1)| > 5) = 6e-7 per coordinate), so max error < 5 r."""
  den = Denoiser(lambda x, t, c: exact_eps(x, t), "eps", SCHED)
  x_in = jax.random.multivariate_normal(jax.random.PRNGKey(0), jnp.zeros(2), S, (256,))
  sched, x_start = edit.sdedit_start(SCHED, x_in, 1.0 / T, jax.random.PRNGKey(1))
  assert sched.num_steps == 1
  out = samplers.ddim(den.eps_fn(), sched, jax.random.PRNGKey(2), (256, 2), num_steps=1,
                      x_init=x_start)
  r = float(np.sqrt(1 / AB[0] - 1))
  err = np.asarray(out - x_in, np.float64)
  assert np.max(np.abs(err)) < 5 * r
  assert np.mean(err**2) < r * r * (1 + 3 * np.sqrt(2 / 512)), (np.mean(err**2), r * r)


def test_sdedit_ddim_is_its_closed_form_linear_map():
  """Strength 0.5 (k = 50 of T = 100), DDIM-25 with the exact eps: every output equals
  G x_start with G the product of the 25 step matrices (float32 against float64: 1e-4),
  so the output's law is N(G a x_in, s^2 G G^T). G is within 2% (max entry, relative:
  1.6%) of the probability-flow ODE's exact map S^(1/2) (a^2 S + s^2)^(-1/2) from step
  49, DDIM's discretisation error, which halves with 50 steps (0.9%: first order)."""
  den = Denoiser(lambda x, t, c: exact_eps(x, t), "eps", SCHED)
  x_in = jnp.tile(jnp.array([[1.0, -0.5]]), (512, 1))
  sched, x_start = edit.sdedit_start(SCHED, x_in, 0.5, jax.random.PRNGKey(5))
  assert sched.num_steps == 50
  out = samplers.ddim(den.eps_fn(), sched, jax.random.PRNGKey(6), (512, 2), num_steps=25,
                      x_init=x_start)
  G = _ddim_map(50, 25)
  np.testing.assert_allclose(np.asarray(out), np.asarray(x_start, np.float64) @ G.T, atol=1e-4)
  flow = _flow_map(49)
  err25 = np.max(np.abs(G - flow)) / np.max(np.abs(flow))
  err50 = np.max(np.abs(_ddim_map(50, 50) - flow)) / np.max(np.abs(flow))
  assert err25 < 0.02 and err50 < 0.6 * err25, (err25, err50)


def test_sdedit_checks():
  with pytest.raises(ValueError, match=r"strength 0.0 must lie in \(0, 1\]"):
    edit.sdedit_start(SCHED, jnp.zeros((1, 2)), 0.0, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"strength 1.5 must lie"):
    edit.check_strength(1.5)


# ------------------------------------------------------------------- denoising


def _wiener(y, sigma):
  """E[x | y = x + sigma n] for x ~ N(0, S): S (S + sigma^2 I)^(-1) y."""
  return np.asarray(y, np.float64) @ (S @ np.linalg.inv(S + sigma**2 * np.eye(2))).T


def test_tweedie_is_the_closed_form_posterior_mean():
  """On the VP SDE (exact time for every sigma) and on the discrete schedule at one of its
  own levels, the one-step denoiser with the exact eps is the Wiener filter
  S (S + sigma^2)^(-1) y (float32: 1e-5)."""
  from diffusion.core import sdes
  sde = sdes.VPSDE()

  def vp_eps(x, t, c):
    a2 = sde.alpha(t) ** 2
    inv = jnp.linalg.inv(a2[:, None, None] * jnp.asarray(S, jnp.float32)
                         + (1 - a2)[:, None, None] * jnp.eye(2))
    return jnp.sqrt(1 - a2)[:, None] * jnp.einsum("bij,bj->bi", inv, x)

  y = jax.random.normal(jax.random.PRNGKey(0), (64, 2)) * 1.5
  for sigma in (0.05, 0.5, 3.0):
    out = edit.tweedie(Denoiser(vp_eps, "eps", sde), y, sigma)
    np.testing.assert_allclose(out, _wiener(y, sigma), atol=1e-5, rtol=1e-5)
  level = float(np.sqrt(1 / AB[29] - 1))
  out = edit.tweedie(Denoiser(lambda x, t, c: exact_eps(x, t), "eps", SCHED), y, level)
  np.testing.assert_allclose(out, _wiener(y, level), atol=1e-5, rtol=1e-5)


def test_denoise_start_matches_the_step_of_the_noise_level():
  """y = x + sigma n with sigma the level of step 29: the sampler starts at step 29 on
  sqrt(ab_29) y = sqrt(ab) x + sqrt(1 - ab) n, a draw of q(x_29 | x)."""
  level = float(np.sqrt(1 / AB[29] - 1))
  y = jnp.ones((4, 2))
  sched, x_start = edit.denoise_start(SCHED, y, level * 1.01)
  assert sched.num_steps == 30
  np.testing.assert_allclose(x_start, np.sqrt(AB[29]) * np.ones((4, 2)), rtol=1e-6)
  with pytest.raises(ValueError, match="sigma=0.0 must be > 0"):
    edit.denoise_start(SCHED, y, 0.0)


def test_noise_level_estimate():
  """Smooth 64x64 images (ramps and a low-frequency wave, whose Haar HH is ~0) plus white
  noise of sigma 0.1: each image's MAD estimate within 11% (1024 coefficients; the
  MAD's relative SE is 1.17 / sqrt(n) = 3.6%, so 3 SE), and the mean of the 8
  estimates within 4% (SE 3.6% / sqrt(8) = 1.3%)."""
  h = np.linspace(-1, 1, 64)
  yy, xx = np.meshgrid(h, h, indexing="ij")
  rng = np.random.default_rng(0)
  clean = np.stack([0.5 * xx * k / 8 + 0.3 * np.cos(np.pi * yy) for k in range(8)])[..., None]
  noisy = clean + 0.1 * rng.standard_normal(clean.shape)
  est = edit.estimate_sigma(noisy)
  assert np.all(np.abs(est / 0.1 - 1) < 0.11), est
  assert abs(np.mean(est) / 0.1 - 1) < 0.04, est
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    edit.estimate_sigma(np.zeros((4, 4)))


# -------------------------------------------------------------- DDIM inversion


def _inversion_map(num_steps):
  """The exact linear map H of `samplers.ddim_invert` with the exact eps (float64): step
  i goes from tau_{i-1} (clean for i = 0) to tau_i with eps taken at tau_i."""
  taus = (np.arange(num_steps) * T // num_steps).tolist()
  H = np.eye(2)
  for i, t in enumerate(taus):
    a0 = AB[taus[i - 1]] if i > 0 else 1.0
    eps_map = np.sqrt(1 - AB[t]) * _cov_inv(t)
    x0_map = (np.eye(2) - np.sqrt(1 - a0) * eps_map) / np.sqrt(a0)
    H = (np.sqrt(AB[t]) * x0_map + np.sqrt(1 - AB[t]) * eps_map) @ H
  return H


def test_ddim_inversion_is_its_linear_map_and_reconstructs_to_first_order():
  """With the exact eps, inversion is x_T = H x0 for the product H of its step matrices
  (float32 against float64: 1e-4); DDIM from x_T gives G H x0 (G: `_ddim_map`), and the
  reconstruction error max |G H - I| shrinks in proportion to 1 / steps (first order:
  the inversion takes eps at the step it reaches, on the state it leaves): 0.073 at 25
  steps and 0.039 at 50 on this 100-step cosine schedule (exact float64 numbers), so the
  50-step error is under 0.6 of the 25-step one."""
  den = Denoiser(lambda x, t, c: exact_eps(x, t), "eps", SCHED)
  x0 = jax.random.multivariate_normal(jax.random.PRNGKey(4), jnp.zeros(2), S, (256,))
  errs = {}
  for n in (25, 50):
    x_T = samplers.ddim_invert(den.eps_fn(), SCHED, x0, num_steps=n)
    H = _inversion_map(n)
    np.testing.assert_allclose(np.asarray(x_T), np.asarray(x0, np.float64) @ H.T, atol=1e-4)
    back = samplers.ddim(den.eps_fn(), SCHED, jax.random.PRNGKey(0), (256, 2), num_steps=n,
                         x_init=x_T)
    G = _ddim_map(T, n)
    np.testing.assert_allclose(np.asarray(back), np.asarray(x0, np.float64) @ (G @ H).T,
                               atol=1e-4)
    errs[n] = np.max(np.abs(G @ H - np.eye(2)))
  assert errs[50] < 0.6 * errs[25], errs


# -------------------------------------------------------------- anomaly scores


def test_detection_metrics_against_sklearn_and_the_closed_form():
  """AUROC and average precision equal scikit-learn's (with ties) to 1e-12; for normal
  scores N(0, 1) and anomalies N(d, 1), d = 1, AUROC -> Phi(d / sqrt 2) = 0.7602: with
  4000 of each its SE is ~0.0055 (Hanley & McNeil), so within 0.017 (3 SE)."""
  from scipy.stats import norm
  from sklearn.metrics import average_precision_score, roc_auc_score
  from diffusion.eval import anomaly
  rng = np.random.default_rng(0)
  s = np.round(rng.normal(size=300), 1)  # Many ties.
  y = rng.random(300) < 0.3
  assert abs(anomaly.auroc(s, y) - roc_auc_score(y, s)) < 1e-12
  assert abs(anomaly.auprc(s, y) - average_precision_score(y, s)) < 1e-12
  fpr, tpr = anomaly.roc_curve(s, y)
  assert abs(np.trapezoid(tpr, fpr) - roc_auc_score(y, s)) < 1e-12
  scores = np.r_[rng.normal(size=4000), rng.normal(1.0, 1.0, size=4000)]
  labels = np.r_[np.zeros(4000, bool), np.ones(4000, bool)]
  assert abs(anomaly.auroc(scores, labels) - norm.cdf(1 / np.sqrt(2))) < 0.017
  assert anomaly.threshold(np.arange(101.0), 0.95) == 95.0
  with pytest.raises(ValueError, match="both normal"):
    anomaly.auroc([1.0, 2.0], [True, True])


def test_anomaly_scores_of_gaussian_data_in_closed_form():
  """x ~ N(0, S): the score-norm score at noise sigma is sigma^4 x^T (S + sigma^2)^(-2) x / 2
  exactly (D = 2; float32: rtol 1e-4), the reconstruction score's mean over noise draws is
  that plus sigma^2 tr(W^2) / 2 with W = S (S + sigma^2)^(-1) (512 draws: within 3 SE), and
  the score norm ranks points like the exact log-density -x^T S^-1 x / 2 exactly (Spearman
  1) for isotropic data (S = 2 I), where both are functions of |x|; for r = 0.9 its quadratic
  form (S + sigma^2)^-2 is not S^-1 and Spearman is 0.77 on these 400 points (its SE at
  n = 400 is about (1 - 0.77^2) / sqrt(400) = 0.02: checked within 0.06)."""
  from scipy.stats import spearmanr
  den = Denoiser(lambda x, t, c: exact_eps(x, t), "eps", SCHED)
  sigma = float(np.sqrt(1 / AB[9] - 1))  # A level of the schedule: tweedie is exact.
  x = jax.random.multivariate_normal(jax.random.PRNGKey(2), jnp.zeros(2), S, (400,)) * 1.5
  xs = np.asarray(x, np.float64)
  Q = np.linalg.matrix_power(np.linalg.inv(S + sigma**2 * np.eye(2)), 2)
  want = sigma**4 * np.einsum("bi,ij,bj->b", xs, Q, xs) / 2
  got = np.asarray(edit.score_norm(den, x, sigma))
  np.testing.assert_allclose(got, want, rtol=1e-4)
  logp = -0.5 * np.einsum("bi,ij,bj->b", xs, np.linalg.inv(S), xs)
  rho = spearmanr(got, -logp)[0]
  assert abs(rho - 0.77) < 0.06, rho
  iso = Denoiser(lambda x, t, c: exact_eps(x, t, 2 * np.eye(2)), "eps", SCHED)
  assert spearmanr(np.asarray(edit.score_norm(iso, x, sigma)), np.sum(xs**2, 1))[0] > 1 - 1e-12
  W = S @ np.linalg.inv(S + sigma**2 * np.eye(2))
  x1 = jnp.tile(x[:1], (512, 1))
  rec = np.asarray(edit.reconstruction_score(den, x1, [sigma], jax.random.PRNGKey(3)))
  mean = want[0] + sigma**2 * np.trace(W @ W) / 2
  assert abs(rec.mean() - mean) < 3 * rec.std() / np.sqrt(512), (rec.mean(), mean)


def test_sdedit_in_sigma_space_follows_the_closed_form_flow_map():
  """Strength 0.5 on the VP SDE, the sigma-space Heun sampler with the exact Gaussian
  denoiser S (S + sigma^2)^-1 x~: the probability-flow map from sigma_s to 0 is
  S^(1/2) (S + sigma_s^2)^(-1/2) exactly, the start x_in + sigma_s z, and Heun's error
  against that map is second order: measured max error 0.096 at 8 steps and 0.020 at 16
  (a ratio of 0.21; 1/4 for order 2), checked as under a third."""
  from diffusion.core import processes, sdes
  sde = sdes.VPSDE()
  x_in = jnp.tile(jnp.array([[0.8, -0.4]]), (64, 1))
  errs = []
  for n in (8, 16):
    sigmas, x_start = edit.sdedit_sigma_start(sde, x_in, 0.5, jax.random.PRNGKey(0), n)
    sigma_s = float(processes.sigma_tilde(sde, jnp.asarray([0.5]))[0])
    assert float(sigmas[0]) == pytest.approx(sigma_s, rel=1e-6) and float(sigmas[-1]) == 0.0

    def denoise(x, s):
      inv = jnp.linalg.inv(jnp.asarray(S, jnp.float32)[None] + (s**2)[:, None, None] * jnp.eye(2))
      return jnp.einsum("ij,bjk,bk->bi", jnp.asarray(S, jnp.float32), inv, x)

    out = samplers.edm_heun(denoise, sigmas, jax.random.PRNGKey(1), (64, 2), x_init=x_start)
    lam, U = np.linalg.eigh(S)
    flow = U @ np.diag(np.sqrt(lam / (lam + sigma_s**2))) @ U.T
    errs.append(np.max(np.abs(np.asarray(out, np.float64) - np.asarray(x_start) @ flow.T)))
  assert errs[1] < errs[0] / 3, errs


def _vp_eps(x, t, c):
  """E[eps | x_t] of N(0, S) data on the VP SDE (the exact eps, batched)."""
  from diffusion.core import sdes
  a2 = sdes.VPSDE().alpha(t) ** 2
  inv = jnp.linalg.inv(a2[:, None, None] * jnp.asarray(S, jnp.float32)
                       + (1 - a2)[:, None, None] * jnp.eye(2))
  return jnp.sqrt(1 - a2)[:, None] * jnp.einsum("bij,bj->bi", inv, x)


def test_start_at_level_on_a_discrete_schedule_is_sdedit_start():
  """The generic start (`start_at_level`, what --mode edit runs) at SDEdit's level of
  strength 0.3 is `sdedit_start` exactly: the schedule cut to 30 steps, the same
  noised input from the same z, and DDIM's 20 steps scaled to 6."""
  from diffusion.core.samplers import registry
  x_in = jnp.tile(jnp.array([[0.8, -0.4]]), (8, 1))
  key = jax.random.PRNGKey(3)
  sched, x_start = edit.sdedit_start(SCHED, x_in, 0.3, key)
  z = jax.random.normal(key, x_in.shape)
  level = edit.strength_level(SCHED, 0.3)
  assert level == pytest.approx(float(np.sqrt(1 / AB[29] - 1)), rel=1e-6)
  proc, o, kw, c = edit.start_at_level(SCHED, "discrete", level,
                                       registry.DDIMOptions(num_steps=20))
  assert proc.num_steps == sched.num_steps == 30 and o.num_steps == 6 and not kw
  np.testing.assert_allclose(c * (x_in + level * z), x_start, atol=1e-6)


@pytest.mark.parametrize("method", ["probability_flow", "edm_heun"])
def test_start_at_level_runs_the_exact_flow_map_from_part_way(method):
  """From noise level sigma_s (strength 0.5 on the VP SDE) the probability-flow ODE with
  the exact Gaussian score maps y = x + sigma_s z to S^(1/2) (S + sigma_s^2)^(-1/2) y
  (the flow map in sigma~ units), whether it runs in time (probability_flow with
  t_start) or in sigma (edm_heun with its sigmas); both are Heun, second order: the
  error at 2n steps must be under a third of that at n (1/4 for order 2), and small
  (measured: 2.2e-3 / 6.7e-4 for the ODE at 16 / 32 steps; 7.1e-3 / 1.5e-3 for edm_heun,
  whose 32 / 64 steps scale to 19 / 39 by the log-sigma range left)."""
  from diffusion.core import sdes
  from diffusion.core.samplers import registry
  sde = sdes.VPSDE()
  den = Denoiser(_vp_eps, "eps", sde)
  y = jax.random.normal(jax.random.PRNGKey(5), (64, 2)) * 1.4
  level = edit.strength_level(sde, 0.5)
  lam, U = np.linalg.eigh(S)
  want = np.asarray(y, np.float64) @ (U @ np.diag(np.sqrt(lam / (lam + level**2))) @ U.T).T
  record = registry.get(method)
  errs = []
  for n in (16, 32):
    o = dataclasses.replace(registry.options_from(record, {}), num_steps=2 * n)
    proc, o, kw, c = edit.start_at_level(sde, record.domains[0], level, o)
    assert o.num_steps == n or method == "edm_heun"
    out = jax.jit(lambda y: record.run(den, proc, jax.random.PRNGKey(0), y.shape, o,
                                       x_init=c * y, **kw))(y)
    errs.append(float(np.max(np.abs(np.asarray(out, np.float64) - want))))
  assert errs[1] < errs[0] / 3 and errs[1] < 0.01, errs
