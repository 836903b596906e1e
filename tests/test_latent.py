"""Latent diffusion (diffusion/latent.py, models/autoencoder.py, data/latents.py).

The autoencoder's shapes and KL against closed forms; its loss's two halves
(autoencoder and discriminator) against their separate gradients; a small model
learning the digits (PSNR against the mean-image baseline); the scale factor and
the latent cache against fresh encodings; resume reading the cache; a latent model
on a fixed linear autoencoder equal to the pixel model; the bad-input checks; the
text-to-image pipeline end to end (`--mode sample` with prompts, PNG and decoded GIF).
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import digits_autoencoder, digits_latent_text, smoke
from diffusion import experiment, latent
from diffusion.core import checks, schedules
from diffusion.core import samplers
from diffusion.data import iterator as data
from diffusion.data import latents as latents_lib
from diffusion.models import autoencoder as ae_lib
from diffusion.modes import sample as sample_mode
from diffusion.modes import train
from diffusion.train import step as train_step
from tests import closed_form

AE_STEPS = 200


# ------------------------------------------------------------------ the model


@pytest.mark.parametrize("mult,f", [((1, 2), 2), ((1, 2, 2), 4), ((1, 1, 2, 2), 8)])
def test_encode_decode_shapes_for_each_factor(mult, f):
  vae = ae_lib.AutoencoderKL(ch=8, channel_mult=mult, latent_channels=3, out_channels=1,
                             attention=True)
  x = jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32)
  params = jax.eval_shape(lambda x: vae.init(jax.random.PRNGKey(0), x), x)
  mean, logvar = jax.eval_shape(lambda p, x: vae.apply(p, x, method="encode"), params, x)
  assert mean.shape == logvar.shape == (2, 16 // f, 16 // f, 3)
  out = jax.eval_shape(lambda p, z: vae.apply(p, z, method="decode"), params, mean)
  assert out.shape == (2, 16, 16, 1)
  assert vae.factor == f == ae_lib.downsampling_factor(mult)


def test_kl_equals_its_closed_form():
  """Against torch.distributions' KL of Normals and, for three 1-D cases, against the
  integral of q log(q / p) by quadrature (scipy)."""
  import scipy.integrate
  import torch
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
  logvar = rng.normal(scale=0.7, size=(3, 2, 2, 4)).astype(np.float32)
  ours = np.asarray(ae_lib.kl_to_standard_normal(jnp.asarray(mean), jnp.asarray(logvar)))
  q = torch.distributions.Normal(torch.tensor(mean), torch.tensor(np.exp(0.5 * logvar)))
  p = torch.distributions.Normal(torch.zeros(1), torch.ones(1))
  ref = torch.distributions.kl_divergence(q, p).reshape(3, -1).sum(-1).numpy()
  np.testing.assert_allclose(ours, ref, rtol=1e-5)  # float32 sums of 16 terms ~ 1.
  for m, lv in ((0.0, 0.0), (1.5, -1.0), (-0.3, 0.8)):
    s = math.exp(0.5 * lv)
    qd = lambda x: math.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
    integrand = lambda x: qd(x) * (-0.5 * ((x - m) / s) ** 2 - math.log(s) + 0.5 * x * x)
    exact, _ = scipy.integrate.quad(integrand, m - 12 * s, m + 12 * s)
    got = float(ae_lib.kl_to_standard_normal(jnp.full((1, 1), m), jnp.full((1, 1), lv))[0])
    assert abs(got - exact) < 1e-5, (m, lv, got, exact)


def _adversarial_exp(disc_start):
  config = digits_autoencoder.get_config()
  config.model.ch, config.autoencoder.disc_ch = 8, 8
  config.autoencoder.disc_weight, config.autoencoder.disc_start = 0.5, disc_start
  config.autoencoder.kl_weight = 0.01
  return experiment.build(config)


def test_discriminator_terms_train_their_own_net():
  """One gradient of the combined loss = the autoencoder's loss (rec + kl + w g_adv) for
  the autoencoder's params and the hinge loss for the discriminator's; before
  ``disc_start`` the discriminator gets no gradient at all."""
  exp = _adversarial_exp(disc_start=10)
  params = exp.init_state().params  # Jitted (eager Flax init of the two nets: ~18 s).
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
  batch, rng = {"image": x}, jax.random.PRNGKey(2)
  a = exp.config.autoencoder

  def parts(p_ae, p_disc):
    x_hat, mean, logvar = exp.model.apply({"params": p_ae}, x, rng)
    rec = jnp.mean(jnp.abs(x - x_hat))
    kl = jnp.mean(ae_lib.kl_to_standard_normal(mean, logvar)) / x[0].size
    d = lambda img: exp.discriminator.apply({"params": p_disc}, img)
    g = -jnp.mean(d(x_hat))
    hinge = 0.5 * (jnp.mean(jax.nn.relu(1 - d(x))) + jnp.mean(jax.nn.relu(1 + d(x_hat))))
    return rec + a.kl_weight * kl + a.disc_weight * g, hinge

  @jax.jit  # One program: eager op-by-op grads of these Flax nets take ~10 s each on a CPU.
  def all_grads(params):
    loss_grad = jax.grad(lambda p, s: exp.loss_fn(p, batch, rng, step=s)[0])
    return (jax.grad(lambda p: parts(p, params["disc"])[0])(params["ae"]),
            jax.grad(lambda p: parts(params["ae"], p)[1])(params["disc"]),
            loss_grad(params, jnp.int32(10)), loss_grad(params, jnp.int32(9)))

  want_ae, want_disc, grads, early = all_grads(params)
  for got, want in ((grads["ae"], want_ae), (grads["disc"], want_disc)):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-7)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(early["disc"]))
  assert train_step.make_train_step  # The step passes `step` to such a loss (train/step.py).


# --------------------------------------------------- a trained digits autoencoder


@pytest.fixture(scope="module")
def ae_workdir(tmp_path_factory):
  """`digits_autoencoder.py` trained for AE_STEPS steps (one checkpoint, at the end)."""
  workdir = str(tmp_path_factory.mktemp("digits_ae"))
  config = digits_autoencoder.get_config()
  config.train.num_steps = config.train.ckpt_every = config.train.sample_every = AE_STEPS
  config.train.log_every = AE_STEPS
  train.train_and_evaluate(config, workdir)
  return workdir


def _info(workdir):
  with open(os.path.join(workdir, "autoencoder", f"step_{AE_STEPS:06d}.json")) as f:
    return json.load(f)


def _digits(n=None):
  it = data.create(digits_autoencoder.get_config().data, seed=0)
  return latent.images_of(it, n or len(it.images))


def test_autoencoder_learns_the_digits(ae_workdir):
  """Reconstruction PSNR on 512 training digits after 200 steps: above 20 dB and 8 dB
  above the mean-image baseline (every digit reconstructed as the mean digit, ~12 dB).
  The run is deterministic; 26 dB is reached at 300 steps. The per-image PSNR's SE
  (in the json) is ~0.1 dB, so the margins are many SE."""
  info = _info(ae_workdir)
  x = _digits(512)
  mse0 = np.mean(np.square(x - x.mean(0)).reshape(len(x), -1), axis=-1)
  baseline = float(np.mean(10 * np.log10(4 / mse0)))
  assert info["recon_psnr"] > 20.0 and info["recon_psnr"] > baseline + 8.0, (info, baseline)
  assert info["recon_psnr_se"] < 0.3
  assert info["latent_shape"] == [4, 4, 2] and info["factor"] == 2
  grid = np.asarray(Image.open(os.path.join(ae_workdir, "samples", f"step_{AE_STEPS:06d}.png")))
  assert grid.shape[0] == 8 * (32 + 2) + 2  # 4 pairs of rows (images over reconstructions).


def _latent_config(ae_workdir):
  config = digits_latent_text.get_config()
  config.latent.autoencoder_workdir = ae_workdir
  return config


def test_scale_factor_is_one_over_the_std_of_fresh_latents(ae_workdir):
  info = _info(ae_workdir)
  codec = latent.load_codec(_latent_config(ae_workdir))
  means = np.asarray(jax.jit(codec.encode_fn)(jnp.asarray(_digits(info["scale_num"]))))
  assert codec.scale == info["scale_factor"]
  np.testing.assert_allclose(1.0 / np.std(means), info["scale_factor"], rtol=1e-5)
  z = np.asarray(jax.jit(codec.encode)(jnp.asarray(_digits(info["scale_num"]))))
  assert abs(np.std(z) - 1.0) < 1e-5  # Scaled latents have unit std on those images.


@pytest.fixture(scope="module")
def latent_run(ae_workdir, tmp_path_factory):
  """`digits_latent_text.py` on the fixture's autoencoder: 4 train steps, then 2 more
  (a resume) with the encoder forbidden."""
  workdir = str(tmp_path_factory.mktemp("digits_latent"))
  config = _latent_config(ae_workdir)
  config.train.num_steps = config.train.ckpt_every = config.train.log_every = 4
  config.train.sample_every = 0
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_cache_equals_a_fresh_encoding(latent_run):
  config, workdir = latent_run
  codec = latent.load_codec(config)
  with np.load(os.path.join(workdir, "latents", "part_000_of_001.npz")) as z:
    cached, labels = z["latents"], z["labels"]
  it = data.create(config.data, seed=0)
  x = it.images.astype(np.float32) / 16 * 2 - 1  # The stored order; digits have 17 levels.
  fresh = np.asarray(jax.jit(codec.encode)(jnp.asarray(x)))
  assert cached.shape == (1797, 4, 4, 2)
  np.testing.assert_allclose(cached, fresh, atol=1e-5)  # Batches of 256 vs one of 1797.
  np.testing.assert_array_equal(labels, data.create(config.data, seed=0).labels)
  with open(os.path.join(workdir, "latents", "meta.json")) as f:
    assert json.load(f)["autoencoder"]["step"] == AE_STEPS


def test_resume_reads_the_cache(latent_run, monkeypatch):
  config, workdir = latent_run
  config = config.copy_and_resolve_references()
  config.train.num_steps = 6

  def refuse(*a, **k):
    raise AssertionError("the resumed run encoded the dataset again")
  monkeypatch.setattr(latents_lib, "encode_rows", refuse)
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 6


def test_parts_of_several_processes_assemble_the_dataset(ae_workdir):
  """Process p of P encodes rows p::P; put together they are the one-process latents."""
  codec = latent.load_codec(_latent_config(ae_workdir))
  it = data.create(digits_autoencoder.get_config().data, seed=0)
  whole, _ = latents_lib.encode_rows(codec.encode, it, latents_lib.rows_of(1797, 0, 1))
  parts = [latents_lib.encode_rows(codec.encode, it, latents_lib.rows_of(1797, p, 3))
           for p in range(3)]
  full, labels = latents_lib.assemble([pt[0] for pt in parts], [pt[1] for pt in parts], 1797)
  np.testing.assert_allclose(full, whole, atol=1e-6)
  np.testing.assert_array_equal(labels, it.labels)


def test_rows_are_the_stored_pixels_in_minus_one_one():
  """`DataIterator.rows` (what the cache encodes): row i's uint8 pixels p as
  p / 255 * 2 - 1 exactly, and its label, with dequantization on for the batches."""
  pixels = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 1)).astype(np.uint8)
  labels = np.arange(10, dtype=np.int32) % 3
  it = data.DataIterator(pixels, labels, 256, batch_size=2, seed=0, dequantize=True)
  x, y = it.rows(np.array([7, 2]))
  assert x.dtype == np.float32
  np.testing.assert_array_equal(x, pixels[[7, 2]].astype(np.float32) / 255 * 2 - 1)
  np.testing.assert_array_equal(y, labels[[7, 2]])


def test_sigma_space_frames_are_shown_at_unit_scale():
  """Frames x0 + sigma z of sigmas (80, 1, 0) become (x0 + sigma z) / sqrt(1 + sigma^2)
  (exact: sqrt(6401), sqrt(2), 1), for NumPy and JAX arrays alike."""
  frames = np.stack([np.full((2, 3), 80.0), np.full((2, 3), 2.0), np.full((2, 3), 0.5)])
  sig = np.array([80.0, 1.0, 0.0])
  want = frames / np.sqrt(1 + sig**2)[:, None, None]
  np.testing.assert_allclose(experiment.unit_scale_frames(frames, sig), want, rtol=1e-12)
  np.testing.assert_allclose(experiment.unit_scale_frames(jnp.asarray(frames, jnp.float32),
                                                          jnp.asarray(sig, jnp.float32)),
                             want, rtol=1e-6)


# ------------------------------------------------------- the latent path itself


def test_identity_autoencoder_gives_the_pixel_model():
  """A latent model whose autoencoder is the identity (scale 1) has the pixel model's
  params, batches, loss, updates and samples, bit for bit: the latent path adds nothing
  but the maps."""
  pixel_cfg = smoke.get_config()
  latent_cfg = smoke.get_config()
  latent_cfg.latent.autoencoder_workdir = "identity"  # Named only; the codec is given.
  pixel_cfg.data.dequantize = latent_cfg.data.dequantize = False  # Latents: stored pixels.
  codec = latent.linear_codec((8, 8, 1))
  pix = experiment.build(pixel_cfg)
  lat = experiment.build(latent_cfg, codec=codec)
  assert lat.data_shape == pix.data_shape == (8, 8, 1)
  s_pix, s_lat = pix.init_state(), lat.init_state()
  for a, b in zip(jax.tree.leaves(s_pix), jax.tree.leaves(s_lat)):
    np.testing.assert_array_equal(a, b)
  it_pix = data.create(pixel_cfg.data, seed=pixel_cfg.seed)
  it_lat, _ = latents_lib.cached_iterator(codec, data.create(latent_cfg.data, seed=0),
                                          "/nonexistent", latent_cfg.data, echo=lambda m: None)
  step_pix = jax.jit(train_step.make_train_step(pix.loss_fn, pix.tx, pixel_cfg, axis_name=None))
  step_lat = jax.jit(train_step.make_train_step(lat.loss_fn, lat.tx, latent_cfg, axis_name=None))
  for _ in range(2):
    b_pix, b_lat = next(it_pix), next(it_lat)
    np.testing.assert_array_equal(b_pix["image"], b_lat["image"])
    s_pix, m_pix = step_pix(s_pix, b_pix)
    s_lat, m_lat = step_lat(s_lat, b_lat)
    assert float(m_pix["loss"]) == float(m_lat["loss"])
  for a, b in zip(jax.tree.leaves(s_pix.params), jax.tree.leaves(s_lat.params)):
    np.testing.assert_array_equal(a, b)
  x_pix = pix.sample_fn(num_samples=4)(s_pix.ema_params, pix.sample_key)
  x_lat = lat.sample_fn(num_samples=4)(s_lat.ema_params, lat.sample_key)
  np.testing.assert_array_equal(x_pix, x_lat)


@pytest.mark.parametrize("method", ["ddim", "probability_flow"])
def test_samplers_commute_with_an_orthogonal_autoencoder(method):
  """Gaussian-mixture data on 4x4x1 pixels and its image under a random orthogonal map
  after space-to-depth (f = 2: 2x2x4 latents), each with its own exact eps / score
  (from its own closed form, not by conjugation): a deterministic sampler (DDIM-25 on
  the cosine schedule; the VP probability-flow ODE, 25 Heun steps) run on the latents
  from E(x_T), decoded, equals the pixel sampler from x_T to float precision."""
  from diffusion.core import sdes
  lin = ae_lib.LinearAutoencoder(channels=1, factor=2, seed=3)
  rng = np.random.default_rng(0)
  means = rng.normal(size=(2, 16))
  pix = closed_form.Mixture(np.asarray([0.3, 0.7]), means, np.asarray([0.2, 0.4]))
  q_means = np.asarray(lin.encode(jnp.asarray(means.reshape(2, 4, 4, 1), jnp.float32)))
  lat = closed_form.Mixture(pix.weights, q_means.reshape(2, 16).astype(np.float64), pix.stds)
  sched, sde = schedules.get("cosine", num_steps=1000), sdes.get("vp")

  def image_fn(mix, shape):
    flat = mix.eps_fn(sched) if method == "ddim" else mix.score_fn(sde)
    return lambda x, t: flat(x.reshape(x.shape[0], -1), t).reshape((-1,) + shape)

  def run(fn, shape, x_init):
    if method == "ddim":
      return samplers.ddim(fn, sched, jax.random.PRNGKey(2), shape, num_steps=25,
                           x_init=x_init)
    return samplers.probability_flow(fn, sde, jax.random.PRNGKey(2), shape, num_steps=25,
                                     method="heun", x_init=x_init)

  x_t = jax.random.normal(jax.random.PRNGKey(1), (64, 4, 4, 1))
  x0 = run(image_fn(pix, (4, 4, 1)), (64, 4, 4, 1), x_t)
  z0 = run(image_fn(lat, (2, 2, 4)), (64, 2, 2, 4), lin.encode(x_t))
  assert float(jnp.abs(lin.decode(lin.encode(x_t)) - x_t).max()) < 1e-5
  # float32 through 25 steps of values ~1: the same arithmetic up to the rounding of
  # the 16x16 products, ~1e-6 per step; a wrong map (or scale) is off by O(0.1).
  np.testing.assert_allclose(np.asarray(lin.decode(z0)), np.asarray(x0), atol=5e-5)
  assert float(jnp.abs(x0 - x_t).max()) > 0.1  # The samplers moved the points.


# ------------------------------------------------------------------ bad input


def test_bad_autoencoder_workdirs_fail_naming_the_key(ae_workdir, tmp_path):
  key = "config.latent.autoencoder_workdir"

  def error(config):
    with pytest.raises(checks.ConfigError) as e:
      experiment.build(config)
    return str(e.value)

  config = _latent_config(str(tmp_path / "missing"))
  assert key in error(config) and "does not exist" in error(config)
  (tmp_path / "empty").mkdir()
  assert "no config.json" in error(_latent_config(str(tmp_path / "empty")))
  untrained = tmp_path / "untrained"
  untrained.mkdir()
  (untrained / "config.json").write_text(json.dumps({"model": {"name": "autoencoder"}}))
  assert "no trained autoencoder" in error(_latent_config(str(untrained)))
  pixel = tmp_path / "pixel"
  pixel.mkdir()
  (pixel / "config.json").write_text(json.dumps({"model": {"name": "unet"}}))
  assert "not of an autoencoder" in error(_latent_config(str(pixel)))
  other = _latent_config(ae_workdir)
  other.data.channels = 3
  msg = error(other)
  assert key in msg and "8x8x1" in msg and "8x8x3" in msg
  flipped = _latent_config(ae_workdir)
  flipped.data.random_flip = True
  assert "config.data.random_flip" in error(flipped)
  late = _latent_config(ae_workdir)
  late.latent.checkpoint_step = 7
  assert "config.latent.checkpoint_step=7" in error(late)


def test_autoencoder_config_errors():
  config = digits_autoencoder.get_config()
  config.data.image_size = 7
  with pytest.raises(checks.ConfigError, match="not divisible by the autoencoder's"):
    experiment.build(config)
  config = digits_autoencoder.get_config()
  config.autoencoder.loss = "l3"
  with pytest.raises(ValueError, match="config.autoencoder.loss"):  # One line from main.
    experiment.build(config)
  config = digits_autoencoder.get_config()
  with pytest.raises(checks.ConfigError, match="is an autoencoder, which has no sampler"):
    sample_mode.sample(config, "/nonexistent")


# ------------------------------------------------------- the seeds' pipeline


def test_text_to_image_pipeline_end_to_end(latent_run):
  """``--mode sample --config.sample.prompt=...`` on the text-conditioned latent model:
  tokenizer -> text encoder -> latent UNet with cross-attention -> DDIM-50 with guidance
  -> decoder: a PNG grid with a row per prompt, the npz of decoded 8x8x1 images with
  their prompts, and the GIF decoded frame by frame (its last frame is the grid)."""
  config, workdir = latent_run
  config = config.copy_and_resolve_references()
  s = config.sample
  s.prompt, s.guidance, s.num_samples, s.grid_size = "a thick 3|a thin 7", 3.0, 8, 8
  s.num_steps, s.gif_frames = 50, 5
  png = sample_mode.sample(config, workdir)
  stem = png[:-len(".png")]
  with np.load(stem + ".npz") as z:
    images, prompts = z["images"], z["prompts"]
  assert images.shape == (8, 8, 8, 1) and list(prompts) == ["a thick 3"] * 4 + ["a thin 7"] * 4
  # Decoded, not latents: the decoder maps into the image range (clipped to [-1, 1]).
  assert images.min() >= -1.0 and images.max() <= 1.0
  gif = Image.open(stem + ".gif")
  assert gif.n_frames == 5
  gif.seek(gif.n_frames - 1)
  last = np.asarray(gif.convert("L"))
  grid = np.asarray(Image.open(png).convert("L"))
  assert last.shape == grid.shape  # Frames are image grids of the decoded trajectory.
  np.testing.assert_allclose(last.astype(int), grid.astype(int), atol=1)


def test_latent_inpainting_keeps_the_known_pixels(latent_run, tmp_path):
  """`--mode edit` inpainting on the latent text model: the mask goes to latent cells
  (`modes.edit._latent_mask`), the latents are completed, decoded, and the known pixels
  pasted back, so they equal the input bit for bit while the rest is decoded."""
  from diffusion.modes import edit as edit_mode
  config, workdir = latent_run
  c = config.copy_and_resolve_references()
  size, ch = c.data.image_size, c.data.channels
  images = np.random.default_rng(0).integers(0, 256, (4, size, size, ch)).astype(np.uint8)
  np.savez(tmp_path / "x.npz", images=images)
  c.edit.task, c.edit.input, c.edit.mask = "inpaint", str(tmp_path / "x.npz"), "half"
  c.sample.method, c.sample.num_steps = "ddim", 4
  out = edit_mode.edit_mode(c, workdir)
  r = np.load(os.path.join(out, "results.npz"))
  x, m, y = r["images"], r["masks"], r["results"]
  assert y.shape == (4, size, size, ch) and m[:, :size // 2].min() == 1 and m[:, size // 2:].max() == 0
  np.testing.assert_array_equal(y[m == 1], x[m == 1])
  assert np.mean(np.abs(y[m == 0] - x[m == 0])) > 0.1  # Decoded, not the input.
