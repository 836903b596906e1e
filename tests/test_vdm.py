"""VDM (Kingma et al. 2021): gamma schedules, the process, the ELBO and its schedule gradient.

Closed forms used throughout: data ``x ~ N(0, S^2 I_D)`` (continuous) under
``z_t = alpha x + sigma eps`` with ``alpha^2 = sigmoid(-gamma)``,
``sigma^2 = sigmoid(gamma)``, ``snr = exp(-gamma)``. The exact denoiser is
``E[eps | z_t] = sigma z_t / (alpha^2 S^2 + sigma^2)`` and its error is
``E||eps - eps_hat||^2 = m(t) = D snr S^2 / (1 + snr S^2)``.

Monte Carlo tolerances are 3 standard errors computed from the sample. The
low-discrepancy times correlate the examples of one batch, so those standard
errors are taken over independent batches (batch means), never over the
examples of a batch.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion.core import likelihood, samplers, vdm

from tests import closed_form

S, D = 0.5, 4
LN2 = math.log(2.0)
EPS32 = float(np.finfo(np.float32).eps)
LINEAR = vdm.LinearGamma(-13.3, 5.0)


def exact_eps(z, gamma):
  """``E[eps | z_t]`` for ``x ~ N(0, S^2 I)``."""
  a2, s2 = jax.nn.sigmoid(-gamma)[:, None], jax.nn.sigmoid(gamma)[:, None]
  return jnp.sqrt(s2) * z / (a2 * S**2 + s2)


def eps_mse(gamma):
  """``m = E||eps - eps_hat||^2`` of the exact denoiser at ``gamma`` (numpy, float64)."""
  snr = np.exp(-np.asarray(gamma, np.float64))
  return D * snr * S**2 / (1.0 + snr * S**2)


def l_inf(g0, g1):
  """``E[L_inf]`` (nats) of the exact denoiser: ``0.5 int gamma' m dt`` with ``lambda = -gamma``:
  ``0.5 D int_{-g1}^{-g0} S^2 e^l / (1 + S^2 e^l) dl = 0.5 D log((1 + S^2 e^-g0) / (1 + S^2 e^-g1))``."""
  return 0.5 * D * (math.log1p(S**2 * math.exp(-g0)) - math.log1p(S**2 * math.exp(-g1)))


def learned(seed=0, width=16, **kw):
  return vdm.LearnedGamma(vdm.init_learned_gamma(jax.random.key(seed), width=width, **kw))


def batch_means(fn, seed, num_batches):
  """``fn(key) -> [B]`` over independent keys: (mean, standard error over the batch means)."""
  means = np.asarray(jax.jit(jax.vmap(lambda k: jnp.mean(fn(k))))(
      jax.random.split(jax.random.key(seed), num_batches)), np.float64)
  return means.mean(), means.std(ddof=1) / math.sqrt(num_batches)


# ---------------------------------------------------------------- schedules
def test_registry_and_endpoints():
  assert set(vdm.GAMMAS) == {"linear", "cosine", "learned"}
  with pytest.raises(ValueError, match=r"unknown gamma schedule 'nope'.*cosine.*learned.*linear"):
    vdm.get("nope")
  lin = vdm.get("linear", gamma_min=-10.0, gamma_max=3.0)
  t = jnp.asarray([0.0, 0.25, 1.0])
  np.testing.assert_array_equal(lin.gamma(t), np.float32([-10.0, -6.75, 3.0]))
  cos = vdm.get("cosine", gamma_min=-13.3, gamma_max=5.0)
  g = np.asarray(cos.gamma(t), np.float64)
  # atan / tan / log round-trip in float32: ~4 ulp of |gamma| <= 13.3 -> 1e-5.
  np.testing.assert_allclose(g[[0, 2]], [-13.3, 5.0], rtol=0, atol=1e-5)
  b = math.atan(math.exp(-13.3 / 2))
  a = math.atan(math.exp(5.0 / 2)) - b
  np.testing.assert_allclose(g[1], 2 * math.log(math.tan(0.25 * a + b)), rtol=1e-6)
  # Cosine with b = 0, a = pi / 2 is Nichol & Dhariwal's: alpha^2 = cos^2(pi t / 2).
  wide = vdm.VDMProcess(vdm.CosineGamma(-60.0, 60.0))  # atan(e^-30) ~ 1e-13, atan(e^30) ~ pi/2
  tt = jnp.linspace(0.1, 0.9, 9)
  np.testing.assert_allclose(wide.alpha(tt), np.cos(np.pi * np.asarray(tt) / 2), atol=1e-5)
  # A pytree whose numbers are leaves.
  assert len(jax.tree.leaves(lin)) == 2 and len(jax.tree.leaves(learned(width=8))) == 6
  with pytest.raises(ValueError, match="width"):
    vdm.init_learned_gamma(jax.random.key(0), width=0)


def _numpy_learned_gamma(params, t):
  """The brief's formula in float64: gt = l1(t) + l3(sigmoid(l2(l1(t)))), normalised."""
  p = {k: np.asarray(v, np.float64) for k, v in params["shape"].items()}
  sp = lambda v: np.logaddexp(0.0, v)  # noqa: E731  softplus
  sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731

  def gt(t):
    l1 = sp(p["w1"]) * t
    return l1 + sig(l1[:, None] * sp(p["w2"]) + p["b2"]) @ sp(p["w3"]) / p["w3"].size

  g0, g1 = float(params["gamma_min"]), float(params["gamma_max"])
  h = (gt(t) - gt(np.zeros(1))) / (gt(np.ones(1)) - gt(np.zeros(1)))
  return g0 + (g1 - g0) * h


