"""Classifier-free and classifier guidance against closed forms (issue 15).

The "network" is exact: for a two-class Gaussian mixture in 2-D, given label 0
or 1 it returns the exact output of that class's noised Gaussian, given the null
label 2 that of the mixture. So every difference below is the guidance's or the
samplers'.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.core import edm, guidance, processes, schedules, sdes
from diffusion.core.denoiser import Denoiser
from diffusion.core.samplers import registry

from closed_form import Mixture, gaussian, mixture_sample_errors

MEANS = np.array([[-0.8, 0.3], [0.9, -0.4]])
STDS = np.array([0.25, 0.4])
MIX = Mixture(np.array([0.5, 0.5]), MEANS, STDS)
CLASSES = [gaussian(MEANS[k], STDS[k]) for k in range(2)]
NULL = 2
N = 4000
KEY = jax.random.PRNGKey(7)


def exact_score(x, alpha, sigma, y):
  """The noised class-y score (the mixture's for the null label)."""
  out = MIX.score(x, alpha, sigma)
  for k, g in enumerate(CLASSES):
    out = jnp.where((y == k)[:, None], g.score(x, alpha, sigma), out)
  return out


def eps_net(process):
  def net(x, t, y):
    alpha, sigma = process.alpha(t), process.sigma(t)
    return -sigma[:, None] * exact_score(x, alpha, sigma, y)
  return net


def f_net(sigma_data=0.5):
  """EDM's exact preconditioned F (as tests/test_every_sampler.py)."""
  def net(x_in, c_noise, y):
    sigma = jnp.exp(4.0 * c_noise)
    c_skip, c_out, c_in = edm.preconditioning(sigma, sigma_data)
    x = x_in / c_in[:, None]
    d = x + sigma[:, None] ** 2 * exact_score(x, jnp.ones_like(sigma), sigma, y)
    return (d - c_skip[:, None] * x) / c_out[:, None]
  return net


SCHED = schedules.get("linear", num_steps=1000)
VP = sdes.VPSDE()
EDM = edm.EDMProcess()
MODELS = {
    "discrete": lambda: Denoiser(eps_net(SCHED), "eps", SCHED),
    "vp": lambda: Denoiser(eps_net(VP), "eps", VP),
    "edm": lambda: Denoiser(f_net(), "F", EDM, noise_input="edm"),
}
# Each sampler on the model whose domain it prefers, at few steps (equalities below
# hold at any step count).
WHERE = {"ddpm": "discrete", "ddim": "discrete", "euler_maruyama": "vp",
         "predictor_corrector": "vp", "probability_flow": "vp"}
# Predictor-corrector's Langevin step (snr 0.16) needs small steps: at 12 it diverges.
# No clipping of x0 to [-1, 1]: class 0 has mass below -1.
OPTIONS = {"ddpm": dict(clip_denoised=False), "probability_flow": dict(num_steps=12, ode_method="heun"),
           "predictor_corrector": dict(num_steps=100)}


def _on(record, process):
  for domain in record.domains:
    try:
      return processes.on_domain(process, domain)
    except ValueError:
      continue
  raise AssertionError(record.name)


def _sample(den, method, n, key=KEY, x_init=None):
  record = registry.get(method)
  options = record.make_options(**OPTIONS.get(method, dict(num_steps=12)))
  kw = {} if x_init is None else {"x_init": x_init}
  return np.asarray(jax.jit(lambda k: record.run(den, _on(record, den.process), k, (n, 2),
                                                 options, **kw))(key), np.float64)


def _labels(n):
  return jnp.arange(n, dtype=jnp.int32) % 2


@pytest.mark.parametrize("method", sorted(registry.SAMPLERS))
def test_every_sampler_guides_w0_unconditional_w1_conditional(method):
  """w = 0 is the unconditional sampler and w = 1 the conditional one, sample for
  sample, through the batched two-half call (the interval (0, inf) forces it at w = 1);
  every network call of a guided run is one call on twice the batch."""
  n = 64
  base = MODELS[WHERE.get(method, "edm")]()
  seen = []
  counting = Denoiser(lambda x, c, y: (seen.append(x.shape[0]), base.net(x, c, y))[1],
                      base.prediction, base.process, base.noise_input)
  y, null = _labels(n), jnp.full((n,), NULL, jnp.int32)
  uncond = _sample(base.bind(null), method, n)
  cond = _sample(base.bind(y), method, n)
  w0 = _sample(guidance.ClassifierFree(counting.bind(y), null, 0.0), method, n)
  assert seen and set(seen) == {2 * n}, seen
  w1 = _sample(guidance.ClassifierFree(base.bind(y), null, 1.0, (0.0, np.inf)), method, n)
  trivial = _sample(guidance.ClassifierFree(base.bind(y), null, 1.0), method, n)
  # w = 0: out_u + 0 (out_c - out_u) is out_u exactly; rows of the two-half batch are
  # computed by the same elementwise ops as alone: equal to float rounding (1e-5 of
  # O(1) samples: a few ulps per step over <= 1000 steps). w = 1: out_u + (out_c -
  # out_u) rounds out_c by one ulp per step. A wrong half or weight moves samples by
  # the class-mean separation (~1.8).
  assert np.isfinite(uncond).all() and np.isfinite(cond).all()
  np.testing.assert_allclose(w0, uncond, atol=1e-5)
  np.testing.assert_allclose(w1, cond, atol=1e-5)
  np.testing.assert_array_equal(trivial, cond)  # w = 1 without an interval: the model itself.
  assert np.abs(cond - uncond).max() > 0.1  # The two differ: the check above means something.


@pytest.mark.parametrize("model", ["discrete", "vp", "edm"])
def test_conditional_sampler_reproduces_each_class(model):
  """The conditional model samples each class's Gaussian: mean within 3 SE, variance
  within 3 SE plus 5e-3 of discretisation (tests/test_every_sampler.py's allowance)."""
  method = {"discrete": "ddpm", "vp": "euler_maruyama", "edm": "edm_heun"}[model]
  global OPTIONS  # pylint: disable=global-statement
  saved = dict(OPTIONS)
  OPTIONS.update(euler_maruyama=dict(num_steps=500), edm_heun=dict(num_steps=30))
  try:
    for k in range(2):
      den = MODELS[model]().bind(jnp.full((N,), k, jnp.int32))
      x = _sample(den, method, N, key=jax.random.fold_in(KEY, k))
      assert mixture_sample_errors(x, CLASSES[k], var_allowance=5e-3) == [], (model, k)
  finally:
    OPTIONS.clear()
    OPTIONS.update(saved)


def _linear_flow_map(w, c, beta_min=0.1, beta_max=20.0, t_end=1e-3, steps=20_000):
  """The guided probability-flow ODE of Gaussian classes in closed form, per coordinate.

  On the VP SDE, ``x_t | class`` is ``N(alpha m, v)`` with ``v = alpha^2 s^2 + sigma^2``,
  whose score ``-(x - alpha m) / v`` is linear in x. With the unconditional model
  Gaussian too (here ``N(0, 1)``, mean 0 and std 1: any Gaussian makes the flow linear),
  the guided score ``w s_c + (1 - w) s_u = -(P x - Q)`` has ``P = w / v_c + (1 - w) / v_u``
  and ``Q = alpha (w m_c / v_c + (1 - w) m_u / v_u)``. The probability-flow ODE ``dx/dt
  = -beta/2 x - beta/2 score~ = a x + b`` with ``a = beta (P - 1) / 2`` and ``b = -beta Q
  / 2`` is linear, so its map from t = 1 to t_end is affine, ``x(t_end) = A x(1) + C``,
  ``dA/dt = a A`` (A(1) = 1) and ``dC/dt = a C + b`` (C(1) = 0), integrated here by RK4
  in 20,000 steps (error ~h^4, < 1e-12). Returns ``(A [2], C [2])`` per coordinate.
  """
  m_c, s_c = MEANS[c], STDS[c]

  def coeffs(t):
    log_alpha = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    alpha = np.exp(log_alpha)
    sigma2 = 1.0 - alpha**2
    beta = beta_min + t * (beta_max - beta_min)
    v_c, v_u = alpha**2 * s_c**2 + sigma2, np.ones(2)  # N(0, 1) data stays N(0, 1) on VP.
    p = w / v_c + (1 - w) / v_u
    q = alpha * (w * m_c / v_c)
    return 0.5 * beta * (p - 1.0), -0.5 * beta * q

  def f(t, y):
    a, b = coeffs(t)
    return np.stack([a * y[0], a * y[1] + b])

  y, h = np.stack([np.ones(2), np.zeros(2)]), (t_end - 1.0) / steps
  t = 1.0
  for _ in range(steps):
    k1 = f(t, y)
    k2 = f(t + h / 2, y + h / 2 * k1)
    k3 = f(t + h / 2, y + h / 2 * k2)
    k4 = f(t + h, y + h * k3)
    y, t = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), t + h
  return y[0], y[1]


