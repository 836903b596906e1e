"""`digits_ddpm.py` conditioned on text: captions made from each digit's label and its
measured stroke thickness, slant and size, through a CLIP-style text encoder trained
with the model, into the UNet's cross-attention.

    python -m diffusion.main --config configs/digits_text.py --workdir /tmp/digits_text
    python -m diffusion.main --config configs/digits_text.py --workdir /tmp/digits_text \\
        --mode sample --config.sample.prompt="a thick 3|a thin 3" --config.sample.guidance=3.0

`families.text_conditional` on the quick start's network and run; the middle
block's attention becomes a transformer block with cross-attention to the 12
caption tokens.

Variants: `digits_text.py:key=value,...` with the keys of `default.VARIANT_KEYS`.
"""
from configs import default
from configs import digits_ddpm
from configs import families


def layers():
  """`digits_ddpm.py`, then the text encoder, the captions and the guidance."""
  return families.stack(digits_ddpm.layers(), families.text_conditional())


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="digits_text.py")
