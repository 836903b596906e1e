"""`digits_ddpm.py` conditioned on the digit (0..9) with classifier-free guidance.

    python -m diffusion.main --config configs/digits_ddpm_cond.py --workdir /tmp/digits_cond
    python -m diffusion.main --config configs/digits_ddpm_cond.py --workdir /tmp/digits_cond \\
        --mode sample --config.sample.labels=3,7 --config.sample.guidance=3.0

The quick start's network, process and run with `families.class_conditional`
(labels dropped to the null label at p = 0.1; grids one row per digit at w = 2)
and the guidance table's eval rows (`families.guidance_eval`).

Variants: `digits_ddpm_cond.py:key=value,...` with the keys of `default.VARIANT_KEYS`.
"""
from configs import default
from configs import digits_ddpm
from configs import families


def layers():
  """`digits_ddpm.py`, then the labels with dropout and the guidance table."""
  return families.stack(digits_ddpm.layers(), families.class_conditional(),
                        families.guidance_eval())


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="digits_ddpm_cond.py")
