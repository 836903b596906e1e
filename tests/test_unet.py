"""Tests of the UNet, its layers and embeddings (tiny models, CPU).

Compiling is most of the cost on CPU, so tests share compiled functions: the
same tiny configs and input shapes recur, and `jitted` is cached per model.
"""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.models import MODELS, get_model
from diffusion.models import embeddings
from diffusion.models.unet import UNet, param_count

# Tiny config: 2 levels, 1 res block, attention at the lowest level.
TINY = dict(ch=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
            dropout=0.0)


def key(seed):
  # "rbg" keys: on jaxlib 0.10 CPU, compiling threefry (partitionable) random
  # draws of 4-D shapes takes seconds each; rbg compiles much faster.
  return jax.random.key(seed, impl="rbg")


@functools.lru_cache(maxsize=None)
def jitted(model):
  """model.apply compiled once per test (eager apply dispatches op by op)."""
  return jax.jit(model.apply, static_argnames="train")


def param_shapes(model, shape, y=None):
  """The params tree as ShapeDtypeStructs, without running any initializer."""
  x, t = jnp.zeros(shape, jnp.float32), jnp.zeros((shape[0],), jnp.int32)
  return jax.eval_shape(lambda: model.init(key(0), x, t, y, train=False))["params"]


def random_params(model, shape, y=None, seed=1):
  """Random params of the right structure, from numpy (compiling `model.init`
  costs seconds on CPU). Unlike the real init nothing is zero, so every input
  (x, t, y) reaches the output. Kernels ~ N(0, 1/fan_in), norm scales ~ 1."""
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = path[-1].key
    noise = rng.standard_normal(s.shape).astype(np.float32)
    if name == "scale":
      return jnp.asarray(1.0 + 0.1 * noise)
    if len(s.shape) == 1:
      return jnp.asarray(0.1 * noise)
    return jnp.asarray(noise / np.sqrt(np.prod(s.shape[:-1])))

  return jax.tree.map_with_path(draw, param_shapes(model, shape, y))


def images(shape, seed=2):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


# ------------------------------------------------------------------ size
def test_cifar10_ddpm_param_count():
  model = UNet(ch=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
               attention_resolutions=(16,), dropout=0.1, embedding="sinusoidal",
               resamp_with_conv=True, scale_shift_norm=False, image_size=32,
               in_channels=3)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         jnp.zeros((1,), jnp.int32), train=False))
  n = param_count(shapes["params"])
  # Exact count: 35,746,307 (Ho et al. 2020 report 35.7M for CIFAR-10).
  assert 35_340_000 <= n <= 36_060_000
  assert n == 35_746_307
  assert set(shapes) == {"params"}


# ------------------------------------------------------------------ shapes
def test_zero_output_at_init_float32_params_and_output():
  model = UNet(**TINY)
  shape = (2, 8, 8, 1)
  x, t = jnp.zeros(shape), jnp.zeros((2,), jnp.int32)
  params = jax.jit(model.init, static_argnames="train")(key(0), x, t, train=False)["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert not np.any(np.asarray(params["conv_out"]["kernel"]))
  apply = jitted(model)
  x, t = images(shape), jnp.array([3, 700])
  out = apply({"params": params}, x, t, train=False)
  assert out.shape == shape and out.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(out))) == 0.0  # conv_out is zero-initialised
  kernel = params["conv_out"]["kernel"]
  bumped = flax.core.copy(params, {"conv_out": {
      "kernel": kernel + 0.1 * jnp.asarray(np.random.default_rng(3).standard_normal(
          kernel.shape), jnp.float32),
      "bias": params["conv_out"]["bias"]}})
  out = apply({"params": bumped}, x, t, train=False)
  assert bool(jnp.all(jnp.isfinite(out)))
  assert float(jnp.min(jnp.max(jnp.abs(out), axis=-1))) > 0.0  # every pixel


