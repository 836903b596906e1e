"""Conditioning (issue 15): label dropout at the stated rate, the config checks of
guidance, labels and prompts, the cross-attention's padding mask, classifier guidance,
the sample command's grids, and a learning check: a class-conditional model trained
here on the 8x8 digits makes what it is asked for, far above chance. (The text model's
tests are tests/test_text_conditioning.py.)"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from configs import digits_ddpm_cond
from diffusion import experiment
from diffusion.core import checks
from diffusion.dist import compile as compile_lib
from diffusion.dist import placement
from diffusion.eval import classifier as classify
from diffusion.models import layers
from diffusion.train import step as train_step


def test_label_dropout_trains_the_null_label_at_p_uncond():
  """Of n = 200,000 labels, a fraction p = 0.1 becomes the null label 10: within 3
  binomial SE, 3 sqrt(p (1 - p) / n) = 0.0020; the others keep their label."""
  exp = experiment.build(digits_ddpm_cond.get_config())
  n = 200_000
  y = jnp.arange(n, dtype=jnp.int32) % 10
  out = np.asarray(exp.batch_inputs({"label": y}, jax.random.PRNGKey(0)))
  dropped = out == 10
  assert abs(dropped.mean() - 0.1) < 3 * np.sqrt(0.1 * 0.9 / n), dropped.mean()
  np.testing.assert_array_equal(out[~dropped], np.asarray(y)[~dropped])
  # Without an rng (sampling, bits/dim) nothing is dropped.
  np.testing.assert_array_equal(np.asarray(exp.batch_inputs({"label": y})), np.asarray(y))


@pytest.mark.parametrize("overrides, match", [
    (dict(guidance=3.0), "needs a conditional model"),
    (dict(labels="3,7"), "unconditional"),
    (dict(guidance=-1.0), "must be >= 0"),
])
def test_guidance_on_an_unconditional_model_fails_naming_the_key(overrides, match):
  from configs import digits_ddpm  # pylint: disable=g-import-not-at-top
  config = digits_ddpm.get_config()
  for k, v in overrides.items():
    config.sample[k] = v
  with pytest.raises(checks.ConfigError, match=match):
    experiment.validate_config(config)


@pytest.mark.parametrize("key, value, match", [
    ("sample.labels", "3,x", "'x' is not an integer label"),
    ("sample.labels", "3,12", "label 12 is not in 0..9"),
    ("sample.guidance_interval", "5,1", "lo < hi"),
    ("sample.guidance_interval", "1", "two numbers"),
    ("cond.p_uncond", 1.0, r"must lie in \[0, 1\)"),
    ("sample.prompt", "a thick 3", "not text-conditional"),
    ("sample.classifier_scale", 2.0, "needs config.sample.classifier_path"),
])
def test_bad_conditioning_values_fail_in_one_line(key, value, match):
  config = digits_ddpm_cond.get_config()
  section, leaf = key.split(".")
  config[section][leaf] = value
  with pytest.raises(checks.ConfigError, match=match):
    experiment.validate_config(config)


def test_guidance_needs_the_null_condition_trained():
  config = digits_ddpm_cond.get_config()
  config.cond.p_uncond = 0.0
  with pytest.raises(checks.ConfigError, match="p_uncond > 0"):
    experiment.validate_config(config)
  config.sample.guidance = 1.0
  experiment.validate_config(config)  # The plain conditional model needs no null label.


def test_cross_attention_ignores_padded_tokens_and_an_empty_mask_attends_to_nothing():
  """Masked tokens do not change the output, unmasked ones do; a row with no unmasked
  token gets exactly the block without cross-attention (its cross output is 0)."""
  block = layers.TransformerBlock(num_heads=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 8))
  ctx = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 6))
  mask = jnp.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
  params = block.init(jax.random.PRNGKey(2), x, ctx, mask)["params"]
  # The zero-initialised output projection would hide everything: give it weights.
  params = jax.tree_util.tree_map_with_path(
      lambda p, a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(3), a.shape)
      if "proj_out" in jax.tree_util.keystr(p) else a, params)
  f = lambda c, m: np.asarray(block.apply({"params": params}, x, c, m))
  base = f(ctx, mask)
  padded_changed = ctx.at[:, 2:].add(5.0)
  np.testing.assert_array_equal(f(padded_changed, mask)[0], base[0])
  assert np.abs(f(ctx.at[0, 0].add(5.0), mask)[0] - base[0]).max() > 1e-2
  # Row 1 (no token): any context gives the same output.
  np.testing.assert_array_equal(f(ctx + 3.0, mask)[1], base[1])


# ---------------------------------------------------------------------------
# Learning checks on the 8x8 digits.
# ---------------------------------------------------------------------------

STEPS = 400


def _train(config, exp, batches, steps=STEPS):
  """`steps` compiled steps of the config's train step on `batches()`; EMA params."""
  tc = config.train
  step = compile_lib.compile_step(train_step.make_train_step(exp.loss_fn, exp.tx, config),
                                  tc.parallel, placement.make_mesh(jax.devices()[:1]))
  state = step.replicate(exp.init_state())
  for i in range(steps):
    state, _ = step(state, step.shard_batch(batches(i)))
  return step.unreplicate(state).ema_params