def test_learned_gamma_is_the_formula_and_monotone_for_any_parameters():
  """Property test over 300 random parameter sets at raw scales 1, 10 and 40 (softplus of
  -120 underflows in float32: the ``h = t`` fallback), plus sets with every raw
  parameter -200, -50, 50 or 200; and the formula against float64 numpy.

  Exact endpoints; monotone: a float32 evaluation of the same non-decreasing
  function may step back by its rounding only, ~2 ulp of max |gamma| per
  evaluation (the sum over 16 units and the division are exact to a few ulp in
  relative terms), so ``gamma(t_{k+1}) >= gamma(t_k) - 4 ulp(max|gamma|)``.
  """
  width, n_draws = 16, 100
  t = jnp.linspace(0.0, 1.0, 257)

  def draw(key, scale):
    kmin, kmax, *ks = jax.random.split(key, 6)
    lo = -20.0 + 10.0 * jax.random.normal(kmin, ())
    return {"gamma_min": lo, "gamma_max": lo + 30.0 * jax.random.uniform(kmax, ()) + 1e-3,
            "shape": {"w1": scale * jax.random.normal(ks[0], ()),
                      "w2": scale * jax.random.normal(ks[1], (width,)),
                      "b2": scale * jax.random.normal(ks[2], (width,)),
                      "w3": scale * jax.random.normal(ks[3], (width,))}}

  gammas = jax.jit(jax.vmap(lambda p: vdm.LearnedGamma(p).gamma(t)))
  fills = [jax.tree.map(lambda v: jnp.full_like(v, fill), draw(jax.random.key(0), 1.0))
           for fill in (-200.0, -50.0, 50.0, 200.0)]
  for f in fills:
    f["gamma_min"], f["gamma_max"] = jnp.float32(-13.3), jnp.float32(5.0)
  for scale in (1.0, 10.0, 40.0, "fills"):
    if scale == "fills":  # every raw parameter -200, -50, 50 or 200 (padded to 100 sets)
      params = jax.tree.map(lambda *v: jnp.stack(v * 25), *fills)
    else:
      params = jax.vmap(lambda k: draw(k, scale))(jax.random.split(jax.random.key(7), n_draws))
    g = np.asarray(gammas(params), np.float64)
    lo, hi = np.asarray(params["gamma_min"]), np.asarray(params["gamma_max"])
    np.testing.assert_array_equal(g[:, 0], lo)
    np.testing.assert_array_equal(g[:, -1], hi)
    assert np.isfinite(g).all()
    ulp = np.spacing(np.maximum(np.abs(lo), np.abs(hi)).astype(np.float32)).astype(np.float64)
    assert (np.diff(g, axis=1) >= -4 * ulp[:, None]).all(), (scale, np.diff(g, axis=1).min())
    if scale == 1.0:  # The formula, in float64: float32 rounding of a 16-term sum, ~1e-6.
      first = jax.tree.map(lambda v: v[0], params)
      np.testing.assert_allclose(g[0], _numpy_learned_gamma(first, np.asarray(t, np.float64)),
                                 rtol=1e-5, atol=2e-5)


