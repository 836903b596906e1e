"""VDM's input Fourier features (Kingma et al. 2021, App. B) as a UNet option."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.models import embeddings
from diffusion.models import unet as unet_lib

EPS32 = float(np.finfo(np.float32).eps)
TINY = dict(ch=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), dropout=0.0)


def test_features_are_the_formula():
  """``[sin(2^n pi x) for n..., cos(2^n pi x) for n...]``, C channels per block, against
  float64 numpy. float32 rounds the argument ``(2^n pi) x`` twice (the constant and the
  product, each <= eps32 / 2 relative) on top of x itself (exact: the same float32
  values go to numpy): ``|d arg| <= 2^n pi |x| eps32``, plus ~eps32 of sin / cos."""
  exponents = (0, 3, 7, 8)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 5, 3, 3)).astype(np.float32)
  got = np.asarray(embeddings.input_fourier_features(jnp.asarray(x), exponents), np.float64)
  assert got.shape == (2, 5, 3, 2 * len(exponents) * 3)
  xd = x.astype(np.float64)
  want = np.concatenate([np.sin(2.0**n * np.pi * xd) for n in exponents]
                        + [np.cos(2.0**n * np.pi * xd) for n in exponents], -1)
  atol = 2.0 ** max(exponents) * math.pi * EPS32 + 2 * EPS32
  np.testing.assert_allclose(got, want, rtol=0, atol=atol)
  # Block layout: block k (k < K) is sin of exponent k over the C channels in order.
  np.testing.assert_allclose(got[..., 3 * 2: 3 * 3], np.sin(2.0**7 * np.pi * xd), atol=atol)
  np.testing.assert_allclose(got[..., 3 * 6: 3 * 7], np.cos(2.0**7 * np.pi * xd), atol=atol)


def _init_shapes(model, shape):
  x, t = jnp.zeros(shape), jnp.zeros((shape[0],))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, train=False))["params"]


def test_unet_param_count_and_output_shape():
  """Only conv_in's kernel grows: ``3 x 3 x (C + 2 K C) x ch`` instead of ``3 x 3 x C x ch``,
  i.e. ``9 * 2 K C * ch`` more parameters; the output keeps C channels. A 7x7 input is
  padded to 8 (channel_mult of two levels) after the features are concatenated."""
  c, k = 3, 2
  base = unet_lib.UNet(**TINY)
  fourier = unet_lib.UNet(**TINY, input_fourier=[7, 8])  # a list from a config: made a tuple
  assert fourier.input_fourier == (7, 8) and hash(fourier)
  p0, p1 = _init_shapes(base, (2, 7, 7, c)), _init_shapes(fourier, (2, 7, 7, c))
  assert p1["conv_in"]["kernel"].shape == (3, 3, c * (1 + 2 * k), TINY["ch"])
  assert (unet_lib.param_count(p1) - unet_lib.param_count(p0)) == 9 * 2 * k * c * TINY["ch"]
  rest = lambda p: {n: v for n, v in p.items() if n != "conv_in"}  # noqa: E731
  assert jax.tree.map(lambda a: a.shape, rest(p0)) == jax.tree.map(lambda a: a.shape, rest(p1))

  x = jax.random.uniform(jax.random.key(1), (2, 7, 7, c), minval=-1, maxval=1)
  shift = x.at[:, 3, 3].add(2 / 256)
  t = jnp.asarray([3, 500])

  @jax.jit
  def outputs():  # one program: both models, each on x and on x shifted by one bin at a pixel
    res = []
    for model in (fourier, base):
      # conv_out is zero-initialised: perturb every parameter so the output depends on x.
      params = jax.tree.map(lambda v: v + 0.01, model.init(jax.random.key(0), x, t, train=False))
      res.append([model.apply(params, v, t, train=False) for v in (x, shift)])
    return res

  (out, out_shift), (base_out, base_shift) = outputs()
  assert out.shape == (2, 7, 7, c) and out.dtype == jnp.float32 and np.isfinite(out).all()
  # The features reach the network: one bin's change at a pixel moves the output
  # much more than it moves the plain model's.
  moved = np.abs(np.asarray(out_shift - out)).max()
  moved_base = np.abs(np.asarray(base_shift - base_out)).max()
  assert moved > 10 * moved_base, (moved, moved_base)


def test_default_is_off_and_unchanged():
  model = unet_lib.UNet(**TINY)
  assert model.input_fourier == ()
  assert _init_shapes(model, (1, 4, 4, 1))["conv_in"]["kernel"].shape == (3, 3, 1, TINY["ch"])


@pytest.mark.parametrize("value", [(7, 7), (1.5,), (True,), (-1,), (17,), ("7",)])
def test_invalid_exponents_fail_at_construction(value):
  with pytest.raises(ValueError, match=r"UNet: input_fourier exponents must be"):
    unet_lib.UNet(**TINY, input_fourier=value)
