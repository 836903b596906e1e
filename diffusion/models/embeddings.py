"""Time and class embeddings for the UNet.

* `sinusoidal_embedding`: the DDPM / Transformer positional encoding of a
  (discrete or continuous) timestep.
* `gaussian_fourier_embedding`: score_sde's random Fourier features of a noise
  level, with fixed (non-trainable, parameter-free) frequencies.
* `ClassEmbedding`: a learned label table with one extra "null" row for
  classifier-free guidance.
* `input_fourier_features`: VDM's sine / cosine features of the input pixels at
  frequencies ``2^n pi`` (the UNet's `input_fourier`).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def sinusoidal_embedding(t: Array, dim: int, *, scale: float = 1.0,
                         max_period: float = 10000.0) -> Array:
  """Sinusoidal embedding of timesteps, float32 `[B, dim]`.

  Convention (DDPM, Ho et al. 2020): with `half = dim // 2` frequencies
  `f_i = max_period ** (-i / (half - 1))` for `i = 0 .. half - 1` (so
  `f_0 = 1` and `f_{half-1} = 1 / max_period`) and `s = scale * t`,

      emb[:, i]        = sin(s * f_i)
      emb[:, half + i] = cos(s * f_i)

  so `emb[:, 0] = sin(scale * t)` and `emb[:, half] = cos(scale * t)`. An odd
  `dim` gets one trailing zero column.

  Args:
    t: `[B]` timesteps, integer (discrete steps 0..T-1) or float (continuous).
      The encoding was designed for values in roughly [0, 1000]: for
      continuous time t in [0, 1], pass `scale=1000` (the UNet's `time_scale`)
      so that nearby times get distinguishable embeddings.
    dim: embedding width, >= 2 (>= 4 to get more than one frequency).
    scale: multiplier applied to `t` before encoding.
    max_period: the slowest wavelength is `2 * pi * max_period`.

  Returns:
    float32 `[B, dim]`.
  """
  if dim < 2:
    raise ValueError(f"sinusoidal_embedding: dim must be >= 2, got {dim}")
  t = jnp.asarray(t, jnp.float32)
  if t.ndim != 1:
    raise ValueError(f"sinusoidal_embedding: t must have shape [B], got {t.shape}")
  half = dim // 2
  exponent = np.arange(half, dtype=np.float32) / max(half - 1, 1)
  freqs = jnp.asarray(np.exp(-math.log(max_period) * exponent), jnp.float32)
  args = (scale * t)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def fourier_frequencies(dim: int, *, scale: float = 16.0, seed: int = 0) -> Array:
  """The fixed frequencies of `gaussian_fourier_embedding`, float32 `[dim // 2]`.

  Drawn as `scale * N(0, 1)` from `jax.random.key(seed, impl="threefry2x32")`:
  a pure function of `(dim, scale, seed)`, so the same model definition always
  sees the same frequencies (they are never stored in, or trained with, the
  parameters).
  """
  key = jax.random.key(seed, impl="threefry2x32")
  return scale * jax.random.normal(key, (dim // 2,), jnp.float32)


def gaussian_fourier_embedding(x: Array, dim: int, *, scale: float = 16.0,
                               seed: int = 0) -> Array:
  """Gaussian random Fourier features (score_sde NCSN++), float32 `[B, dim]`.

  With `w = fourier_frequencies(dim, scale=scale, seed=seed)`:

      emb = concat([sin(2 pi x w), cos(2 pi x w)], -1)

  For a VE SDE pass `x = log(sigma)`. The frequencies are constants, not
  parameters: nothing is added to any variable collection and no gradient
  flows to them.

  Args:
    x: `[B]` float input (e.g. log noise level).
    dim: embedding width, even and >= 2.
    scale: standard deviation of the random frequencies.
    seed: seed of the fixed frequencies.
  """
  if dim < 2 or dim % 2:
    raise ValueError(f"gaussian_fourier_embedding: dim must be even and >= 2, got {dim}")
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 1:
    raise ValueError(f"gaussian_fourier_embedding: x must have shape [B], got {x.shape}")
  w = fourier_frequencies(dim, scale=scale, seed=seed)
  args = 2.0 * jnp.pi * x[:, None] * w[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


MAX_FOURIER_EXPONENT = 16


def check_fourier_exponents(exponents) -> tuple[int, ...]:
  """Validates the exponents ``n`` of `input_fourier_features`; returns them as a tuple.

  Distinct ints in ``[0, MAX_FOURIER_EXPONENT]``: beyond ``2^16 pi`` the float32
  rounding of a pixel value in [-1, 1] (~6e-8) moves the phase by over 0.01 rad.
  """
  exponents = tuple(exponents)
  bad = [n for n in exponents if isinstance(n, bool) or not isinstance(n, (int, np.integer))
         or not 0 <= n <= MAX_FOURIER_EXPONENT]
  if bad:
    raise ValueError(f"input_fourier exponents must be ints in [0, {MAX_FOURIER_EXPONENT}] "
                     f"(features sin / cos of 2^n pi x), got {exponents}")
  if len(set(exponents)) != len(exponents):
    raise ValueError(f"input_fourier exponents must be distinct, got {exponents}")
  return tuple(int(n) for n in exponents)


def input_fourier_features(x: Array, exponents) -> Array:
  """Fourier features of the input values (Kingma et al. 2021, App. B), float32.

  For ``x`` ``[..., C]`` and exponents ``(n_1, .., n_K)``:

      concat([sin(2^n_1 pi x), .., sin(2^n_K pi x), cos(2^n_1 pi x), .., cos(2^n_K pi x)], -1)

  each block ``C`` channels in the order of ``x``'s, so ``[..., 2 K C]``. They
  let the network see the fine detail of ``z_t`` that the likelihood depends on
  (e.g. n = 7, 8: periods 2^-6 and 2^-7, two bins and one bin of 8-bit data
  in [-1, 1], whose bins are 2/256 = 2^-7 wide). The paper's code writes the frequency as ``2^n 2 pi``, i.e.
  its n is one less than here. Computed in float32 whatever the model dtype.
  """
  exponents = check_fourier_exponents(exponents)
  x = jnp.asarray(x, jnp.float32)
  args = [(2.0**n * np.pi) * x for n in exponents]
  return jnp.concatenate([jnp.sin(a) for a in args] + [jnp.cos(a) for a in args], axis=-1)


def check_labels(y: Array, num_classes: int) -> Array:
  """Checks int labels `[B]` against [0, num_classes] (num_classes = null label).

  Raises ValueError for a non-integer dtype, and for out-of-range values when
  `y` is concrete; traced values (under `jax.jit`) cannot be checked here.
  """
  y = jnp.asarray(y)
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f"labels y must be integers, got dtype {y.dtype}")
  if y.ndim != 1:
    raise ValueError(f"labels y must have shape [B], got {y.shape}")
  if not isinstance(y, jax.core.Tracer):
    values = np.asarray(y)
    bad = values[(values < 0) | (values > num_classes)]
    if bad.size:
      raise ValueError(
          f"labels must be in [0, num_classes={num_classes}] (num_classes is the null "
          f"label), got {bad.tolist()}")
  return y


class ClassEmbedding(nn.Module):
  """Learned class embedding with a reserved null label.

  The table has `num_classes + 1` rows: labels `0 .. num_classes - 1` are the
  classes and label `num_classes` (`null_label`) means "no class", which
  classifier-free guidance trains on by dropping labels to it.

  Out-of-range labels (< 0 or > num_classes) raise a ValueError when the labels
  are concrete (eager `apply`); under `jax.jit` they cannot be checked, so their
  embedding is NaN, which makes the whole output NaN rather than silently
  picking a wrong class.

  Attributes:
    num_classes: number of real classes (>= 1).
    features: embedding width.
  """
  num_classes: int
  features: int
  param_dtype: jnp.dtype = jnp.float32

  @property
  def null_label(self) -> int:
    return self.num_classes

  @nn.compact
  def __call__(self, y: Array) -> Array:
    """`y`: int `[B]` -> float32 `[B, features]`."""
    y = check_labels(y, self.num_classes)
    table = self.param("embedding", nn.initializers.normal(1.0),
                       (self.num_classes + 1, self.features), self.param_dtype)
    valid = (y >= 0) & (y <= self.num_classes)
    emb = jnp.take(table, jnp.clip(y, 0, self.num_classes), axis=0)
    return jnp.where(valid[:, None], emb.astype(jnp.float32), jnp.nan)
