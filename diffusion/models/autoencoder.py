"""The latent-diffusion autoencoder: a KL-regularised convolutional VAE, its patch
discriminator, and the fixed linear "autoencoders" the tests prove the latent path with.

    vae = AutoencoderKL(ch=32, channel_mult=(1, 2, 4), latent_channels=4, out_channels=1)
    params = vae.init(rng, x)["params"]                  # x [B, H, W, C] in [-1, 1]
    mean, logvar = vae.apply({"params": params}, x, method="encode")   # [B, H/f, W/f, 4]
    x_hat = vae.apply({"params": params}, z, method="decode")          # [B, H, W, C]

The layout is the latent-diffusion paper's (Rombach et al. 2022, its "KL-f4/f8"
models; the first seed's VAE): the encoder is a stack of ResBlocks with a strided
conv between levels, so that ``f = 2 ** (len(channel_mult) - 1)``; a middle of
ResBlock, optional self-attention, ResBlock; GroupNorm-SiLU and a conv to
``2 * latent_channels`` (the posterior's mean and log-variance, clipped to [-30,
20] as there). The decoder mirrors it (``num_res_blocks + 1`` ResBlocks per level,
nearest upsampling + conv). The blocks are the UNet's (`models.layers`) without a
time embedding.

`kl_to_standard_normal` is the posterior's KL to N(0, I), summed over the latent
elements: ``0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)``.

`PatchDiscriminator` is pix2pix's PatchGAN (Isola et al. 2017), as the paper adds
after a warm-up: 4x4 convs of stride 2 with LeakyReLU(0.2), doubling the width,
then two stride-1 convs down to one logit per patch. GroupNorm stands where pix2pix
has BatchNorm, so that the discriminator has no batch statistics to carry.

`LinearAutoencoder` has no parameters: space-to-depth by `factor` (each f x f
patch of C channels becomes ``f * f * C`` channels of one latent pixel), then an
orthogonal matrix Q on those channels (the identity, or drawn from `seed`).
Decoding is its exact inverse.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.models import layers

Array = jax.Array
LOGVAR_RANGE = (-30.0, 20.0)


def downsampling_factor(channel_mult: Sequence[int]) -> int:
  """f: the encoder halves H and W between consecutive levels."""
  return 2 ** (len(tuple(channel_mult)) - 1)


def kl_to_standard_normal(mean: Array, logvar: Array) -> Array:
  """KL( N(mean, exp(logvar)) || N(0, I) ) of each example, summed over its elements: [B]."""
  terms = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(terms.reshape(terms.shape[0], -1), axis=-1)


def _middle(x: Array, attention: bool, dtype, name: str) -> Array:
  x = layers.ResBlock(dtype=dtype, name=f"{name}_res1")(x, None, train=False)
  if attention:
    x = layers.AttentionBlock(dtype=dtype, name=f"{name}_attn")(x)
  return layers.ResBlock(dtype=dtype, name=f"{name}_res2")(x, None, train=False)


class Encoder(nn.Module):
  """``[B, H, W, C] -> (mean, logvar)``, each ``[B, H/f, W/f, latent_channels]``."""
  ch: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  latent_channels: int
  attention: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array):
    h = layers.conv3x3(self.ch, self.dtype, name="conv_in")(x)
    levels = len(self.channel_mult)
    for i, mult in enumerate(self.channel_mult):
      for j in range(self.num_res_blocks):
        h = layers.ResBlock(out_ch=self.ch * mult, dtype=self.dtype,
                            name=f"down{i}_res{j}")(h, None, train=False)
      if i < levels - 1:
        h = layers.Downsample(dtype=self.dtype, name=f"down{i}_resample")(h)
    h = _middle(h, self.attention, self.dtype, "mid")
    h = nn.silu(layers.group_norm(h.shape[-1], self.dtype, name="norm_out")(h))
    moments = layers.conv3x3(2 * self.latent_channels, self.dtype, name="conv_out")(h)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)


class Decoder(nn.Module):
  """``[B, h, w, latent_channels] -> [B, h f, w f, out_channels]``."""
  ch: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  out_channels: int
  attention: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    h = layers.conv3x3(self.ch * self.channel_mult[-1], self.dtype, name="conv_in")(z)
    h = _middle(h, self.attention, self.dtype, "mid")
    for i in reversed(range(len(self.channel_mult))):
      for j in range(self.num_res_blocks + 1):
        h = layers.ResBlock(out_ch=self.ch * self.channel_mult[i], dtype=self.dtype,
                            name=f"up{i}_res{j}")(h, None, train=False)
      if i > 0:
        h = layers.Upsample(dtype=self.dtype, name=f"up{i}_resample")(h)
    h = nn.silu(layers.group_norm(h.shape[-1], self.dtype, name="norm_out")(h))
    return layers.conv3x3(self.out_channels, self.dtype, name="conv_out")(h).astype(jnp.float32)


class AutoencoderKL(nn.Module):
  """The KL-regularised VAE (module doc). ``__call__(x, rng)`` returns ``(x_hat, mean,
  logvar)``, decoding a posterior sample (`rng`) or its mean (``rng=None``)."""
  ch: int = 32
  channel_mult: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 1
  latent_channels: int = 4
  attention: bool = False
  out_channels: int = 3
  dtype: Any = jnp.float32

  @property
  def factor(self) -> int:
    return downsampling_factor(self.channel_mult)

  def setup(self):
    self.encoder = Encoder(self.ch, tuple(self.channel_mult), self.num_res_blocks,
                           self.latent_channels, self.attention, self.dtype)
    self.decoder = Decoder(self.ch, tuple(self.channel_mult), self.num_res_blocks,
                           self.out_channels, self.attention, self.dtype)

  def encode(self, x: Array):
    """``x [B, H, W, C] -> (mean, logvar) [B, H/f, W/f, latent_channels]``."""
    f = self.factor
    if x.shape[1] % f or x.shape[2] % f:
      raise ValueError(f"AutoencoderKL: image {x.shape[1]}x{x.shape[2]} is not divisible by "
                       f"its downsampling factor f={f}")
    return self.encoder(x)

  def decode(self, z: Array) -> Array:
    return self.decoder(z)

  def __call__(self, x: Array, rng=None):
    mean, logvar = self.encode(x)
    z = mean if rng is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(
        rng, mean.shape, mean.dtype)
    return self.decode(z), mean, logvar


class PatchDiscriminator(nn.Module):
  """PatchGAN logits ``[B, H', W', 1]`` of images ``[B, H, W, C]`` (module doc)."""
  ch: int = 32
  num_layers: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    def conv(features, stride, name):
      return nn.Conv(features, (4, 4), strides=(stride, stride), padding=((1, 2), (1, 2))
                     if stride == 1 else ((1, 1), (1, 1)), dtype=self.dtype,
                     param_dtype=jnp.float32, name=name)
    h = nn.leaky_relu(conv(self.ch, 2, "conv0")(x), 0.2)
    width = self.ch
    for i in range(1, self.num_layers + 1):
      width = self.ch * min(2 ** i, 8)
      h = conv(width, 2 if i < self.num_layers else 1, f"conv{i}")(h)
      h = nn.leaky_relu(layers.group_norm(width, self.dtype, name=f"norm{i}")(h), 0.2)
    return conv(1, 1, "logits")(h).astype(jnp.float32)


def orthogonal_matrix(n: int, seed: int | None) -> np.ndarray:
  """The n x n identity (`seed` None), or an orthogonal matrix drawn from `seed` (QR of
  a Gaussian matrix, signs fixed so that it is Haar-distributed)."""
  if seed is None:
    return np.eye(n, dtype=np.float32)
  a = np.random.default_rng(seed).standard_normal((n, n))
  q, r = np.linalg.qr(a)
  return (q * np.sign(np.diag(r))).astype(np.float32)


def space_to_depth(x: Array, f: int) -> Array:
  """``[B, H, W, C] -> [B, H/f, W/f, f * f * C]`` (each f x f patch's pixels, row-major)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // f, w // f, f * f * c)


def depth_to_space(z: Array, f: int) -> Array:
  """The inverse of `space_to_depth`."""
  b, h, w, d = z.shape
  c = d // (f * f)
  z = z.reshape(b, h, w, f, f, c).transpose(0, 1, 3, 2, 4, 5)
  return z.reshape(b, h * f, w * f, c)


class LinearAutoencoder:
  """A fixed linear map and its inverse (module doc): ``encode(x) = s2d(x) @ Q^T``,
  ``decode(z) = d2s(z @ Q)``; with the identity Q and ``factor=1``, the identity."""

  def __init__(self, channels: int, factor: int = 1, seed: int | None = None):
    self.factor = factor
    self.q = jnp.asarray(orthogonal_matrix(factor * factor * channels, seed))

  def encode(self, x: Array) -> Array:
    return jnp.einsum("bhwc,dc->bhwd", space_to_depth(x, self.factor), self.q)

  def decode(self, z: Array) -> Array:
    return depth_to_space(jnp.einsum("bhwd,dc->bhwc", z, self.q), self.factor)