@pytest.mark.parametrize("shape,kwargs", [
    ((2, 8, 8, 1), dict(TINY)),
    ((2, 28, 28, 1), dict(TINY, channel_mult=(1, 2, 2), attention_resolutions=(14,))),
    # 28 is not divisible by 8: padded to 32 (resolutions 32, 16, 8, 4), cropped back.
    ((2, 28, 28, 1), dict(TINY, channel_mult=(1, 2, 2, 2), attention_resolutions=(16,))),
    ((2, 32, 32, 3), dict(channel_mult=(1, 2, 2, 2), image_size=32, in_channels=3)),
    ((1, 64, 64, 3), dict(TINY, channel_mult=(1, 1, 2, 2, 4), attention_resolutions=(8,),
                          resblock_updown=True)),
    ((2, 32, 32, 3), dict(TINY, dtype=jnp.bfloat16, out_channels=6,
                          attention_resolutions=(16,))),
])
def test_output_shape_and_dtype(shape, kwargs):
  """Shapes via jax.eval_shape (traces the whole network, compiles nothing)."""
  model = UNet(**kwargs)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  t = jax.ShapeDtypeStruct(shape[:1], jnp.int32)
  variables = jax.eval_shape(lambda x, t: model.init(key(0), x, t, train=False), x, t)
  out = jax.eval_shape(lambda v, x, t: model.apply(v, x, t, train=False), variables, x, t)
  assert out.shape == shape[:3] + (kwargs.get("out_channels") or shape[-1],)
  assert out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


def test_all_options_give_finite_nonzero_output():
  """ADM / DDPM++ switches together, in bfloat16: numbers, not just shapes."""
  model = UNet(**dict(TINY, resblock_updown=True, scale_shift_norm=True, skip_rescale=True,
                      num_heads=2, resamp_with_conv=False, out_channels=6,
                      dtype=jnp.bfloat16))
  shape = (2, 8, 8, 3)
  out = jitted(model)({"params": random_params(model, shape)}, images(shape),
                      jnp.array([0, 999]), train=False)
  assert out.shape == (2, 8, 8, 6) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  assert float(jnp.min(jnp.max(jnp.abs(out), axis=-1))) > 1e-3  # every pixel


def test_odd_size_is_padded_and_cropped():
  """7x7 through 2 levels = the 8x8 net on the zero-padded image, cropped."""
  assert UNet(channel_mult=(1, 2, 2)).resolutions(28) == (28, 14, 7)
  assert UNet(channel_mult=(1, 2, 2, 2)).resolutions(28) == (32, 16, 8, 4)
  model = UNet(**TINY)
  assert model.resolutions(7) == (8, 4)
  params = random_params(model, (2, 8, 8, 1))
  x, t = images((2, 7, 7, 1)), jnp.array([7, 8])
  apply = jitted(model)
  out = apply({"params": params}, x, t, train=False)
  assert out.shape == (2, 7, 7, 1) and out.dtype == jnp.float32
  # Pad 1 pixel split as (0, 1): the odd pixel goes to the bottom/right.
  big = apply({"params": params}, jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))), t,
              train=False)
  np.testing.assert_allclose(out, big[:, :7, :7], atol=1e-5)
  assert float(jnp.max(jnp.abs(out))) > 1e-2


# ------------------------------------------------------------------ embeddings
def test_sinusoidal_embedding_closed_form():
  t = jnp.array([0, 1, 5, 999])
  emb = np.asarray(embeddings.sinusoidal_embedding(t, 16))
  assert emb.shape == (4, 16) and emb.dtype == np.float32
  tn = np.array([0, 1, 5, 999], np.float64)
  freqs = 10000.0 ** (-np.arange(8) / 7)
  expected = np.concatenate([np.sin(tn[:, None] * freqs), np.cos(tn[:, None] * freqs)], 1)
  np.testing.assert_allclose(emb, expected, atol=2e-4)  # float32 args up to ~1000
  np.testing.assert_allclose(emb[:, 0], np.sin(tn), atol=2e-4)    # entry 0 = sin(t)
  np.testing.assert_allclose(emb[:, 8], np.cos(tn), atol=2e-4)    # entry half = cos(t)
  np.testing.assert_allclose(emb[:, 7], np.sin(tn / 1e4), atol=1e-6)
  # Odd width: trailing zero column; scale multiplies t.
  assert np.all(np.asarray(embeddings.sinusoidal_embedding(t, 17))[:, 16] == 0)
  np.testing.assert_allclose(
      embeddings.sinusoidal_embedding(jnp.array([0.25, 0.5]), 16, scale=1000.0),
      embeddings.sinusoidal_embedding(jnp.array([250.0, 500.0]), 16), atol=1e-5)