def test_jvp_derivative_matches_finite_differences():
  """``gamma_and_derivative`` against float64 central differences of the float64 formula
  (step 1e-5: truncation ~h^2 gamma''' ~1e-9) for the learned schedule, and against the
  closed forms of the others: ``18.3`` (linear), ``4 a / sin(2(a t + b))`` (cosine).
  The jvp runs in float32: ~1e-6 relative to |gamma'| ~ 18 (the learned one's
  network sums width = 32 terms): rtol 1e-5.
  """
  t = np.linspace(0.0, 1.0, 21)
  tj = jnp.asarray(t, jnp.float32)
  p = learned(3, width=32).params
  h = 1e-5
  fd = (_numpy_learned_gamma(p, t + h) - _numpy_learned_gamma(p, t - h)) / (2 * h)
  (_, dg), (_, dlin), (_, dcos), (hh, dh) = jax.jit(lambda t: (
      vdm.LearnedGamma(p).gamma_and_derivative(t), LINEAR.gamma_and_derivative(t),
      vdm.CosineGamma().gamma_and_derivative(t),
      vdm.LearnedGamma(p).unit_shape_and_derivative(t)))(tj)
  np.testing.assert_allclose(dg, fd, rtol=1e-5)
  np.testing.assert_allclose(dlin, np.full(21, 18.3), rtol=1e-6)
  b = math.atan(math.exp(-13.3 / 2))
  a = math.atan(math.exp(2.5)) - b
  # Near t = 0 gamma' ~ 4a / (2b) ~ 2300 and float32 t + b carries ~1e-7 relative error
  # into sin(2u), so rtol 1e-5 still holds there.
  np.testing.assert_allclose(dcos, 4 * a / np.sin(2 * (a * t + b)), rtol=1e-5)
  # unit_shape_and_derivative is the same derivative over the range.
  np.testing.assert_allclose(dh * (5.0 + 13.3), dg, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(hh)[[0, -1]], [0.0, 1.0])


