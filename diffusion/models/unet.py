"""A configurable UNet of the DDPM / ADM / DDPM++ family (flax.linen).

The defaults are the CIFAR-10 network of DDPM (Ho et al. 2020, 35.7M
parameters): `ch=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
attention_resolutions=(16,), dropout=0.1`, sinusoidal time embedding, conv
resampling, additive (non-FiLM) conditioning. Switches give the ADM variants
(`scale_shift_norm`, `resblock_updown`, `num_heads`), DDPM++ (`skip_rescale`)
and NCSN++-style noise conditioning (`embedding="fourier"`).

Layout (L = len(channel_mult)):
  t -> embedding(ch) -> Dense(4ch) -> SiLU -> Dense(4ch)  (+ class embedding)
  x -> [concat Fourier features of x] -> [pad] -> conv_in(ch)
  down: per level, num_res_blocks ResBlocks (+ attention at the listed
        resolutions), then a downsample (except the last level); every output
        is pushed on a skip stack
  middle: ResBlock, attention, ResBlock
  up: per level (reversed), num_res_blocks + 1 ResBlocks on
      concat(h, skip.pop()) (+ attention), then an upsample (except level 0)
  GN -> SiLU -> conv_out (zero-initialised) -> [crop] -> float32

Sizes not divisible by 2**(L-1): the input is zero-padded (split evenly between
the two sides, an odd pixel at the bottom/right) to the next multiple of 2**(L-1) and the output
is cropped back, so any H, W works. E.g. 28x28 with channel_mult=(1, 2, 2) runs
at 28, 14, 7 without padding, and with (1, 2, 2, 2) it is padded to 32 and
runs at 32, 16, 8, 4. `attention_resolutions` refer to these (padded) feature
map heights.
"""
import math
import numbers
from typing import Any, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.models import embeddings
from diffusion.models import layers

Array = jax.Array

EMBEDDINGS = ("sinusoidal", "fourier")
DTYPES = ("float32", "bfloat16", "float16")