def test_sinusoidal_embeddings_are_distinct():
  emb = np.asarray(embeddings.sinusoidal_embedding(jnp.arange(1000), 128), np.float64)
  d2 = (emb ** 2).sum(1)[:, None] + (emb ** 2).sum(1)[None] - 2 * emb @ emb.T
  np.fill_diagonal(d2, np.inf)
  assert d2.min() > 0.01
  cont = embeddings.sinusoidal_embedding(jnp.array([0.5, 0.501]), 128, scale=1000.0)
  assert float(jnp.linalg.norm(cont[0] - cont[1])) > 0.1


def test_timestep_changes_output_of_tiny_additive_model():
  """With 1 channel per GroupNorm group, additive conditioning would be erased."""
  model = UNet(**TINY)  # channels 8 and 16: groups of 4 channels
  params = random_params(model, (2, 8, 8, 1))
  x = jnp.tile(images((1, 8, 8, 1)), (2, 1, 1, 1))
  out = jitted(model)({"params": params}, x, jnp.array([10, 900]), train=False)
  assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-2


def test_fourier_features_are_fixed_and_not_parameters():
  x = jnp.array([-1.0, 0.0, 2.0])
  emb = embeddings.gaussian_fourier_embedding(x, 8, scale=16.0)
  w = np.asarray(embeddings.fourier_frequencies(8, scale=16.0))
  arg = 2 * np.pi * np.asarray(x)[:, None] * w[None]
  np.testing.assert_allclose(emb, np.concatenate([np.sin(arg), np.cos(arg)], 1), atol=1e-4)
  np.testing.assert_array_equal(w, embeddings.fourier_frequencies(8, scale=16.0))

  kw = dict(TINY, attention_resolutions=())
  fourier, sinus = UNet(embedding="fourier", **kw), UNet(**kw)
  shapes = jax.eval_shape(lambda: fourier.init(key(0), jnp.zeros((1, 8, 8, 1)),
                                               jnp.ones((1,)), train=False))
  # Only the 'params' collection, and exactly as many as the sinusoidal model:
  # the frequencies are not stored anywhere.
  assert set(shapes) == {"params"}
  assert param_count(shapes) == param_count(param_shapes(sinus, (1, 8, 8, 1)))
  params = random_params(fourier, (2, 8, 8, 1))
  x8 = jnp.tile(images((1, 8, 8, 1)), (2, 1, 1, 1))
  out = jitted(fourier)({"params": params}, x8, jnp.array([0.01, 50.0]), train=False)
  assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-2  # sigma is seen


# ------------------------------------------------------------------ classes
def test_class_conditioning_and_null_label():
  model = UNet(num_classes=10, **TINY)
  assert model.null_label == 10
  shape = (2, 8, 8, 1)
  params = random_params(model, shape, y=jnp.zeros((2,), jnp.int32))
  assert params["class_emb"]["embedding"].shape == (11, 32)  # 10 classes + null, 4*ch
  x, t = images(shape), jnp.array([3, 3])
  apply = jitted(model)

  def run(labels, fn=apply):
    return fn({"params": params}, x, t, None if labels is None else jnp.array(labels),
              train=False)

  out0, out1, null = run([0, 0]), run([1, 1]), run([10, 10])
  assert float(jnp.max(jnp.abs(out0 - out1))) > 1e-2
  assert float(jnp.max(jnp.abs(out0 - null))) > 1e-2
  np.testing.assert_array_equal(null, run(None))  # y=None means the null label
  bad = run([11, 0])  # cannot be checked under jit: NaN, not a wrong class
  assert bool(jnp.all(jnp.isnan(bad[0])))
  # Eager apply (concrete labels) rejects out-of-range labels.
  for labels in ([11, 0], [-1, 0]):
    with pytest.raises(ValueError, match="num_classes=10"):
      model.apply({"params": params}, x, t, jnp.array(labels), train=False)
  unconditional = UNet(**TINY)
  with pytest.raises(ValueError, match="num_classes"):
    jax.eval_shape(lambda: unconditional.init(key(0), x, t, jnp.array([0, 1]), train=False))


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("kwargs,field", [
    (dict(attention_resolutions=(10,), image_size=32), "attention_resolutions"),
    (dict(ch=32, num_heads=3), "num_heads"),
    (dict(channel_mult=()), "channel_mult"),
    (dict(channel_mult=(1, 0)), "channel_mult"),
    (dict(ch=144), "ch=144"),
    (dict(ch=0), "ch"),
    (dict(num_res_blocks=0), "num_res_blocks"),
    (dict(embedding="gaussian"), "embedding"),
    (dict(dropout=1.0), "dropout"),
    (dict(num_classes=0), "num_classes"),
    (dict(out_channels=0), "out_channels"),
    (dict(dtype=jnp.int32), "dtype"),
    (dict(image_size=-8), "image_size"),
])
def test_invalid_config_fails_at_construction(kwargs, field):
  with pytest.raises(ValueError, match=field):
    UNet(**kwargs)