# ---------------------------------------------------------------- process
def test_process_marginals_are_the_theory_and_solve_the_sde():
  """Linear gamma: ``alpha^2 = sigmoid(-gamma)`` etc. in closed form (float32 ulps), and
  the SDE's coefficients generate these marginals: ``d alpha/dt = -beta alpha / 2`` and
  ``d sigma^2/dt = -beta sigma^2 + beta`` (autodiff of marginal_coeffs in float32;
  smooth scalar functions: ~1e-5 relative)."""
  sde = vdm.VDMProcess(LINEAR)
  t = jnp.linspace(0.02, 0.98, 25)
  g = -13.3 + 18.3 * np.asarray(t, np.float64)
  alpha, sigma = (np.asarray(v, np.float64) for v in sde.marginal_coeffs(t))
  np.testing.assert_allclose(alpha, np.sqrt(1 / (1 + np.exp(g))), rtol=1e-6)
  np.testing.assert_allclose(sigma, np.sqrt(1 / (1 + np.exp(-g))), rtol=1e-6)
  np.testing.assert_allclose(sde.log_snr(t), -g, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(sde.beta(t), 18.3 / (1 + np.exp(-g)), rtol=1e-5)
  assert sde.prior_std == 1.0
  dalpha = jax.vmap(jax.grad(lambda s: sde.marginal_coeffs(s[None])[0][0]))(t)
  dvar = jax.vmap(jax.grad(lambda s: sde.marginal_coeffs(s[None])[1][0] ** 2))(t)
  beta = np.asarray(sde.beta(t), np.float64)
  np.testing.assert_allclose(sde.drift(jnp.ones((25, 1)), t)[:, 0], -0.5 * beta, rtol=1e-6)
  np.testing.assert_allclose(sde.diffusion(t) ** 2, beta, rtol=1e-6)
  np.testing.assert_allclose(dalpha, -0.5 * beta * alpha, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(dvar, beta * (1 - sigma**2), rtol=1e-4, atol=1e-6)
  leaves, tree = jax.tree.flatten(vdm.VDMProcess(learned(width=4)))
  assert len(leaves) == 6 and isinstance(jax.tree.unflatten(tree, leaves), vdm.VDMProcess)


def test_process_runs_in_the_probability_flow_sampler_and_bits_per_dim():
  """Gaussian data, exact score, linear gamma.

  Probability flow (Heun, 100 steps, from t = 1 to 1e-3): the exact flow map
  keeps standardised coordinates (`closed_form.gaussian_flow_map`). Heun's
  global error is O(h^2); its size is estimated by Richardson from the
  200-step run, ``err_100 ~ |x_100 - x_200| 4/3``: tolerance twice that plus
  float32 rounding (1e-5).

  Euler-Maruyama (400 steps, 16,384 values): the sample variance is the marginal's,
  ``alpha_eps^2 S^2 + sigma_eps^2``, within 3 standard errors plus EM's first-order weak
  error, relative ``dt int (beta / 2)^2 dt`` (the drift's rate squared; 4.6%; measured about 1%).

  bits_per_dim (rk45, rtol = atol = 1e-5, exact divergence, D = 2): the
  probability-flow log-density is ``log N(z; 0, I) + D log(sd_1 / sd_eps)``
  with ``z = x sd_1 / sd_eps``, ``sd_t^2 = alpha_t^2 S^2 + sigma_t^2`` (the prior
  is N(0, I), not q(z_1)). The solver controls each step's error to ~1e-5 of
  states of size ~1 over <= 100 steps: <= 1e-3 in z and in the log-det, so
  <= 3e-3 nats, 2.2e-3 bits/dim at D = 2.
  """
  sde = vdm.VDMProcess(LINEAR)
  score_fn = closed_form.gaussian(np.zeros(2), S).score_fn(sde)
  x1 = jax.random.normal(jax.random.key(0), (64, 2))
  run = jax.jit(lambda: [samplers.probability_flow(score_fn, sde, jax.random.key(1), x1.shape,
                                                     num_steps=n, eps=1e-3, x_init=x1)
                         for n in (100, 200)] + [samplers.euler_maruyama(
                             score_fn, sde, jax.random.key(3), (8192, 2), num_steps=400, eps=1e-3)])
  x100, x200, x_em = (np.asarray(v, np.float64) for v in run())
  (a1, s1), (ae, se) = ((float(v[0]) for v in sde.marginal_coeffs(jnp.asarray([t])))
                        for t in (1.0, 1e-3))
  exact = closed_form.gaussian_flow_map(np.asarray(x1, np.float64), 0.0, S, a1, s1, ae, se)
  richardson = np.abs(x100 - x200).max() * 4 / 3
  assert np.abs(x100 - exact).max() <= 2 * richardson + 1e-5, (np.abs(x100 - exact).max(), richardson)
  var_eps = ae**2 * S**2 + se**2
  weak = np.mean((0.5 * np.asarray(sde.beta(jnp.linspace(0, 1, 2001)))) ** 2) / 400  # 4.6%
  assert abs(x_em.var() - var_eps) <= 3 * var_eps * math.sqrt(2 / x_em.size) + weak * var_eps
  assert abs(x_em.mean()) <= 3 * math.sqrt(var_eps / x_em.size)

  x = jnp.asarray(np.random.default_rng(0).normal(0, S, (16, 2)), jnp.float32)
  bpd = jax.jit(lambda x: likelihood.bits_per_dim(score_fn, sde, x, jax.random.key(2),
                                                  eps=1e-3, divergence="exact"))(x)
  sd1, sde_ = math.sqrt(a1**2 * S**2 + s1**2), math.sqrt(ae**2 * S**2 + se**2)
  z = np.asarray(x, np.float64) * sd1 / sde_
  logp = -0.5 * np.sum(z**2, 1) - math.log(2 * math.pi) + 2 * math.log(sd1 / sde_)
  np.testing.assert_allclose(bpd, -logp / (2 * LN2), rtol=0, atol=2.2e-3)


# ---------------------------------------------------------------- ELBO
@pytest.mark.parametrize("schedule", [LINEAR, vdm.CosineGamma(-13.3, 5.0), learned(1)],
                         ids=["linear", "cosine", "learned"])
def test_elbo_with_the_exact_denoiser_is_the_exact_nll(schedule):
  """Continuous Gaussian data, ``x ~ N(0, S^2 I_4)``, exact denoiser.

  The 256-bin decoder models quantised data, so for continuous data the t = 0
  term is the continuous analogue: the Gaussian decoder
  ``p(x | z_0) = N(x; z_0 / alpha_0, e^{gamma_0})`` (the 256-bin decoder's
  logits are this log-density at the bin centres); with ``z_0 / alpha_0 = x +
  e^{gamma_0 / 2} eps`` its expected loss is ``R = D (log(2 pi) + gamma_0 + 1) / 2``.

  I-MMSE: with the exact denoiser ``E[L_inf] = I(x; z_0) - I(x; z_1)`` (`l_inf`),
  and ``E[KL(q(z_1|x) || N(0, I))] = I(x; z_1) + KL(q(z_1) || N(0, I))``, so

      E[prior + L_inf] + R = h(x) + KL(q(z_1) || N(0, I)) + D log(1 + e^{gamma_0} / S^2) / 2,

  where ``h(x) = D log(2 pi e S^2) / 2`` is the exact expected NLL, the second
  term the prior mismatch (``q(z_1) = N(0, v_1 I)``, ``v_1 = alpha_1^2 S^2 +
  sigma_1^2``: ``D (v_1 - 1 - log v_1) / 2``), and the third ``R - h(x | z_0)``,
  the decoder's gap to the true posterior ``N(., S^2 e^g0 / (S^2 + e^g0))``.
  The library's prior and diffusion terms are estimated over 64 independent
  batches of 1024 (low-discrepancy t within each batch).
  """
  g0, g1 = (float(v) for v in schedule.endpoints())

  def per_example(key):
    xk, lk = jax.random.split(key)
    x = S * jax.random.normal(xk, (1024, D))
    return vdm.prior_kl(x, schedule) + vdm.diffusion_loss(x, exact_eps, schedule, lk)

  est, se = batch_means(per_example, 0, 64)
  a1, s1 = 1 / (1 + math.exp(g1)), 1 / (1 + math.exp(-g1))
  v1 = a1 * S**2 + s1
  recon = 0.5 * D * (math.log(2 * math.pi) + g0 + 1)
  exact_nll = 0.5 * D * math.log(2 * math.pi * math.e * S**2)
  endpoint_terms = 0.5 * D * (v1 - 1 - math.log(v1)) + 0.5 * D * math.log1p(math.exp(g0) / S**2)
  lhs = est + recon / (D * LN2)
  rhs = (exact_nll + endpoint_terms) / (D * LN2)
  assert abs(lhs - rhs) <= 3 * se, (lhs, rhs, se)  # 3 standard errors of the batch-mean estimate
  assert se < 0.02 * est  # a sharp test: the prior + diffusion terms known to 2%


def test_discrete_time_elbo_decreases_to_the_continuous_one():
  """Exact denoiser: ``E[L_T] = 0.5 sum_i expm1(gamma(t_i) - gamma(s_i)) m(t_i)``.

  For the optimal denoiser ``m`` grows with t, so on each interval
  ``(SNR(s) - SNR(t)) mmse_x(t) >= int_s^t -SNR' mmse_x``: ``L_T >= L_inf``,
  and the paper (Sec. 4.1) shows ``L_2T <= L_T``. Checked on the closed form
  for T = 1 .. 2^14 (float64) and converging like 1/T; the library's
  Monte Carlo ``L_T`` (64 batches of 512) matches the closed form within 3
  standard errors for T = 4, 32, 1000 (L_inf: the test above).
  """
  sched = LINEAR

  def closed(T):
    i = np.arange(1, T + 1)
    gt, gs = -13.3 + 18.3 * i / T, -13.3 + 18.3 * (i - 1) / T
    return 0.5 * np.sum(np.expm1(gt - gs) * eps_mse(gt))

  cont = l_inf(-13.3, 5.0)
  ts = [2**k for k in range(15)]
  values = np.asarray([closed(T) for T in ts])
  assert (np.diff(values) < 0).all() and (values > cont).all()
  gap = (values - cont) * np.asarray(ts)
  assert abs(gap[-1] / gap[-2] - 1) < 0.01  # (L_T - L_inf) ~ c / T: converges to L_inf

  steps = (4, 32, 1000)

  def per_batch(key):  # one program for all T; nats
    xk, lk = jax.random.split(key)
    x = S * jax.random.normal(xk, (512, D))
    return jnp.stack([jnp.mean(vdm.diffusion_loss(x, exact_eps, sched, jax.random.fold_in(lk, T),
                                                  num_steps=T)) for T in steps]) * D * LN2

  means = np.asarray(jax.jit(jax.vmap(per_batch))(jax.random.split(jax.random.key(9), 64)),
                     np.float64)
  for T, est, se in zip(steps, means.mean(0), means.std(0, ddof=1) / math.sqrt(64)):
    assert abs(est - closed(T)) <= 3 * se, (T, est, closed(T), se)  # 3 standard errors


@pytest.mark.parametrize("gamma0", [-13.3, -5.0])
def test_reconstruction_term_against_numpy(gamma0):
  """The decoder's ``-log p(x | z_0)`` against a float64 numpy log-softmax over 256 bins,
  from the same noise. Float32 rounding: ``z_0 / alpha_0`` carries ~eps32 absolute error,
  which moves a logit by ``e^{-gamma_0} |z - v| eps32 <= e^{-gamma_0} (4 / 256) eps32`` for
  the bins that matter (|z - v| within two bins; the rest have softmax weight
  < e^-100); two such logits per log-softmax: per dimension
  ``2 e^{-gamma_0} eps32 / 64``, in bits/dim divided by ln 2 (plus 1e-6 for the sums).
  """
  sched = vdm.LinearGamma(gamma0, 5.0)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 256, (4, 6)) / 127.5 - 1.0, jnp.float32)
  key = jax.random.key(3)
  got, noise = jax.jit(lambda x, sched: (vdm.reconstruction_loss(x, sched, key),
                                         jax.random.normal(key, x.shape, jnp.float32)))(x, sched)
  got, noise = np.asarray(got, np.float64), np.asarray(noise, np.float64)
  xd = np.asarray(x, np.float64)
  z = xd + math.exp(gamma0 / 2) * noise
  v = (2 * np.arange(256) + 1) / 256 - 1
  logits = -0.5 * math.exp(-gamma0) * (z[..., None] - v) ** 2
  logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  k = np.clip(np.floor((xd + 1) * 128), 0, 255).astype(int)
  assert (k == np.round((xd + 1) * 127.5)).all()  # the value k / 127.5 - 1 lies in bin k
  want = -np.take_along_axis(logp, k[..., None], -1)[..., 0].sum(1) / (6 * LN2)
  tol = 2 * math.exp(-gamma0) * EPS32 / 64 / LN2 + 1e-6
  np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_vdm_loss_sums_its_terms_and_trains_through_value_and_grad():
  """`vdm_loss` on 8-bit data: loss = the three terms' sum (float32 ulps), and
  `jax.value_and_grad` of the scalar reaches every leaf (network, endpoints, shape)."""
  x = jnp.asarray(np.random.default_rng(1).integers(0, 256, (8, 2, 2, 1)) / 127.5 - 1, jnp.float32)

  def loss_fn(params, vg):
    w, gp = params
    eps_fn = lambda z, g: jnp.tanh(w * z)  # noqa: E731
    return vdm.vdm_loss(x, eps_fn, vdm.LearnedGamma(gp), jax.random.key(0), variance_gradient=vg)

  params = (jnp.float32(0.5), learned(width=4).params)
  (loss, m), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=1)(
      params, True)
  assert set(m) == {"loss", "bpd_prior", "bpd_reconstruction", "bpd_diffusion"}
  np.testing.assert_allclose(loss, m["bpd_prior"] + m["bpd_reconstruction"] + m["bpd_diffusion"],
                             rtol=1e-6)
  assert all(np.isfinite(g).all() and np.any(g != 0) for g in jax.tree.leaves(grads))
  with pytest.raises(ValueError, match="num_steps"):  # eval_shape: traced, not compiled
    jax.eval_shape(lambda: vdm.vdm_loss(x, lambda z, g: z, LINEAR, jax.random.key(0),
                                        num_steps=-1))
  with pytest.raises(ValueError, match="eps_fn must return"):
    jax.eval_shape(lambda: vdm.vdm_loss(x, lambda z, g: z[..., :0], LINEAR, jax.random.key(0)))


