"""`mnist_ddpm_cpu.py` conditioned on text: the README's text-to-image result.

    python -m diffusion.main --config configs/mnist_text_cpu.py --workdir /tmp/mnist_text
    python -m diffusion.main --config configs/mnist_text_cpu.py --workdir /tmp/mnist_text \\
        --mode sample --config.sample.prompt="a thick 3|a thin 3" --config.sample.guidance=3.0

The 1.1M-parameter network and run of `mnist_ddpm_cpu.py` with
`families.text_conditional`: captions from each digit's label and measured
thickness, slant and size ("a large thick 3 slanted to the left"), a CLIP-style
text encoder trained with the model, transformer blocks with cross-attention at
7x7 and in the middle. `--mode eval` (features=classifier) adds the per-attribute
agreement between each prompt and its sample (the same measuring functions).

Variants: `mnist_text_cpu.py:key=value,...` with the keys of `default.VARIANT_KEYS`.
"""
from configs import default
from configs import families
from configs import mnist_ddpm_cpu


def layers():
  """`mnist_ddpm_cpu.py`, then the text encoder, the captions and the guidance rows."""
  return families.stack(mnist_ddpm_cpu.layers(), families.text_conditional(),
                        families.guidance_eval())


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="mnist_text_cpu.py")
