"""The layers written for speed compute what flax's layers compute.

`layers.Conv`, `layers.Dense` (their bias gradient by `layers.channel_sum`) and
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

from diffusion.models import layers

RTOL, ATOL = 1e-5, 1e-5  # Derived in the module docstring.


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
  # Forward mode too (core.likelihood linearises the network): the same JVP.
  tangents = _perturbed(jax.tree.map(jnp.zeros_like, p)), jnp.ones_like(x)
  jvp = lambda m: jax.jvp(lambda p, x: m.apply(p, x), (p, x), tangents)[1]
  _close(jvp(ours), jvp(theirs))


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