class UNet(nn.Module):
  """Noise-prediction UNet: `[B, H, W, C]` images and `[B]` times -> `[B, H, W, out]`.

  Attributes:
    ch: base channel count; level i has `ch * channel_mult[i]` channels.
    channel_mult: per-level channel multipliers; the number of levels is
      `len(channel_mult)` and the image is halved between levels.
    num_res_blocks: ResBlocks per level on the way down (+1 on the way up).
    attention_resolutions: feature-map heights at which self-attention follows
      each ResBlock (the middle block always has attention).
    num_heads: attention heads; must divide the channels at every attention.
    dropout: dropout rate inside ResBlocks (only with `train=True`, which then
      needs a 'dropout' rng).
    resblock_updown: resample inside ResBlocks (BigGAN / ADM) instead of by
      separate Downsample / Upsample layers.
    resamp_with_conv: separate resampling uses a strided 3x3 conv down and
      nearest + 3x3 conv up; if False, 2x2 average pooling and plain nearest.
    downsample_padding: the strided conv's padding: 1 pads every side by one
      pixel; 0 pads only the bottom and right, as TensorFlow's 'SAME' in the DDPM
      paper's code and diffusers' `downsample_padding=0` (their published DDPM
      weights need it: `diffusion.port`). Same parameters either way.
    scale_shift_norm: FiLM conditioning (ADM) instead of adding the embedding.
    skip_rescale: divide every residual sum by sqrt(2) (DDPM++).
    embedding: "sinusoidal" (t is a timestep; embeds `time_scale * t`) or
      "fourier" (t is a noise level sigma > 0; embeds log(sigma) with fixed
      Gaussian Fourier features, as score_sde NCSN++ does for VE SDEs).
    time_scale: multiplier on t before the sinusoidal embedding (1 for integer
      steps 0..T-1; e.g. 1000 for continuous t in [0, 1]).
    fourier_scale: std of the fixed Fourier frequencies.
    num_classes: None (unconditional) or the number of classes; labels are
      0..num_classes-1 and `num_classes` is the null label (`null_label`).
    out_channels: output channels (None = input channels).
    image_size: optional expected H = W; enables checking
      `attention_resolutions` at construction and the input size at call.
    in_channels: optional expected input channel count (checked at call).
    input_fourier: exponents n of VDM's input Fourier features (Kingma et al.
      2021, App. B): `sin` / `cos` of `2^n pi x` for each input channel are
      concatenated to the C input channels before `conv_in`
      (`embeddings.input_fourier_features`; `C (1 + 2 len(input_fourier))`
      channels in), e.g. (7, 8). Empty (the default): off, and the network and
      its parameters are as without the field.
    cross_attention: text conditioning: every attention block (the listed
      resolutions and the middle) is a `layers.TransformerBlock` whose
      cross-attention reads the text tokens ``cond["context"] [B, L, D]`` (with the
      padding mask ``cond["mask"] [B, L]``), as the latent-diffusion UNet does; and
      the mean of the unmasked tokens, through a Dense, is added to the time
      embedding (Imagen's pooled text embedding), so every ResBlock sees the text too.
    transformer_depth: sub-block repeats of each TransformerBlock.
    dtype: computation dtype (float32, bfloat16 or float16); parameters are
      always float32 and the output is float32.
  """
  ch: int = 128
  channel_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = (16,)
  num_heads: int = 1
  dropout: float = 0.1
  resblock_updown: bool = False
  resamp_with_conv: bool = True
  downsample_padding: int = 1
  scale_shift_norm: bool = False
  skip_rescale: bool = False
  embedding: str = "sinusoidal"
  time_scale: float = 1.0
  fourier_scale: float = 16.0
  num_classes: Optional[int] = None
  out_channels: Optional[int] = None
  image_size: Optional[int] = None
  in_channels: Optional[int] = None
  input_fourier: Sequence[int] = ()
  cross_attention: bool = False
  transformer_depth: int = 1
  dtype: Any = jnp.float32

  def __post_init__(self):
    # Config files may give lists; keep the module hashable.
    object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
    object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
    object.__setattr__(self, "input_fourier", tuple(self.input_fourier))
    self.validate()
    super().__post_init__()

  # ---------------------------------------------------------------- checks
  @property
  def null_label(self) -> Optional[int]:
    """The label meaning "no class" (= num_classes), None if unconditional."""
    return self.num_classes

  @property
  def size_multiple(self) -> int:
    """Inputs are padded to a multiple of this: 2 ** (len(channel_mult) - 1)."""
    return 2 ** (len(self.channel_mult) - 1)

  def padded_size(self, size: int) -> int:
    """The size an input dimension is zero-padded to before the network."""
    m = self.size_multiple
    return -(-size // m) * m

  def resolutions(self, size: int) -> tuple[int, ...]:
    """Feature-map heights at each level for an input of height `size`."""
    padded = self.padded_size(size)
    return tuple(padded // 2 ** i for i in range(len(self.channel_mult)))

  def validate(self) -> None:
    """Raises ValueError naming the field if this config cannot work."""
    def fail(msg):
      raise ValueError(f"UNet: {msg}")

    def is_int(v):
      return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if not is_int(self.ch) or self.ch < 1:
      fail(f"ch must be a positive int, got {self.ch!r}")
    if not self.channel_mult:
      fail("channel_mult is empty; give at least one level, e.g. (1, 2, 2, 2)")
    if not all(is_int(m) and m >= 1 for m in self.channel_mult):
      fail(f"channel_mult entries must be positive ints, got {self.channel_mult}")
    if not is_int(self.num_res_blocks) or self.num_res_blocks < 1:
      fail(f"num_res_blocks must be an int >= 1, got {self.num_res_blocks!r}")
    if self.downsample_padding not in layers.DOWNSAMPLE_PADDINGS:
      fail(f"downsample_padding must be one of {tuple(layers.DOWNSAMPLE_PADDINGS)}, "
           f"got {self.downsample_padding!r}")
    if not 0.0 <= self.dropout < 1.0:
      fail(f"dropout must be in [0, 1), got {self.dropout!r}")
    if self.embedding not in EMBEDDINGS:
      fail(f"embedding={self.embedding!r} is unknown; valid: {EMBEDDINGS}")
    if self.embedding == "sinusoidal" and self.ch < 2:
      fail(f"embedding='sinusoidal' needs ch >= 2 (the embedding width), got ch={self.ch}")
    if self.embedding == "fourier" and self.ch % 2:
      fail(f"embedding='fourier' needs an even ch (the embedding width), got ch={self.ch}")
    if self.num_classes is not None and (not is_int(self.num_classes) or self.num_classes < 1):
      fail(f"num_classes must be None or an int >= 1, got {self.num_classes!r}")
    if self.out_channels is not None and (not is_int(self.out_channels) or self.out_channels < 1):
      fail(f"out_channels must be None or an int >= 1, got {self.out_channels!r}")
    if self.in_channels is not None and (not is_int(self.in_channels) or self.in_channels < 1):
      fail(f"in_channels must be None or an int >= 1, got {self.in_channels!r}")
    if self.image_size is not None and (not is_int(self.image_size) or self.image_size < 1):
      fail(f"image_size must be None or an int >= 1, got {self.image_size!r}")
    try:
      embeddings.check_fourier_exponents(self.input_fourier)
    except ValueError as e:
      fail(str(e))
    try:
      dtype_name = jnp.dtype(self.dtype).name
    except TypeError:
      dtype_name = repr(self.dtype)
    if dtype_name not in DTYPES:
      fail(f"dtype={dtype_name} is not supported; valid: {DTYPES}")
    if not all(is_int(r) and r >= 1 for r in self.attention_resolutions):
      fail(f"attention_resolutions must be positive ints, got {self.attention_resolutions}")
    if not is_int(self.transformer_depth) or self.transformer_depth < 1:
      fail(f"transformer_depth must be an int >= 1, got {self.transformer_depth!r}")
    if not is_int(self.num_heads) or self.num_heads < 1:
      fail(f"num_heads must be an int >= 1, got {self.num_heads!r}")
    for channels in sorted(self._attention_channels()):
      if channels % self.num_heads:
        fail(f"num_heads={self.num_heads} does not divide the {channels} channels of an "
             f"attention block (channels per level: {self._level_channels()})")
    for channels in self._norm_channels():
      groups = layers.norm_groups(channels)
      if channels % groups:
        fail(f"ch={self.ch} with channel_mult={self.channel_mult} puts a GroupNorm on "
             f"{channels} channels, which is not divisible by its min(32, channels // 4)="
             f"{groups} groups; a ch that is a multiple of 32 always works")
    if self.image_size is not None:
      self._check_attention_resolutions(self.image_size)

  def _check_attention_resolutions(self, size: int) -> None:
    occurring = self.resolutions(size)
    missing = [r for r in self.attention_resolutions if r not in occurring]
    if missing:
      raise ValueError(
          f"UNet: attention_resolutions {tuple(missing)} never occur for input size {size} "
          f"with channel_mult={self.channel_mult}; the feature-map resolutions are "
          f"{occurring}")

  def _level_channels(self) -> tuple[int, ...]:
    return tuple(self.ch * m for m in self.channel_mult)

  def _attention_channels(self) -> set[int]:
    """Channel counts of attention blocks: the middle block's, and with a known
    image_size those of the levels whose resolution is listed (without it,
    `AttentionBlock` checks its own channels when the network is traced)."""
    levels = self._level_channels()
    channels = {levels[-1]}
    if self.image_size is not None:
      for res, c in zip(self.resolutions(self.image_size), levels):
        if res in self.attention_resolutions:
          channels.add(c)
    return channels

  def _norm_channels(self) -> set[int]:
    """Every channel count a GroupNorm sees, from a dry run of the skip stack."""
    levels = self._level_channels()
    seen, skips, cur = set(), [self.ch], self.ch
    for i, out in enumerate(levels):
      for _ in range(self.num_res_blocks):
        seen.update((cur, out))
        cur = out
        skips.append(cur)
      if i != len(levels) - 1:
        skips.append(cur)
    for i, out in reversed(list(enumerate(levels))):
      for _ in range(self.num_res_blocks + 1):
        seen.update((cur + skips.pop(), out))
        cur = out
    return seen

  # ---------------------------------------------------------------- network
  def _time_embedding(self, t: Array) -> Array:
    """`t` `[B]` -> float32 `[B, ch]` before the MLP."""
    if self.embedding == "sinusoidal":
      return embeddings.sinusoidal_embedding(t, self.ch, scale=self.time_scale)
    sigma = jnp.asarray(t, jnp.float32)
    return embeddings.gaussian_fourier_embedding(jnp.log(sigma), self.ch,
                                                 scale=self.fourier_scale)

  @nn.compact
  def __call__(self, x: Array, t: Array, y: Optional[Array] = None, *,
               train: bool) -> Array:
    """Applies the network.

    One method (~90 lines) that reads as the layout of the module docstring,
    top to bottom: splitting it would scatter the skip stack it pushes and pops.

    Args:
      x: `[B, H, W, C]` float images (any H, W: padded internally, see module doc).
      t: `[B]` (or scalar, broadcast) int or float timesteps; for
        `embedding="fourier"` the noise level sigma > 0.
      y: the condition: `[B]` int labels in [0, num_classes] (num_classes = null
        label), or None; or a dict with "label" (the same) and, for
        `cross_attention`, "context" `[B, L, D]` and "mask" bool `[B, L]`. With
        `num_classes` set, no labels means "all null". Giving labels to an
        unconditional model, or no context to a cross-attention one, is a ValueError.
      train: enables dropout (then a 'dropout' rng is needed).

    Returns:
      float32 `[B, H, W, out_channels or C]`.
    """
    if x.ndim != 4:
      raise ValueError(f"UNet: x must be [B, H, W, C], got shape {x.shape}")
    b, height, width, c = x.shape
    if self.in_channels is not None and c != self.in_channels:
      raise ValueError(f"UNet: in_channels={self.in_channels} but x has {c} channels")
    if self.image_size is not None and (height, width) != (self.image_size,) * 2:
      raise ValueError(f"UNet: image_size={self.image_size} but x is {height}x{width}")
    self._check_attention_resolutions(height)
    t = jnp.asarray(t)
    if t.ndim == 0:
      t = jnp.broadcast_to(t, (b,))
    chex.assert_shape(t, (b,))
    context = mask = None
    if isinstance(y, dict):
      unknown = sorted(set(y) - {"label", "context", "mask"})
      if unknown:
        raise ValueError(f"UNet: unknown condition keys {unknown}; valid: label, context, mask")
      context, mask, y = y.get("context"), y.get("mask"), y.get("label")
    if self.cross_attention and context is None:
      raise ValueError("UNet: cross_attention=True needs the text tokens: y={'context': "
                       "[B, L, D], 'mask': [B, L]}")
    if context is not None and not self.cross_attention:
      raise ValueError("UNet: a text context was given but cross_attention is False")
    if context is not None:
      chex.assert_rank(context, 3)
      chex.assert_axis_dimension(context, 0, b)
    if self.num_classes is not None:
      y = jnp.full((b,), self.num_classes, jnp.int32) if y is None else y
      y = embeddings.check_labels(y, self.num_classes)  # before any compute
      chex.assert_shape(y, (b,))
    elif y is not None:
      raise ValueError("UNet: labels y were given but num_classes is None "
                       "(the model is unconditional)")

    dt = self.dtype
    emb_dim = 4 * self.ch
    emb = self._time_embedding(t)
    emb = layers.dense(emb_dim, dt, name="temb_dense0")(emb)
    emb = layers.dense(emb_dim, dt, name="temb_dense1")(nn.silu(emb))
    if self.num_classes is not None:
      emb = emb + embeddings.ClassEmbedding(self.num_classes, emb_dim, name="class_emb")(y)
    if context is not None:  # The mean of the unmasked tokens, added to the time embedding.
      m = jnp.ones(context.shape[:2], jnp.float32) if mask is None else mask.astype(jnp.float32)
      pooled = jnp.sum(context * m[..., None], 1) / jnp.maximum(jnp.sum(m, 1, keepdims=True), 1.0)
      emb = emb + layers.dense(emb_dim, dt, name="text_emb")(pooled.astype(dt))

    if self.input_fourier:  # Before padding: the padded border stays zero in every channel.
      x = jnp.concatenate(
          [x.astype(jnp.float32), embeddings.input_fourier_features(x, self.input_fourier)], -1)
    pad_h, pad_w = self.padded_size(height) - height, self.padded_size(width) - width
    if pad_h or pad_w:
      x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                      (pad_w // 2, pad_w - pad_w // 2), (0, 0)))

    def res(out_ch, name, resample=None):
      return layers.ResBlock(out_ch, self.dropout, self.scale_shift_norm, self.skip_rescale,
                             resample, dt, name=name)

    def attn(name):
      if self.cross_attention:
        block = layers.TransformerBlock(self.num_heads, self.transformer_depth,
                                        self.skip_rescale, dt, name=name)
        return lambda h: block(h, context, mask)
      return layers.AttentionBlock(self.num_heads, self.skip_rescale, dt, name=name)

    levels = self._level_channels()
    last = len(levels) - 1
    h = layers.conv3x3(self.ch, dt, name="conv_in")(x.astype(dt))
    skips = [h]
    for i, out_ch in enumerate(levels):
      for j in range(self.num_res_blocks):
        h = res(out_ch, f"down{i}_res{j}")(h, emb, train=train)
        if h.shape[1] in self.attention_resolutions:
          h = attn(f"down{i}_attn{j}")(h)
        skips.append(h)
      if i != last:
        if self.resblock_updown:
          h = res(out_ch, f"down{i}_downsample", "down")(h, emb, train=train)
        else:
          h = layers.Downsample(self.resamp_with_conv, dt, self.downsample_padding,
                                name=f"down{i}_downsample")(h)
        skips.append(h)

    h = res(levels[-1], "mid_res0")(h, emb, train=train)
    h = attn("mid_attn")(h)
    h = res(levels[-1], "mid_res1")(h, emb, train=train)

    for i, out_ch in reversed(list(enumerate(levels))):
      for j in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res(out_ch, f"up{i}_res{j}")(h, emb, train=train)
        if h.shape[1] in self.attention_resolutions:
          h = attn(f"up{i}_attn{j}")(h)
      if i != 0:
        if self.resblock_updown:
          h = res(out_ch, f"up{i}_upsample", "up")(h, emb, train=train)
        else:
          h = layers.Upsample(self.resamp_with_conv, dt, name=f"up{i}_upsample")(h)
    assert not skips, "skip stack must be consumed exactly"

    h = nn.silu(layers.group_norm(levels[0], dt, name="norm_out")(h))
    h = layers.conv3x3(self.out_channels or c, dt, init_scale=0.0, name="conv_out")(h)
    h = h[:, pad_h // 2: pad_h // 2 + height, pad_w // 2: pad_w // 2 + width]
    return h.astype(jnp.float32)


def param_count(params: Any) -> int:
  """Total number of scalars in a params pytree (arrays or ShapeDtypeStructs)."""
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))
