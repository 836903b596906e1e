"""Class-conditional DDPM on CIFAR-10 with classifier-free guidance.

    python -m diffusion.main --config configs/cifar10_ddpm_cond.py --workdir /tmp/cifar_cond

`cifar10_ddpm.py` (Ho et al. 2020's network, process and run on TFDS "cifar10")
with its ten classes as the condition and label dropout 0.1 for classifier-free
guidance (`families.class_conditional`; Ho & Salimans 2022 train their ImageNet
models so). Grids one row per class at w = 2; `--mode eval` rows DDIM-50 at
w = 0, 1, 2, 4, 8 (`families.guidance_eval`).

Variants: `cifar10_ddpm_cond.py:key=value,...` with the keys of `default.VARIANT_KEYS`.
"""
from configs import cifar10_ddpm
from configs import default
from configs import families


def layers():
  """`cifar10_ddpm.py`, then the labels with dropout and the guidance table."""
  return families.stack(cifar10_ddpm.layers(), families.class_conditional(),
                        families.guidance_eval())


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="cifar10_ddpm_cond.py")
