"""The layers written for speed compute what flax's layers compute.

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