@pytest.mark.parametrize("w", [2.0, 4.0])
def test_guided_probability_flow_lands_on_the_linear_flow(w):
  """Guided Heun PF-ODE of Gaussian classes against the closed-form affine flow map
  (`_linear_flow_map`). Heun is second order, so the error at N steps is ~C / N^2: it
  must fall by 4x (3 .. 5.5 allowed for the non-asymptotic part) from 100 to 200 steps
  and be < 1e-3 at 200 (measured: 2.8e-4 at w = 2, 2.2e-4 at w = 4), while guiding
  with the weight one lower (the other convention, (1 + w') eps_c - w' eps_u) moves
  the endpoint by > 0.1 (0.13 at w = 2, more at 4)."""
  n = 256
  y = _labels(n)
  uncond = gaussian(np.zeros(2), 1.0)

  def net(x, t, labels):
    alpha, sigma = VP.alpha(t), VP.sigma(t)
    s = jnp.where((labels == NULL)[:, None], uncond.score(x, alpha, sigma),
                  exact_score(x, alpha, sigma, labels))
    return -sigma[:, None] * s

  den = Denoiser(net, "eps", VP).bind(y)
  x1 = jax.random.normal(jax.random.PRNGKey(1), (n, 2))
  maps = [_linear_flow_map(w, c) for c in range(2)]
  want = np.where(np.asarray(y)[:, None] == 0, maps[0][0] * x1 + maps[0][1],
                  maps[1][0] * x1 + maps[1][1])
  record = registry.get("probability_flow")

  def endpoint(scale, steps):
    g = guidance.ClassifierFree(den, jnp.full((n,), NULL, jnp.int32), scale)
    o = record.make_options(num_steps=steps, ode_method="heun")
    return np.asarray(jax.jit(lambda: record.run(g, VP, KEY, (n, 2), o, x_init=x1))(), np.float64)

  err100 = np.abs(endpoint(w, 100) - want).max()
  err200 = np.abs(endpoint(w, 200) - want).max()
  print(f"w={w}: max error {err100:.2e} at 100 steps, {err200:.2e} at 200")
  assert err200 < 1e-3, err200
  assert 3.0 < err100 / err200 < 5.5, (err100, err200)
  assert np.abs(endpoint(w - 1.0, 200) - want).max() > 0.1


