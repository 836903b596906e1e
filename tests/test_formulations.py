"""EDM and VDM models of the real UNet through the experiment record (issue 13): a train
step, the learned schedule's place in the state, and sampling from the state's params.

Tiny UNet (`configs/smoke.py`), 8x8 digits; each check states the number it pins.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoke
from diffusion import experiment
from diffusion.core import vdm
from diffusion.data import iterator as data
from diffusion.train import step as train_step

OVERRIDES = {
    "edm": dict(type="edm", prediction="F", weighting="edm", sigma_min=0.002, sigma_max=80.0),
    "vdm": dict(type="vdm", prediction="eps", weighting="elbo", num_bins=17, antithetic=True,
                gamma_width=16),
}


def _config(kind, method, **sample):
  config = smoke.get_config()
  for key, value in OVERRIDES[kind].items():
    config.diffusion[key] = value
  if kind == "vdm":
    config.model.time_scale = 1000.0 / 18.3
  config.sample.method = method
  for key, value in sample.items():
    config.sample[key] = value
  experiment.validate_config(config)
  return config


@pytest.fixture(scope="module", params=sorted(OVERRIDES))
def trained(request):
  """Three train steps of the tiny model (one compiled step per formulation)."""
  kind = request.param
  config = _config(kind, "dpmpp_2m", num_steps=3)
  exp = experiment.build(config)
  state0 = exp.init_state()
  step = jax.jit(train_step.make_train_step(exp.loss_fn, exp.tx, config, axis_name=None))
  it = data.create(config.data, seed=0)
  state, rows = state0, []
  for _ in range(3):
    batch = {k: v for k, v in next(it).items() if k in ("image", "label")}
    state, metrics = step(state, batch)
    rows.append(jax.device_get(metrics))
  return kind, config, exp, state0, state, rows


def test_a_train_step_learns_every_parameter(trained):
  """The network's output layer moves (it is zero-initialised, so the layers below it
  only start to get gradients once it has), as does every parameter of a learned VDM
  schedule (its endpoints by the ELBO gradient and its shape by the variance
  gradient), and the metrics are the
  formulation's: EDM's x0 MSE is below the data's second moment (~0.6 for digits in
  [-1, 1]; a denoiser that outputs 0 scores exactly that), VDM's prior term is the
  closed form (sigmoid(-5) (E x^2 - 1) - log sigmoid(5)) / (2 ln 2) <= 0.0049 bits/dim."""
  kind, _, _, state0, state, rows = trained
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state0.params, state.params)
  net = moved["net"] if kind == "vdm" else moved
  assert all(jax.tree.leaves(net["conv_out"])), net["conv_out"]
  if kind == "vdm":
    assert all(jax.tree.leaves(moved["gamma"])), moved["gamma"]
    assert set(state.params) == {"net", "gamma"}
    g = state.params["gamma"]
    assert float(g["gamma_min"]) != -13.3 and float(g["gamma_max"]) != 5.0
    assert 0.0 < rows[0]["bpd_prior"] <= 0.5 * (np.log1p(np.exp(-5.0))) / np.log(2) + 1e-6
  else:
    assert 0.0 < rows[-1]["x0_mse"] < 0.7


@pytest.mark.parametrize("method", ["dpmpp_2m", "ddim"])
def test_samples_come_from_the_states_own_process(trained, method):
  """The sampler runs the process of the params it is given: for VDM the learned schedule
  in ``params["gamma"]`` (another gamma_max changes the samples), for EDM its fixed
  process (the same params give the same samples twice, bit for bit). Samples are
  finite and of the data's shape."""
  kind, config, exp, _, state, _ = trained
  config = _config(kind, method, num_steps=3)
  exp = experiment.build(config)
  fn = exp.sample_fn(num_samples=4)
  key = jax.random.PRNGKey(1)
  x = np.asarray(fn(state.ema_params, key))
  assert x.shape == (4, 8, 8, 1) and np.all(np.isfinite(x))
  np.testing.assert_array_equal(np.asarray(fn(state.ema_params, key)), x)
  if kind == "vdm":
    other = jax.tree.map(lambda a: a, state.ema_params)
    other["gamma"] = dict(other["gamma"], gamma_max=other["gamma"]["gamma_max"] + 2.0)
    assert float(np.max(np.abs(np.asarray(fn(other, key)) - x))) > 1e-3
    sched = vdm.LearnedGamma(state.ema_params["gamma"])
    g = np.asarray(sched.gamma(jnp.linspace(0.0, 1.0, 101)))
    assert np.all(np.diff(g) > 0) and g[0] == float(state.ema_params["gamma"]["gamma_min"])