def test_validation_messages_explain():
  with pytest.raises(ValueError, match=r"resolutions are \(32, 16, 8, 4\)"):
    UNet(attention_resolutions=(10,), image_size=32)
  with pytest.raises(ValueError, match=r"144 channels.*min\(32, channels // 4\)=32"):
    UNet(ch=144)
  # Without image_size, the same check runs at call time, before any compute.
  model = UNet(**dict(TINY, attention_resolutions=(3,)))
  with pytest.raises(ValueError, match=r"attention_resolutions.*\(8, 4\)"):
    jax.eval_shape(lambda: model.init(key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)),
                                      train=False))
  with pytest.raises(ValueError, match="in_channels=3"):
    jax.eval_shape(lambda: UNet(in_channels=3, **TINY).init(
        key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), train=False))
  with pytest.raises(ValueError, match=r"valid names: \['autoencoder', 'unet'\]"):
    get_model("resnet")
  assert MODELS["unet"] is UNet
  assert get_model("unet", channel_mult=[1, 2]).channel_mult == (1, 2)


# ------------------------------------------------------------------ dropout
def test_dropout_train_flag():
  model = UNet(**dict(TINY, dropout=0.5))
  shape = (2, 8, 8, 1)
  params = random_params(model, shape)
  x, t = images(shape), jnp.array([1, 2])
  apply = jitted(model)
  a = apply({"params": params}, x, t, train=False)
  np.testing.assert_array_equal(a, apply({"params": params}, x, t, train=False))
  no_dropout = jitted(UNet(**TINY))({"params": params}, x, t, train=False)
  np.testing.assert_allclose(a, no_dropout, atol=1e-6)  # eval mode = no dropout at all
  with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
    jax.eval_shape(lambda: model.apply({"params": params}, x, t, train=True))
  d1 = apply({"params": params}, x, t, train=True, rngs={"dropout": key(1)})
  d2 = apply({"params": params}, x, t, train=True, rngs={"dropout": key(2)})
  assert float(jnp.max(jnp.abs(d1 - d2))) > 1e-3
  assert float(jnp.max(jnp.abs(d1 - a))) > 1e-3


# ------------------------------------------------------------------ batch
def test_examples_are_independent_within_a_batch():
  """GroupNorm and attention act per example: example 0 ignores example 1."""
  model = UNet(**TINY)
  shape = (2, 8, 8, 1)
  params = random_params(model, shape)
  x, t = images(shape), jnp.array([5, 500])
  apply = jitted(model)
  out = apply({"params": params}, x, t, train=False)
  out2 = apply({"params": params}, x.at[1].set(images(shape[1:], seed=9)), t.at[1].set(0),
               train=False)
  np.testing.assert_allclose(out[0], out2[0], atol=1e-5)
  assert float(jnp.max(jnp.abs(out[1] - out2[1]))) > 1e-2
  # Each example gives the same output whatever it is batched with.
  for i in range(2):
    alone = apply({"params": params}, jnp.tile(x[i:i + 1], (2, 1, 1, 1)),
                  jnp.full((2,), t[i]), train=False)
    np.testing.assert_allclose(out[i], alone[0], atol=1e-5)
    np.testing.assert_allclose(out[i], alone[1], atol=1e-5)