# ---------------------------------------------------------------- variance gradient
def _tiny_denoiser(w):
  """A 2-parameter denoiser per example: ``w0 exact + w1 tanh(z) gamma / 10``."""
  return lambda z, g: w[0] * exact_eps(z, g) + w[1] * jnp.tanh(z) * g[:, None] / 10


def test_variance_gradient_equals_the_two_pass_reference():
  """One backward pass gives the network and the endpoints the gradient of mean(L), the
  shape parameters that of mean(L^2), in continuous time and with T = 8; the reference
  is the two-pass one from the per-example Jacobian ``J_i = dL_i / dparams`` by plain
  autodiff: ``mean_i J_i`` and ``mean_i 2 L_i J_i``. The value is the plain one.

  Both are float32 sums over 256 examples of the same per-example chains in another
  order, ~1e-6 of the largest entry: rtol 1e-5 (of the largest entry of the group) for
  the network and the endpoints. The shape's chains cancel: its normalised derivative is
  a difference, ``(rise'(t) - h rise'(1)) / rise(1)``, and in discrete time
  ``gamma(t_i) - gamma(s_i)`` is one, by factors up to ~1e2: rtol 1e-4 (measured
  3e-5 on the scalar w1, 1e-6 over the whole shape; with float64 parameters the
  discrepancy falls 400-fold, so it is rounding). Without the factor ``2 L_i`` the
  shape gradient moves by more than 10% of its largest entry.
  """
  x = S * jax.random.normal(jax.random.key(4), (256, D))
  key = jax.random.key(5)

  def per_example(params, vg, num_steps):
    w, gp = params
    return vdm.diffusion_loss(x, _tiny_denoiser(w), vdm.LearnedGamma(gp), key,
                              num_steps=num_steps, variance_gradient=vg)

  @jax.jit
  def custom_and_jacobian(params):
    return [(jax.value_and_grad(lambda p: jnp.mean(per_example(p, True, T)))(params),
             jax.jacrev(lambda p: per_example(p, False, T))(params), per_example(params, False, T))
            for T in (0, 8)]

  def reference(j, sq):
    j = np.asarray(j, np.float64).reshape(L.size, -1)
    return ((2 * L[:, None] if sq else 1.0) * j).mean(0)

  def check(got, want, rtol):
    got, want = np.concatenate([np.ravel(g) for g in got]), np.concatenate(want)
    assert np.abs(got - want).max() <= rtol * np.abs(want).max(), (
        np.abs(got - want).max() / np.abs(want).max())

  keys = ("w1", "w2", "b2", "w3")
  params = (jnp.asarray([0.9, 0.3]), learned(2, width=16).params)
  for (value, grad), jac, L in custom_and_jacobian(params):
    L = np.asarray(L, np.float64)
    np.testing.assert_allclose(value, L.mean(), rtol=1e-6)  # float32 mean of 256 terms
    check([grad[0]], [reference(jac[0], False)], 1e-5)
    check([grad[1]["gamma_min"], grad[1]["gamma_max"]],
          [reference(jac[1]["gamma_min"], False), reference(jac[1]["gamma_max"], False)], 1e-5)
    sq = [reference(jac[1]["shape"][k], True) for k in keys]
    check([grad[1]["shape"][k] for k in keys], sq, 1e-4)
    mean = np.concatenate([reference(jac[1]["shape"][k], False) for k in keys])
    # The ordinary gradient of the shape is another vector: the rule matters.
    sq = np.concatenate(sq)
    assert np.abs(sq - mean).max() > 0.1 * np.abs(sq).max()


