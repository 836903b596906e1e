"""The layers written for speed compute what flax's layers compute.

`layers.GroupNorm` (one-pass statistics; its sums over positions by `layers.rows_sum` /
`layers.rows_spread`, custom JVPs) against the closed form of GroupNorm, its
vector-Jacobian product and its Jacobian-vector product in float64 NumPy, and against
flax's `nn.GroupNorm`, whose parameters it shares. Its tolerances (float32 against
float64, inputs of mean 0.5 and std 2 so that the one-pass variance E[x^2] - E[x]^2 is
exercised; n = 8 * 8 * 4 = 256 values per group, N = 2 * 8 * 8 = 128 per channel for
the parameter gradients):
- forward: each sum of n float32 terms errs by ~sqrt(n) * 2^-24 relative (~1e-6) of
  E[x^2] = 4.25; the variance then errs by ~5e-6 absolute, i.e. 1.3e-6 relative, and
  y = xhat * scale + bias by that times |xhat| / 2 <= 3e-6 for |xhat| <= 4. The bound
  is 3e-5 absolute, 10x that.
- derivatives: dx (and the JVP's dy) is a difference of three terms of order
  |g| * rstd ~ 0.5, each with a relative error ~1e-6, and dscale / dbias are sums of
  N = 128 products of order 1 (error ~sqrt(N) * 2^-24 * sqrt(N) ~ 1e-5 absolute).
  Bound: 1e-4 absolute on values of order 10. Dropping the mean(g * xhat) term of
  either changes it by > 1000x the bound (checked in the test).

`layers.Conv`, `layers.Dense` (their bias added by `layers.add_bias`) and
`layers.SplitDense` against flax's `nn.Conv` / `nn.Dense` (and slicing the
output of `nn.Dense(3 C)`): the same parameter trees and initial values (so
checkpoints carry over), the same outputs, the same gradients and the same
forward-mode derivatives (`core.likelihood` linearises the network).

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
FWD_TOL, DER_TOL = 3e-5, 1e-4  # GroupNorm's, absolute; derived in the module docstring.
B, H, W, C, G = 2, 8, 8, 16, 4


def _gn_data(seed=0):
  r = np.random.default_rng(seed)
  x = (0.5 + 2.0 * r.standard_normal((B, H, W, C))).astype(np.float32)
  scale = (1.0 + 0.3 * r.standard_normal(C)).astype(np.float32)
  bias = (0.2 * r.standard_normal(C)).astype(np.float32)
  g = r.standard_normal((B, H, W, C)).astype(np.float32)  # A cotangent / tangent of x.
  ds, db = (r.standard_normal(C).astype(np.float32) for _ in range(2))  # Tangents.
  return x, scale, bias, g, ds, db


def _gn_reference(x, scale, bias, g, ds, db, eps=1e-6):
  """GroupNorm, its VJP with cotangent g and its JVP with tangents (g, ds, db), in
  float64 (two-pass variance); and the size of the mean(g * xhat) term of dx."""
  x, g = x.astype(np.float64), g.astype(np.float64)
  grouped = lambda a: a.reshape(B, H, W, G, C // G)
  gmean = lambda a: a.mean(axis=(1, 2, 4), keepdims=True)
  xg = grouped(x)
  mean = gmean(xg)
  rstd = 1.0 / np.sqrt(gmean((xg - mean) ** 2) + eps)
  xh = (xg - mean) * rstd
  xhat = xh.reshape(x.shape)
  # d xhat = rstd * (v - mean(v) - xhat * mean(v * xhat)) per group, for v = dx; the
  # map is symmetric, so the VJP of xhat applies it to v = g * scale.
  proj = lambda v: rstd * (v - gmean(v) - xh * gmean(v * xh))
  dx = proj(grouped(g * scale)).reshape(x.shape)
  jvp = proj(grouped(g)).reshape(x.shape) * scale + xhat * ds + db
  dropped = np.abs(rstd * xh * gmean(grouped(g * scale) * xh)).max()
  return (xhat * scale + bias, dx, (g * xhat).sum((0, 1, 2)), g.sum((0, 1, 2)), jvp), dropped


def test_group_norm_and_its_derivatives_are_the_closed_form():
  x, scale, bias, g, ds, db = _gn_data()
  (y, dx, dscale, dbias, jvp), dropped = _gn_reference(x, scale, bias, g, ds, db)
  f = jax.jit(lambda a, s, b: layers.group_norm_apply(a, s, b, G))
  out, pull = jax.vjp(f, x, scale, bias)
  np.testing.assert_allclose(np.asarray(out), y, rtol=0, atol=FWD_TOL)
  for name, a, b in zip(("dx", "dscale", "dbias"), pull(jnp.asarray(g)), (dx, dscale, dbias)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=DER_TOL, err_msg=name)
  tangent = jax.jvp(f, (x, scale, bias), (g, ds, db))[1]
  np.testing.assert_allclose(np.asarray(tangent), jvp, rtol=0, atol=DER_TOL)
  assert dropped > 1000 * DER_TOL  # The bound sees a missing derivative term.


def test_rows_sum_and_rows_spread_and_their_derivatives():
  """``[B, N, C] <-> [B, C]``: the sum and the broadcast, each the other's transpose;
  the JVPs are the maps themselves (float64 references; sums of N = 5 terms)."""
  r = np.random.default_rng(7)
  x, t = (r.standard_normal((3, 5, 4)).astype(np.float32) for _ in range(2))
  v, u = (r.standard_normal((3, 4)).astype(np.float32) for _ in range(2))
  spread = lambda a: layers.rows_spread(a, 5)
  sums, spreads = x.astype(np.float64).sum(1), np.broadcast_to(v[:, None, :], x.shape)
  cases = {
      "rows_sum": (layers.rows_sum(x), sums),
      "rows_sum jvp": (jax.jvp(layers.rows_sum, (x,), (t,))[1], t.astype(np.float64).sum(1)),
      "rows_sum grad": (jax.grad(lambda a: jnp.sum(layers.rows_sum(a) * v))(x), spreads),
      "rows_spread": (spread(v), spreads),
      "rows_spread jvp": (jax.jvp(spread, (v,), (u,))[1], np.broadcast_to(u[:, None, :], x.shape)),
      "rows_spread grad": (jax.grad(lambda a: jnp.sum(spread(a) * x))(v), sums),
  }
  for name, (got, want) in cases.items():
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL, err_msg=name)


def test_group_norm_module_is_flax_group_norm_in_float32_and_bfloat16():
  """The same parameter tree and initial values as flax's `nn.GroupNorm` (checkpoints
  load either way), the same output, gradients and JVPs (tolerances as above); with
  bf16 activations the statistics stay float32 and the output is bf16: within
  5 * 2^-8 = 0.02 of the float32 result for |y| <= 5 (bound 0.04)."""
  x, scale, bias, g, ds, db = _gn_data(1)
  for i, (a, b) in enumerate(_against_flax(layers.GroupNorm(num_groups=G),
                                           nn.GroupNorm(num_groups=G, epsilon=1e-6), x)):
    np.testing.assert_allclose(a, b, rtol=0, atol=FWD_TOL if i < 3 else DER_TOL)
  params = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}}
  x16 = jnp.asarray(x, jnp.bfloat16)
  y16 = layers.GroupNorm(num_groups=G, dtype=jnp.bfloat16).apply(params, x16)
  assert y16.dtype == jnp.bfloat16
  ref = _gn_reference(np.asarray(x16.astype(jnp.float32)), scale, bias, g, ds, db)[0][0]
  np.testing.assert_allclose(np.asarray(y16.astype(jnp.float32)), ref, rtol=0, atol=0.04)
  with pytest.raises(ValueError, match="not divisible by 4 groups"):
    layers.GroupNorm(num_groups=4).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 6)))


def test_group_norm_takes_the_fast_module_from_its_channel_threshold():
  """`group_norm` builds `GroupNorm` from FAST_GROUP_NORM_MIN_CHANNELS on and flax's
  below, with min(32, C / 4) groups either way."""
  lo, hi = layers.FAST_GROUP_NORM_MIN_CHANNELS // 2, layers.FAST_GROUP_NORM_MIN_CHANNELS
  small, big = layers.group_norm(lo, jnp.float32), layers.group_norm(hi, jnp.float32)
  assert type(small) is nn.GroupNorm and type(big) is layers.GroupNorm
  assert (small.num_groups, big.num_groups) == (min(32, lo // 4), min(32, hi // 4))
  assert big.dtype == jnp.float32 and layers.group_norm(hi, jnp.bfloat16).dtype == jnp.bfloat16


def _close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL)


def _perturbed(params):
  """Parameters off their initial values (zero biases would test nothing)."""
  leaves, tree = jax.tree.flatten(params)
  r = np.random.default_rng(5)
  return jax.tree.unflatten(tree, [a + 0.3 * r.standard_normal(a.shape).astype(np.float32)
                                   for a in leaves])


def test_add_bias_gradient_and_jvp_are_the_sum_and_the_broadcast():
  """The bias gradient of ``y + bias`` is the cotangent summed over all but the last axis
  (float64 reference), and its JVP adds the bias tangent to every position."""
  r = np.random.default_rng(0)
  for shape in ((3, 5, 7, 4), (7, 4)):
    y, g = (r.standard_normal(shape).astype(np.float32) for _ in range(2))
    bias, db = (r.standard_normal(shape[-1]).astype(np.float32) for _ in range(2))
    grad = jax.grad(lambda b: jnp.sum(layers.add_bias(jnp.asarray(y), b) * g))(bias)
    np.testing.assert_allclose(np.asarray(grad), g.astype(np.float64).reshape(-1, shape[-1])
                               .sum(0), rtol=RTOL, atol=ATOL)
    _, tangent = jax.jvp(layers.add_bias, (y, bias), (g, db))
    np.testing.assert_allclose(np.asarray(tangent), g + db, rtol=RTOL, atol=ATOL)


def _against_flax(ours, theirs, x):
  """``(ours, flax's)`` pairs for: the initial parameters, then with parameters moved off
  them, the outputs, the gradients (params and input) and the forward-mode JVPs."""
  p = ours.init(jax.random.PRNGKey(1), x)
  q = theirs.init(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(p) == jax.tree.structure(q)
  pairs = [(p, q)]  # Same initial values.
  p = _perturbed(p)
  ct = jnp.asarray(np.random.default_rng(2).standard_normal(ours.apply(p, x).shape),
                   jnp.float32)
  grad = lambda m: jax.grad(lambda p, x: jnp.sum(m.apply(p, x) * ct), argnums=(0, 1))(p, x)
  # Forward mode too (core.likelihood linearises the network).
  tangents = _perturbed(jax.tree.map(jnp.zeros_like, p)), jnp.ones_like(x)
  jvp = lambda m: jax.jvp(lambda p, x: m.apply(p, x), (p, x), tangents)[1]
  for f in (lambda m: m.apply(p, x), grad, jvp):
    pairs.append((f(ours), f(theirs)))
  return [(np.asarray(a), np.asarray(b)) for mine, flax_ in pairs
          for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(flax_))]


def test_conv_is_flax_conv():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 8, 8, 4)), jnp.float32)
  init = layers.default_init()
  for stride, pad in ((1, (1, 1)), (2, (0, 1))):
    pairs = _against_flax(
        layers.Conv(6, (3, 3), (stride, stride), (pad, pad), kernel_init=init),
        nn.Conv(6, (3, 3), (stride, stride), padding=(pad, pad), kernel_init=init,
                bias_init=nn.initializers.zeros), x)
    assert len(pairs) == 2 + 1 + 3 + 1  # params (kernel, bias), output, grads (2 + x), jvp
    for a, b in pairs:
      np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def test_dense_is_flax_dense_on_feature_maps_and_vectors():
  init = layers.default_init()
  for shape in ((2, 8, 8, 4), (3, 4)):
    x = jnp.asarray(np.random.default_rng(4).standard_normal(shape), jnp.float32)
    pairs = _against_flax(layers.Dense(5, kernel_init=init),
                          nn.Dense(5, kernel_init=init, bias_init=nn.initializers.zeros), x)
    assert len(pairs) == 7  # as in test_conv_is_flax_conv
    for a, b in pairs:
      np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


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
