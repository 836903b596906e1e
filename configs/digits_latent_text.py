"""`digits_text.py` in latent space: the first seed's pipeline at the size of a test.

    python -m diffusion.main --config configs/digits_autoencoder.py --workdir workdir/digits_ae
    python -m diffusion.main --config configs/digits_latent_text.py --workdir workdir/digits_latent
    python -m diffusion.main --config configs/digits_latent_text.py --workdir workdir/digits_latent \\
        --mode sample --config.sample.prompt="a thick 3|a thin 7" --config.sample.guidance=3.0

Captions -> word tokenizer -> the trained text encoder -> a UNet with cross-attention
on the 4x4x2 latents of `digits_autoencoder.py` (``latent.autoencoder_workdir``,
default ``workdir/digits_ae``) -> DDIM with guidance -> the autoencoder's decoder.
The UNet has one 4x4 level (ch 32) and a transformer block in the middle.

Variants: `digits_latent_text.py:key=value,...` with the keys of `default.VARIANT_KEYS`.
"""
from configs import default
from configs import digits_text
from configs import families


def layers():
  """`digits_text.py`, then the autoencoder's latents and a UNet of their size."""
  return families.stack(digits_text.layers(), dict(
      latent=dict(autoencoder_workdir="workdir/digits_ae"),
      model=dict(channel_mult=(1,))))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="digits_latent_text.py")
