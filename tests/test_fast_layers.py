"""The layers written for speed compute what flax's layers compute.

`layers.GroupNorm` (one-pass statistics, a hand-written backward pass) against the
closed form of GroupNorm and its gradient in float64 NumPy, and against flax's
`nn.GroupNorm`, whose parameters it shares. Its tolerances (float32 against float64,
inputs of mean 0.5 and std 2 so that the one-pass variance E[x^2] - E[x]^2 is
exercised; n = 8 * 8 * 4 = 256 values per group, N = 2 * 8 * 8 = 128 per channel
for the parameter gradients):
- forward: each sum of n float32 terms errs by ~sqrt(n) * 2^-24 relative
  (~1e-6) of E[x^2] = 4.25; the variance then errs by ~5e-6 absolute, i.e. 1.3e-6
  relative, and y = xhat * scale + bias by that times |xhat| / 2 <= 3e-6 for
  |xhat| <= 4. The bound is 3e-5 absolute, 10x that.
- backward: dx is a difference of three terms of order |g| * rstd ~ 0.5, each
  with a relative error ~1e-6, and dscale / dbias are sums of N = 128 products
  of order 1 (error ~sqrt(N) * 2^-24 * sqrt(N) ~ 1e-5 absolute). Bound: 1e-4
  absolute on values of order 10. Dropping the backward's mean(gs * xhat) term
  changes dx by > 1000x the bound (checked).

`layers.Conv`, `layers.Dense` (their bias gradient by `layers.channel_sum`) and
`layers.SplitDense` against flax's `nn.Conv` / `nn.Dense` (and slicing the
output of `nn.Dense(3 C)`): the same parameter trees and initial values (so
checkpoints carry over), the same outputs and the same gradients.

Tolerance: both sides are float32 and compute the same products; only the order
of the sums differs (the bias gradient sums N = 2 * 8 * 8 = 128 values per
channel in two stages instead of one). A sum of N float32 terms of size ~|g| errs
by ~sqrt(N) * 2^-24 relative to sqrt(N) |g|, i.e. ~1e-6 relative of the sum; the
bound is rtol 1e-5 (10x) with atol 1e-5 for entries near 0. A bias gradient
that missed one row of the batch would be off by ~1/N = 8e-3 relative, 800x more.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.models import layers

RTOL, ATOL = 1e-5, 1e-5  # Derived in the module docstring.
FWD_TOL, BWD_TOL = 3e-5, 1e-4  # GroupNorm's, absolute; derived in the module docstring.
B, H, W, C, G = 2, 8, 8, 16, 4


def _gn_data(seed=0):
  r = np.random.default_rng(seed)
  x = (0.5 + 2.0 * r.standard_normal((B, H, W, C))).astype(np.float32)
  scale = (1.0 + 0.3 * r.standard_normal(C)).astype(np.float32)
  bias = (0.2 * r.standard_normal(C)).astype(np.float32)
  g = r.standard_normal((B, H, W, C)).astype(np.float32)  # The output cotangent.
  return x, scale, bias, g


def _gn_reference(x, scale, bias, g, eps=1e-6):
  """GroupNorm and its vector-Jacobian product in float64 (two-pass variance)."""
  x, g = x.astype(np.float64), g.astype(np.float64)
  xg = x.reshape(B, H, W, G, C // G)
  mean = xg.mean(axis=(1, 2, 4), keepdims=True)
  rstd = 1.0 / np.sqrt(((xg - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True) + eps)
  xh = (xg - mean) * rstd
  xhat = xh.reshape(x.shape)
  gs = (g * scale).reshape(xg.shape)
  # d/dx of a normalisation: rstd * (gs - mean(gs) - xhat * mean(gs * xhat)), per group.
  term = xh * (gs * xh).mean(axis=(1, 2, 4), keepdims=True)
  dx = rstd * (gs - gs.mean(axis=(1, 2, 4), keepdims=True) - term)
  return (xhat * scale + bias, dx.reshape(x.shape), (g * xhat).sum((0, 1, 2)),
          g.sum((0, 1, 2)), np.abs(rstd * term).max())


def test_group_norm_and_its_gradient_are_the_closed_form():
  x, scale, bias, g = _gn_data()
  y, pull = jax.vjp(lambda a, s, b: layers.group_norm_apply(a, s, b, G), x, scale, bias)
  *want, dropped = _gn_reference(x, scale, bias, g)
  np.testing.assert_allclose(np.asarray(y), want[0], rtol=0, atol=FWD_TOL)
  for name, a, b in zip(("dx", "dscale", "dbias"), pull(jnp.asarray(g)), want[1:]):
    np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=BWD_TOL, err_msg=name)
  assert dropped > 1000 * BWD_TOL  # The bound sees a missing backward term.


def test_group_norm_module_is_flax_group_norm_in_float32_and_bfloat16():
  """The same parameter tree as flax's `nn.GroupNorm` (checkpoints load either way),
  the same output; with bf16 activations the statistics stay float32, the output is
  bf16: within 5 * 2^-8 = 0.02 of the float32 result for |y| <= 5 (bound 0.04)."""
  x, scale, bias, g = _gn_data(1)
  ours, theirs = layers.group_norm(C, jnp.float32), nn.GroupNorm(num_groups=G, epsilon=1e-6)
  p = ours.init(jax.random.PRNGKey(0), x)
  jax.tree.map(np.testing.assert_array_equal, p, theirs.init(jax.random.PRNGKey(0), x))
  params = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}}
  y = jax.jit(ours.apply)(params, x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(theirs.apply(params, x)), rtol=0,
                             atol=FWD_TOL)
  x16 = jnp.asarray(x, jnp.bfloat16)
  y16 = layers.group_norm(C, jnp.bfloat16).apply(params, x16)
  assert y16.dtype == jnp.bfloat16
  ref = _gn_reference(np.asarray(x16.astype(jnp.float32)), scale, bias, g)[0]
  np.testing.assert_allclose(np.asarray(y16.astype(jnp.float32)), ref, rtol=0, atol=0.04)
  with pytest.raises(ValueError, match="not divisible by 4 groups"):
    layers.GroupNorm(num_groups=4).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 6)))


def _close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL)


def _perturbed(params):
  """Parameters off their initial values (zero biases would test nothing)."""
  leaves, tree = jax.tree.flatten(params)
  r = np.random.default_rng(5)
  return jax.tree.unflatten(tree, [a + 0.3 * r.standard_normal(a.shape).astype(np.float32)
                                   for a in leaves])


def test_channel_sum_is_the_sum_over_all_but_the_last_axis():
  g = np.random.default_rng(0).standard_normal((3, 5, 7, 4)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(layers.channel_sum(jnp.asarray(g))),
                             g.astype(np.float64).sum((0, 1, 2)), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(layers.channel_sum(jnp.asarray(g[0, 0]))),
                             g[0, 0].astype(np.float64).sum(0), rtol=RTOL, atol=ATOL)


def _same_as_flax(ours, theirs, x):
  p = ours.init(jax.random.PRNGKey(1), x)
  q = theirs.init(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(p) == jax.tree.structure(q)
  jax.tree.map(np.testing.assert_array_equal, p, q)  # Same initial values.
  p = _perturbed(p)
  _close(ours.apply(p, x), theirs.apply(p, x))
  ct = jnp.asarray(np.random.default_rng(2).standard_normal(ours.apply(p, x).shape),
                   jnp.float32)
  grad = lambda m: jax.grad(lambda p, x: jnp.sum(m.apply(p, x) * ct), argnums=(0, 1))(p, x)
  _close(grad(ours), grad(theirs))


def test_conv_is_flax_conv():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 8, 8, 4)), jnp.float32)
  init = layers.default_init()
  for stride, pad in ((1, (1, 1)), (2, (0, 1))):
    _same_as_flax(
        layers.Conv(6, (3, 3), (stride, stride), (pad, pad), kernel_init=init),
        nn.Conv(6, (3, 3), (stride, stride), padding=(pad, pad), kernel_init=init,
                bias_init=nn.initializers.zeros), x)


def test_dense_is_flax_dense_on_feature_maps_and_vectors():
  init = layers.default_init()
  for shape in ((2, 8, 8, 4), (3, 4)):
    x = jnp.asarray(np.random.default_rng(4).standard_normal(shape), jnp.float32)
    _same_as_flax(layers.Dense(5, kernel_init=init),
                  nn.Dense(5, kernel_init=init, bias_init=nn.initializers.zeros), x)


def test_split_dense_is_the_sliced_dense():
  """Same parameters as `dense(3 C)`; its parts are that Dense's output sliced in three."""
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, 8)), jnp.float32)
  split, whole = layers.SplitDense(8, 3), layers.dense(24, jnp.float32)
  p = split.init(jax.random.PRNGKey(1), x)
  jax.tree.map(np.testing.assert_array_equal, p, whole.init(jax.random.PRNGKey(1), x))
  p = _perturbed(p)
  sliced = lambda p: tuple(whole.apply(p, x)[..., 8 * i:8 * (i + 1)] for i in range(3))
  _close(split.apply(p, x), sliced(p))
  w = (0.5, -1.0, 2.0)  # Weights on the parts: each part's gradient must reach its slice.
  loss = lambda f: lambda p: sum(wi * jnp.sum(a ** 2) for wi, a in zip(w, f(p)))
  _close(jax.grad(loss(lambda p: split.apply(p, x)))(p), jax.grad(loss(sliced))(p))
