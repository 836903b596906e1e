"""UNet building blocks (flax.linen): norms, resampling, residual and attention blocks.

All blocks take and return NHWC feature maps `[B, H, W, C]`, compute in
`dtype` and keep float32 parameters. Layers that end a residual branch (the
second conv of a `ResBlock`, the output projection of an `AttentionBlock`) are
zero-initialised, as in DDPM and ADM, so every block starts as (a projection
of) its skip path.
"""
import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

MAX_GROUPS = 32
MIN_GROUP_SIZE = 4


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
  """DDPM's initialiser: variance scaling, fan_avg, uniform (zeros if scale=0)."""
  if scale == 0.0:
    return nn.initializers.zeros
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def norm_groups(channels: int) -> int:
  """GroupNorm group count: min(32, channels // 4), at least 1.

  `channels` must be divisible by it. From 128 channels up this is the 32
  groups of DDPM / ADM. Below, groups keep >= 4 channels: a GroupNorm with one
  channel per group subtracts every per-channel constant, which would erase
  the additive time / class conditioning of `ResBlock` entirely in small
  models (with `min(32, channels)` groups a ch<=32 model ignores t).
  """
  return max(1, min(MAX_GROUPS, channels // MIN_GROUP_SIZE))


# GroupNorm from two primitives over the positions of each example, ``[B, N, C]`` <->
# ``[B, C]``, each a custom JVP: its primal is the form XLA:CPU runs fast, and its
# tangent is the linear map whose *transpose* (the reverse-mode pass) is the fast form
# of the other one. XLA:CPU runs ``jnp.sum(x, 1)`` of a feature map 4-8x slower than
# the same sum as a batched product with ones (2.2 vs 0.27 ms for 8x32x32x256), and the
# transpose of a plain broadcast of ``[B, C]`` is such a slow sum (flax's
# `nn.GroupNorm`'s scale / bias / statistics gradients). Forward mode stays exact
# (`core.likelihood` linearises the network): the tangents are the same linear maps.


def _ones_sum(x: Array) -> Array:
  """``[B, N, C] -> [B, C]``, the sum over N as a batched product with ones."""
  return jnp.einsum("bn,bnc->bc", jnp.ones(x.shape[:2], x.dtype), x)


@jax.custom_jvp
def rows_sum(x: Array) -> Array:
  """``[B, N, C] -> [B, C]``: each example's sum over its N positions (a product with
  ones; tangent `jnp.sum`, whose transpose is a broadcast that fuses)."""
  return _ones_sum(x)


@rows_sum.defjvp
def _rows_sum_jvp(primals, tangents):
  return rows_sum(primals[0]), jnp.sum(tangents[0], axis=1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def rows_spread(v: Array, n: int) -> Array:
  """``[B, C] -> [B, n, C]``: each example's row on all n positions (a broadcast;
  tangent an outer product with ones, whose transpose is the fast `_ones_sum`)."""
  return jnp.broadcast_to(v[:, None, :], (v.shape[0], n, v.shape[1]))


@rows_spread.defjvp
def _rows_spread_jvp(n, primals, tangents):
  (v,), (dv,) = primals, tangents
  return rows_spread(v, n), jnp.einsum("bn,bc->bnc", jnp.ones((v.shape[0], n), dv.dtype), dv)


def group_norm_apply(x: Array, scale: Array, bias: Array, groups: int,
                     epsilon: float = 1e-6) -> Array:
  """GroupNorm of channels-last `x` (``[B, ..., C]``; float32 result): each example's
  `groups` channel groups normalised over the spatial axes and the group's channels,
  then ``* scale + bias`` (``[C]``).

  Statistics in float32 from one pass (the variance as E[x^2] - E[x]^2, as flax's
  default ``use_fast_variance``, floored at 0); the output as ``x * a + b`` with
  per-(example, channel) ``a = rstd * scale``, ``b = bias - mean * a``. All sums over
  positions go through `rows_sum` / `rows_spread`, so that the gradient, with plain
  autodiff, is two per-example channel sums (of g and g * x) and one elementwise pass,
  and the scale / bias gradients are sums over B of ``[B, C]`` rows (measured on the
  twins' train steps in `benchmarks/README.md`, "What was tried").
  """
  b, c = x.shape[0], x.shape[-1]
  if c % groups:
    raise ValueError(f"GroupNorm: {c} channels are not divisible by {groups} groups")
  n = x.size // (b * c)
  xf = x.astype(jnp.float32).reshape(b, n, c)
  count = n * (c // groups)
  by_group = lambda v: v.reshape(b, groups, c // groups).sum(-1) / count  # [B, C] -> [B, G]
  mean, mean_sq = by_group(rows_sum(xf)), by_group(rows_sum(xf * xf))
  rstd = jax.lax.rsqrt(jnp.maximum(mean_sq - mean * mean, 0.0) + epsilon)
  spread = lambda v: jnp.repeat(v, c // groups, axis=1)  # [B, G] -> [B, C]
  a = spread(rstd) * scale.astype(jnp.float32)
  shift = bias.astype(jnp.float32) - spread(mean) * a
  return (xf * rows_spread(a, n) + rows_spread(shift, n)).reshape(x.shape)


class GroupNorm(nn.Module):
  """`group_norm_apply` as a flax module with flax `nn.GroupNorm`'s parameters
  (``scale`` ones, ``bias`` zeros, ``[C]``), so checkpoints of either load in the other."""
  num_groups: int
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]  # group_norm_apply refuses a c the groups do not divide.
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    return group_norm_apply(x, scale, bias, self.num_groups, self.epsilon).astype(self.dtype)


# The fewest channels for which `group_norm` takes `GroupNorm` rather than flax's
# `nn.GroupNorm` (the same parameters and numbers). Measured in the twins' train steps
# (`benchmarks/README.md`, "What was tried"): `GroupNorm` everywhere made the cifar10
# step (128-512 channels) ~9% faster but the mnist step (32-128 channels at batch 64,
# up to 28x28) 7-9% slower, though alone the norms ran faster at all but one of its shapes
# (most of that loss is the forward products with ones); from 128 channels on, the
# mnist step was flax's within noise and the cifar10 gain stays.
FAST_GROUP_NORM_MIN_CHANNELS = 128


def group_norm(channels: int, dtype: Dtype, name: Optional[str] = None) -> nn.Module:
  """GroupNorm with `norm_groups(channels)` groups (statistics in float32): `GroupNorm`
  from `FAST_GROUP_NORM_MIN_CHANNELS` channels on, flax's `nn.GroupNorm` below."""
  groups = norm_groups(channels)
  if channels % groups:
    raise ValueError(f"GroupNorm needs channels divisible by its min(32, channels // 4)="
                     f"{groups} groups, got {channels}")
  cls = GroupNorm if channels >= FAST_GROUP_NORM_MIN_CHANNELS else nn.GroupNorm
  return cls(num_groups=groups, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, name=name)


# Padding of a stride-2 3x3 conv per `Downsample.padding` (0 or 1), as (before, after):
# 1 pads one pixel on every side; 0 pads one pixel after (bottom / right) only,
# which is TensorFlow's 'SAME' for even sizes, the padding of the DDPM paper's code
# and of diffusers' `downsample_padding=0` (its published DDPM checkpoints).
DOWNSAMPLE_PADDINGS = {0: (0, 1), 1: (1, 1)}


@jax.custom_jvp
def add_bias(y: Array, bias: Array) -> Array:
  """``y + bias`` (``bias`` ``[C]`` on the last axis), with a fast bias gradient.

  A custom JVP (so forward mode works: `core.likelihood` linearises the network)
  whose bias tangent is spread by `_spread_bias`. Its transpose, the reverse-mode bias
  gradient, is then a sum over wide ``[rows, W * C]`` rows and a product with ones
  over W. Autodiff of a plain broadcast sums ``[N, C]`` over N instead, which XLA:CPU
  runs 15-30x slower for small C (10.5 vs 0.37 ms for a 64x28x28x64 gradient,
  `benchmarks/README.md`).
  """
  return y + bias.astype(y.dtype)


def _spread_bias(bias: Array, shape) -> Array:
  """``bias`` ``[C]`` broadcast to ``shape`` ``[..., W, C]`` via ``ones[W, 1] @ bias[1, C]``
  and a broadcast of that ``W * C`` row (transpose: a wide-row sum, then a product)."""
  if len(shape) < 3:
    return jnp.broadcast_to(bias, shape)
  w, c = shape[-2], shape[-1]
  row = (jnp.ones((w, 1), bias.dtype) @ bias[None, :]).reshape(1, w * c)
  return jnp.broadcast_to(row, (math.prod(shape[:-2]), w * c)).reshape(shape)


@add_bias.defjvp
def _add_bias_jvp(primals, tangents):
  y, bias = primals
  dy, dbias = tangents
  out = add_bias(y, bias)
  return out, dy + _spread_bias(dbias, y.shape).astype(y.dtype)


class Conv(nn.Module):
  """A 2-D NHWC conv with flax `nn.Conv`'s parameters (``kernel`` ``[kh, kw, in, out]``,
  ``bias`` ``[out]``: checkpoints are those of `nn.Conv`) and the same numbers; its
  bias is added by `add_bias`. `padding`: ``((top, bottom), (left, right))``."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))
  kernel_init: Any = default_init()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init,
                        tuple(self.kernel_size) + (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), tuple(self.strides),
        tuple(tuple(p) for p in self.padding), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return add_bias(y, bias)


class Dense(nn.Module):
  """flax `nn.Dense` (the same ``kernel`` ``[in, out]`` and ``bias``) on the last axis,
  its bias added by `add_bias`."""
  features: int
  kernel_init: Any = default_init()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            (((x.ndim - 1,), (0,)), ((), ())))
    return add_bias(y, bias)


def conv3x3(features: int, dtype: Dtype, *, stride: int = 1, init_scale: float = 1.0,
            pad: tuple[int, int] = (1, 1), name: Optional[str] = None) -> Conv:
  """3x3 conv, padded `pad` = (before, after) on H and W (the default (1, 1) keeps
  H at stride 1; either padding maps an even H to H / 2 at stride 2)."""
  return Conv(features, (3, 3), strides=(stride, stride), padding=(pad, pad),
              kernel_init=default_init(init_scale), dtype=dtype, name=name)


def dense(features: int, dtype: Dtype, *, init_scale: float = 1.0,
          name: Optional[str] = None) -> Dense:
  """Dense on the last axis (= a 1x1 "nin" conv on feature maps)."""
  return Dense(features, kernel_init=default_init(init_scale), dtype=dtype, name=name)


class SplitDense(nn.Module):
  """A Dense of ``parts * features`` outputs (flax `nn.Dense`'s ``kernel`` ``[C, parts *
  features]`` and ``bias``, so checkpoints are those of that Dense) returned as `parts`
  arrays of `features`: ``x @ kernel[:, i * F:(i + 1) * F] + bias[...]``.

  The same numbers as slicing the Dense's output; but the gradient of a slice of the
  big activation is a zero-padded full-size array per part, summed and transposed for
  the weight gradient (on XLA:CPU ~25 ms per 16x16x256 attention block of batch 8),
  while the gradient of a slice of the small kernel costs nothing.
  """
  features: int
  parts: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, ...]:
    width = self.parts * self.features
    kernel = self.param("kernel", default_init(), (x.shape[-1], width), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (width,), jnp.float32)
    x = x.astype(self.dtype)
    f = self.features
    return tuple(add_bias(jnp.dot(x, kernel[:, i * f:(i + 1) * f].astype(self.dtype)),
                          bias[i * f:(i + 1) * f]) for i in range(self.parts))


def downsample_2x(x: Array) -> Array:
  """2x2 average pooling, `[B, H, W, C] -> [B, H/2, W/2, C]` (H, W even)."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def upsample_2x(x: Array) -> Array:
  """Nearest-neighbour upsampling, `[B, H, W, C] -> [B, 2H, 2W, C]`."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Downsample(nn.Module):
  """Halves H and W: strided 3x3 conv if `with_conv`, else 2x2 average pooling.

  `[B, H, W, C] -> [B, H/2, W/2, C]`; H and W must be even. `padding` (a key of
  `DOWNSAMPLE_PADDINGS`) is the conv's: 1 on every side, or 0 before and 1 after.
  """
  with_conv: bool = True
  dtype: Dtype = jnp.float32
  padding: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.with_conv:
      return conv3x3(x.shape[-1], self.dtype, stride=2, pad=DOWNSAMPLE_PADDINGS[self.padding],
                     name="conv")(x)
    return downsample_2x(x)


class Upsample(nn.Module):
  """Doubles H and W: nearest-neighbour, then a 3x3 conv if `with_conv`.

  `[B, H, W, C] -> [B, 2H, 2W, C]`.
  """
  with_conv: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = upsample_2x(x)
    if self.with_conv:
      x = conv3x3(x.shape[-1], self.dtype, name="conv")(x)
    return x


class ResBlock(nn.Module):
  """Residual block GN-SiLU-[resample]-conv-(+emb)-GN-SiLU-dropout-conv.

  Conditioning: `emb` `[B, E]` (time embedding, plus class embedding if any)
  goes through SiLU and a Dense layer, then either is added to the features
  after the first conv (DDPM) or, with `scale_shift_norm`, modulates the second
  GroupNorm as `GN(h) * (1 + scale) + shift` (FiLM, as in ADM).

  Resampling inside the block (BigGAN / ADM style, `resample="up"|"down"`)
  applies nearest-upsampling or 2x2 average pooling to both the branch (after
  the first GN-SiLU) and the skip path.

  The skip path is the identity, or a Dense ("nin", 1x1 conv) projection when
  the channel count changes. The output is `skip + h`, divided by sqrt(2) when
  `skip_rescale`.

  Attributes:
    out_ch: output channels (None = same as input).
    dropout: dropout rate before the second conv (active only when train=True,
      which then needs a 'dropout' rng).
    scale_shift_norm: FiLM conditioning of the second GroupNorm.
    skip_rescale: divide the output by sqrt(2).
    resample: None, "up" or "down".
    dtype: computation dtype.
  """
  out_ch: Optional[int] = None
  dropout: float = 0.0
  scale_shift_norm: bool = False
  skip_rescale: bool = False
  resample: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, emb: Optional[Array], *, train: bool) -> Array:
    """`x`: `[B, H, W, C]`, `emb`: `[B, E]` or None -> `[B, H', W', out_ch]`."""
    if self.resample not in (None, "up", "down"):
      raise ValueError(f"ResBlock: resample must be None, 'up' or 'down', got {self.resample!r}")
    in_ch = x.shape[-1]
    out_ch = self.out_ch or in_ch
    h = nn.silu(group_norm(in_ch, self.dtype, name="norm1")(x))
    if self.resample == "up":
      h, x = upsample_2x(h), upsample_2x(x)
    elif self.resample == "down":
      h, x = downsample_2x(h), downsample_2x(x)
    h = conv3x3(out_ch, self.dtype, name="conv1")(h)

    norm2 = group_norm(out_ch, self.dtype, name="norm2")
    if emb is None:
      h = nn.silu(norm2(h))
    else:
      width = 2 * out_ch if self.scale_shift_norm else out_ch
      e = dense(width, self.dtype, name="emb_proj")(nn.silu(emb))[:, None, None, :]
      if self.scale_shift_norm:
        scale, shift = jnp.split(e, 2, axis=-1)
        h = nn.silu(norm2(h) * (1 + scale) + shift)
      else:
        h = nn.silu(norm2(h + e))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(out_ch, self.dtype, init_scale=0.0, name="conv2")(h)

    if in_ch != out_ch:
      x = dense(out_ch, self.dtype, name="skip")(x)
    out = x + h
    return out / math.sqrt(2.0) if self.skip_rescale else out


class AttentionBlock(nn.Module):
  """Multi-head self-attention over the H*W positions, with a residual skip.

  GN -> fused q,k,v Dense -> softmax(q k^T / sqrt(C / num_heads)) v
  (`jax.nn.dot_product_attention`, softmax in float32) -> zero-initialised output Dense -> `x + h` (divided by sqrt(2) when
  `skip_rescale`). With `num_heads=1` this is DDPM's attention block.

  Attributes:
    num_heads: number of heads; must divide the channel count.
    skip_rescale: divide the output by sqrt(2).
    dtype: computation dtype.
  """
  num_heads: int = 1
  skip_rescale: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """`[B, H, W, C] -> [B, H, W, C]`."""
    b, hgt, wid, c = x.shape
    if self.num_heads < 1 or c % self.num_heads:
      raise ValueError(
          f"AttentionBlock: num_heads={self.num_heads} must divide channels={c}")
    head_dim = c // self.num_heads
    h = group_norm(c, self.dtype, name="norm")(x)
    q, k, v = (a.reshape(b, hgt * wid, self.num_heads, head_dim)  # [B, L, heads, head_dim]
               for a in SplitDense(c, 3, self.dtype, name="qkv")(h))
    # JAX's attention (logits and softmax in float32, scale 1 / sqrt(head_dim)):
    # on GPU with half-precision inputs it may run cuDNN's fused kernel.
    h = jax.nn.dot_product_attention(q, k, v).reshape(b, hgt, wid, c)
    h = dense(c, self.dtype, init_scale=0.0, name="proj_out")(h)
    out = x + h
    return out / math.sqrt(2.0) if self.skip_rescale else out


class TransformerBlock(nn.Module):
  """Self-attention, cross-attention to text tokens and a feed-forward over the H*W
  positions (latent diffusion's spatial transformer), with a residual skip.

  GN -> Dense(C) -> `depth` x [LN -> self-attention -> +; LN -> cross-attention
  (queries from the image, keys / values from ``context [B, L, D]``, padded tokens
  masked out by ``mask [B, L]``) -> +; LN -> Dense(4C) -> GELU -> Dense(C) -> +]
  -> zero-initialised Dense(C) -> `x + h` (divided by sqrt(2) when `skip_rescale`).
  Attention in float32 softmax (`jax.nn.dot_product_attention`), scale 1 / sqrt(C
  / num_heads). A row whose mask is all False attends to nothing: its
  cross-attention output is 0 (the empty prompt's null condition still has its
  bos / eos tokens unmasked).

  Attributes:
    num_heads: heads of both attentions; must divide the channel count.
    depth: repeats of the three sub-blocks.
    skip_rescale: divide the output by sqrt(2).
    dtype: computation dtype.
  """
  num_heads: int = 1
  depth: int = 1
  skip_rescale: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, context: Array, mask: Optional[Array] = None) -> Array:
    """`[B, H, W, C]`, `[B, L, D]`, bool `[B, L]` -> `[B, H, W, C]`."""
    b, hgt, wid, c = x.shape
    if self.num_heads < 1 or c % self.num_heads:
      raise ValueError(f"TransformerBlock: num_heads={self.num_heads} must divide channels={c}")
    if context.ndim != 3 or context.shape[0] != b:
      raise ValueError(f"TransformerBlock: context must be [B={b}, L, D], got {context.shape}")
    heads, head_dim, dt = self.num_heads, c // self.num_heads, self.dtype
    context = context.astype(dt)
    attn_mask = None
    if mask is not None:  # A row with no token attends to all (finite), then is zeroed below.
      mask = jnp.asarray(mask, bool)
      attn_mask = (mask | ~jnp.any(mask, -1, keepdims=True))[:, None, None, :]  # [B, 1, 1, L]

    def split(t):
      return t.reshape(t.shape[0], t.shape[1], heads, head_dim)

    h = group_norm(c, dt, name="norm")(x).reshape(b, hgt * wid, c)
    h = dense(c, dt, name="proj_in")(h)
    for i in range(self.depth):
      y = nn.LayerNorm(dtype=dt, name=f"ln_self{i}")(h)
      q, k, v = (split(a) for a in SplitDense(c, 3, dt, name=f"self_qkv{i}")(y))
      y = jax.nn.dot_product_attention(q, k, v)
      h = h + dense(c, dt, name=f"self_out{i}")(y.reshape(b, hgt * wid, c))
      y = nn.LayerNorm(dtype=dt, name=f"ln_cross{i}")(h)
      q = split(dense(c, dt, name=f"cross_q{i}")(y))
      k = split(dense(c, dt, name=f"cross_k{i}")(context))
      v = split(dense(c, dt, name=f"cross_v{i}")(context))
      y = jax.nn.dot_product_attention(q, k, v, mask=attn_mask)
      if mask is not None:  # No unmasked token: no cross-attention (not a uniform average).
        y = jnp.where(jnp.any(mask, -1)[:, None, None, None], y, 0.0)
      h = h + dense(c, dt, name=f"cross_out{i}")(y.reshape(b, hgt * wid, c))
      y = nn.LayerNorm(dtype=dt, name=f"ln_ff{i}")(h)
      y = dense(c, dt, name=f"ff_out{i}")(nn.gelu(dense(4 * c, dt, name=f"ff_in{i}")(y)))
      h = h + y
    h = dense(c, dt, init_scale=0.0, name="proj_out")(h).reshape(b, hgt, wid, c)
    out = x + h
    return out / math.sqrt(2.0) if self.skip_rescale else out