BATCH = 64


def _small(config, steps=STEPS):
  """The digits configs at test size (ch 16: a 4x cheaper step than the configs' 32),
  trained for `steps` (the lr decays over them)."""
  config.model.ch = 16
  config.data.batch_size = BATCH
  config.optim.warmup_steps, config.optim.decay_steps = 50, steps
  config.ema.decay = 0.99
  config.sample.update(method="ddim", num_steps=20, guidance=3.0)
  return config


@pytest.fixture(scope="module")
def digits():
  d = load_digits()
  return (d.images.astype(np.float32) / 16.0 * 2.0 - 1.0)[..., None], d.target.astype(np.int32)


@pytest.fixture(scope="module")
def digit_classifier(digits):
  """A digits classifier trained here (300 steps; held-out accuracy checked > 0.9)."""
  x, y = digits
  model, params = classify.train(x[:1500], y[:1500], steps=300, batch_size=128, lr=3e-3)
  assert classify.accuracy(model, params, x[1500:], y[1500:]) > 0.9
  return lambda images: classify.predict(model, params, images)[1].argmax(-1)


@pytest.fixture(scope="module")
def class_model(digits):
  """A class-conditional digits model: 400 steps with label dropout 0.1."""
  x, y = digits
  config = _small(digits_ddpm_cond.get_config())
  exp = experiment.build(config)
  rng = np.random.default_rng(0)
  order = [rng.permutation(len(y)) for _ in range(STEPS * BATCH // len(y) + 1)]
  flat = np.concatenate(order)
  params = _train(config, exp, lambda i: {"image": x[flat[i * BATCH:(i + 1) * BATCH]],
                                          "label": y[flat[i * BATCH:(i + 1) * BATCH]]})
  return exp, params


def test_class_conditional_digits_make_the_asked_digit(class_model, digit_classifier):
  """400 steps on the digits with label dropout, then DDIM-20 at w = 3 for 200 samples
  (labels 0..9 cycled): the classifier reads the asked label for > 60% of them (measured
  0.995; chance is 0.1, and 3 SE of a 0.6 rate at n = 200 is 0.10)."""
  exp, params = class_model
  samples = np.asarray(exp.sample_fn(num_samples=200, cond_inputs=jnp.arange(200) % 10)(
      params, jax.random.PRNGKey(0)))
  rate = float(np.mean(digit_classifier(samples) == np.arange(200) % 10))
  print(f"class-conditional digits: {rate:.3f} of samples read as the asked label")
  assert rate > 0.6, rate


def test_noisy_classifier_and_classifier_guidance(digits, digit_classifier, class_model, tmp_path):
  """The noise-aware classifier (`classify.train(process=...)`) reads clean digits (> 0.9)
  and pure noise at chance (t = T - 1, alpha_bar = 4e-5 on the linear schedule: 1/10
  within 3 SE at n = 297, i.e. < 0.1 + 0.052); saved and loaded it guides: the
  conditional model's unconditional half (the null label) with classifier guidance
  s = 4 makes the asked digit far above chance (> 0.1 + 3 SE = 0.164 at n = 200;
  measured 0.940)."""
  x, y = digits
  exp, params = class_model
  sched = exp.process
  model, cparams = classify.train(x[:1500], y[:1500], steps=400, batch_size=128, lr=3e-3,
                                  process=sched)
  acc = classify.noisy_accuracy(model, cparams, sched, x[1500:], y[1500:])
  assert acc["t=0"] > 0.9, acc
  t = jnp.full((len(y) - 1500,), sched.num_steps - 1)
  noise = jax.random.normal(jax.random.PRNGKey(5), x[1500:].shape)
  x_t = sched.alpha(t)[:, None, None, None] * x[1500:] + sched.sigma(t)[:, None, None, None] * noise
  logits = model.apply({"params": cparams}, *classify.noisy_inputs(sched, x_t, t))
  assert np.mean(np.asarray(logits).argmax(-1) == y[1500:]) < 0.1 + 3 * np.sqrt(0.09 / 297)
  classify.save(str(tmp_path / "noisy"), model, cparams, {"note": "test"})
  section = exp.config.sample.copy_and_resolve_references()
  section.update(guidance=0.0, classifier_path=str(tmp_path / "noisy"), classifier_scale=4.0)
  asked = jnp.arange(200, dtype=jnp.int32) % 10
  samples = np.asarray(exp.sample_fn(section, num_samples=200, cond_inputs=asked)(
      params, jax.random.PRNGKey(1)))
  rate = float(np.mean(digit_classifier(samples) == np.asarray(asked)))
  print(f"classifier guidance s=4 on the unconditional half: {rate:.3f}")
  assert rate > 0.1 + 3 * np.sqrt(0.09 / 200), rate


def test_sample_cli_rows_per_label_and_the_guidance_sweep(tmp_path):
  """`--mode sample --config.sample.labels=3,7 --config.sample.guidance=3` writes N/2
  samples of each label (saved with them) as a grid of two rows; the guidance sweep's
  w = 1 and w = 3 blocks are, image for image, what --mode sample writes at those weights
  (the same key and labels), and the blocks differ from each other."""
  from diffusion import main as main_lib  # pylint: disable=g-import-not-at-top
  from diffusion.modes import sample as sample_mode  # pylint: disable=g-import-not-at-top
  from diffusion.modes import train as train_mode  # pylint: disable=g-import-not-at-top
  del main_lib
  config = digits_ddpm_cond.get_config()
  config.model.ch = 16
  config.train.update(num_steps=2, log_every=2, ckpt_every=2, sample_every=0)
  # The class embedding starts at zero: a large first step moves it off, so that the
  # conditional and unconditional halves differ after 2 steps.
  config.optim.update(warmup_steps=0, lr=3e-2)
  config.ema.update(warmup=False, decay=0.0)
  config.sample.update(num_steps=5, num_samples=8, grid_size=8, labels="3,7", guidance=3.0)
  wd = str(tmp_path / "wd")
  train_mode.train_and_evaluate(config, wd)
  png = sample_mode.sample(config, wd)
  with np.load(png[:-len(".png")] + ".npz") as f:
    labels, guided = f["labels"], f["images"]
  np.testing.assert_array_equal(labels, [3] * 4 + [7] * 4)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h = np.asarray(Image.open(png)).shape[0]
  tile = 8 * 4  # 8x8 images upscaled to >= 32 pixels (viz.images.tile_scale).
  assert h == 2 * (tile + 2) + 2  # Two rows: one per label.
  config.sample.guidance = 1.0
  plain = np.load(sample_mode.sample(config, wd)[:-len(".png")] + ".npz")["images"]
  config.sample.guidance_sweep = "1,3"
  sweep = np.load(sample_mode.guidance_sweep(config, wd)[:-len(".png")] + ".npz")
  np.testing.assert_allclose(sweep["images"][0], plain, atol=1e-6)
  np.testing.assert_allclose(sweep["images"][1], guided, atol=1e-6)
  assert np.abs(guided - plain).max() > 1e-3
  # --mode edit invert on this class model: DDIM inversion under the npz's labels (3),
  # regeneration under config.edit.labels. Under the source label it is the
  # reconstruction bit for bit; under label 7 the same inverted noise gives other images
  # (the network's label input is used), with the reconstruction unchanged.
  from diffusion.modes import edit as edit_mode  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)).astype(np.uint8)
  np.savez(tmp_path / "x.npz", images=x, label=np.full(4, 3))
  config.sample.guidance, config.sample.guidance_sweep = 1.0, ""
  config.edit.update(task="invert", input=str(tmp_path / "x.npz"), invert_steps=4, labels="3")
  load = lambda out: np.load(os.path.join(out, "results.npz"))
  same = load(edit_mode.edit_mode(config, wd))
  np.testing.assert_array_equal(same["results"], same["reconstruction"])
  config.edit.labels = "7"
  other = load(edit_mode.edit_mode(config, wd))
  np.testing.assert_array_equal(other["reconstruction"], same["reconstruction"])
  assert np.abs(other["results"] - same["results"]).max() > 1e-3