def test_variance_gradient_lowers_the_variance_and_keeps_the_elbo():
  """Adam (lr 0.05, 300 steps, batch 256, low-discrepancy t) on the shape of a
  width-16 `LearnedGamma`, endpoints fixed at (-13.3, 5), exact denoiser, with the
  variance gradient. Measured on 16,384 fresh i.i.d. (x, t, eps) draws: the
  per-example variance of the diffusion-loss estimate falls from 81.6 to 54.1
  (bits/dim squared; the floor with the time variance removed is
  ``L_inf^2 2 / D = 36.9``), while its mean stays at 8.53 -> 8.59 against
  ``L_inf = 8.593`` (standard errors 0.07, 0.06). Tolerances: 3 standard errors
  of each comparison, the variance's from the sample's fourth moment,
  ``SE(var) = sqrt((m4 - var^2) / n)``.
  """
  ends = {"gamma_min": jnp.float32(-13.3), "gamma_max": jnp.float32(5.0)}

  def losses_(shape, key, antithetic):
    xk, lk = jax.random.split(key)
    x = S * jax.random.normal(xk, (256, D))
    return vdm.diffusion_loss(x, exact_eps, vdm.LearnedGamma({**ends, "shape": shape}), lk,
                              antithetic=antithetic, variance_gradient=True)

  opt = optax.adam(0.05)

  @jax.jit
  def train(shape, key):
    def step(carry, k):
      shape, state = carry
      g = jax.grad(lambda s: jnp.mean(losses_(s, k, True)))(shape)
      updates, state = opt.update(g, state, shape)
      return (optax.apply_updates(shape, updates), state), None
    return jax.lax.scan(step, (shape, opt.init(shape)), jax.random.split(key, 300))[0][0]

  @jax.jit
  def sample(shape, key):
    return jax.vmap(lambda k: losses_(shape, k, False))(jax.random.split(key, 64)).ravel()

  shape0 = vdm.init_learned_gamma(jax.random.key(0), width=16)["shape"]
  shape1 = train(shape0, jax.random.key(1))

  def stats(shape, seed):
    v = np.asarray(sample(shape, jax.random.key(seed)), np.float64)
    var, m4 = v.var(ddof=1), np.mean((v - v.mean()) ** 4)
    return v.mean(), v.std(ddof=1) / math.sqrt(v.size), var, math.sqrt((m4 - var**2) / v.size)

  mean0, se0, var0, vse0 = stats(shape0, 10)
  mean1, se1, var1, vse1 = stats(shape1, 11)
  assert var0 - var1 > 3 * math.hypot(vse0, vse1), (var0, var1, vse0, vse1)
  assert var1 < 0.75 * var0, (var0, var1)  # measured 81.6 -> 54.1
  assert abs(mean1 - mean0) <= 3 * math.hypot(se0, se1), (mean0, mean1)
  want = l_inf(-13.3, 5.0) / (D * LN2)
  for m, se in ((mean0, se0), (mean1, se1)):
    assert abs(m - want) <= 3 * se, (m, want, se)