def test_guidance_interval_applies_w_only_inside():
  """Inside ``(lo, hi]`` of sigma / alpha the guided eps is eps_u + w (eps_c - eps_u);
  outside it is eps_c (to one rounding)."""
  den = MODELS["vp"]()
  n = 8
  x = jax.random.normal(KEY, (n, 2))
  y, null = _labels(n), jnp.full((n,), NULL, jnp.int32)
  t = jnp.linspace(0.05, 0.95, n)
  s = np.asarray(processes.sigma_tilde(VP, t))
  lo, hi = float(s[2]), float(s[5])
  g = guidance.ClassifierFree(den.bind(y), null, 3.0, (lo, hi))
  e_c, e_u = np.asarray(den.bind(y).eps(x, t)), np.asarray(den.bind(null).eps(x, t))
  inside = (s > lo) & (s <= hi)
  assert inside.sum() == 3
  want = np.where(inside[:, None], e_u + 3.0 * (e_c - e_u), e_c)
  np.testing.assert_allclose(np.asarray(g.eps(x, t)), want, atol=1e-5)
  with pytest.raises(ValueError, match="lo < hi"):
    guidance.ClassifierFree(den.bind(y), null, 3.0, (1.0, 0.5))


def _exact_log_prob(x, t, labels):
  """log p(y | x_t) of the noised mixture (Bayes with equal class weights)."""
  alpha, sigma = VP.alpha(t)[:, None], VP.sigma(t)[:, None]
  logps = []
  for k in range(2):
    v = alpha**2 * STDS[k] ** 2 + sigma**2
    logps.append(-0.5 * jnp.sum((x - alpha * MEANS[k]) ** 2 / v, -1) - jnp.log(v[:, 0]))
  logps = jnp.stack(logps, -1)
  return jnp.take_along_axis(jax.nn.log_softmax(logps, -1), labels[:, None], 1)[:, 0]


def test_classifier_guidance_with_the_exact_classifier_is_the_conditional_model():
  """Bayes: score_u + grad log p(y | x_t) = score of class y. With the exact noisy
  classifier and s = 1, classifier guidance of the unconditional model is the
  conditional model: eps equal to 1e-4 (float32 gradients of a log-softmax: ~1e-6
  relative, times |eps| <= ~10 near t = 0), and the Heun flow's samples equal to
  1e-3; s = 2 differs (sharper classes) by more than 0.05."""
  n = 64
  den = MODELS["vp"]()
  y, null = _labels(n), jnp.full((n,), NULL, jnp.int32)
  g = guidance.ClassifierGuided(den.bind(null), _exact_log_prob, y, 1.0)
  x = jax.random.normal(KEY, (n, 2))
  t = jnp.linspace(0.02, 1.0, n)
  np.testing.assert_allclose(np.asarray(g.eps(x, t)), np.asarray(den.bind(y).eps(x, t)),
                             atol=1e-4)
  np.testing.assert_allclose(np.asarray(g.score(x, t)), np.asarray(den.bind(y).score(x, t)),
                             rtol=1e-4, atol=1e-3)
  guided = _sample(g, "probability_flow", n)
  cond = _sample(den.bind(y), "probability_flow", n)
  np.testing.assert_allclose(guided, cond, atol=1e-3)
  sharper = _sample(guidance.ClassifierGuided(den.bind(null), _exact_log_prob, y, 2.0),
                    "probability_flow", n)
  assert np.abs(sharper - cond).max() > 0.05