def test_classify_noisy_command_writes_a_classifier_that_guidance_loads(tmp_path):
  """`python -m diffusion.classify --config configs/digits_ddpm_cond.py --out DIR --noisy`
  writes a noise-aware classifier of the config's process, its accuracy at t = 0 and at
  the middle of the process recorded (t = 0 above the middle: less noise, more accuracy),
  which `config.sample.classifier_path` loads; a clean-image classifier is refused."""
  from diffusion.models import classifier as models_classifier  # pylint: disable=g-import-not-at-top
  out = tmp_path / "noisy"
  info = classify.main(["--config", "configs/digits_ddpm_cond.py", "--out", str(out), "--noisy",
                        "--steps", "150", "--test_split", ""])
  acc = info["noisy_accuracy"]
  assert acc["t=0"] > 0.8 and acc["t=0"] > acc["t=mid"], acc
  exp = experiment.build(digits_ddpm_cond.get_config())
  log_prob, k = models_classifier.noisy_log_prob(str(out), exp.process)
  x = jnp.zeros((3, 8, 8, 1))
  lp = np.asarray(log_prob(x, jnp.array([0, 500, 999]), jnp.array([1, 2, 3])))
  assert k == 10 and lp.shape == (3,) and np.all(lp < 0)
  clean = tmp_path / "clean"
  classify.main(["--config", "configs/digits_ddpm_cond.py", "--out", str(clean), "--steps", "5",
                 "--test_split", ""])
  with pytest.raises(checks.ConfigError, match="--noisy"):
    models_classifier.noisy_log_prob(str(clean), exp.process)
