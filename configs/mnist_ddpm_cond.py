"""Class-conditional DDPM on MNIST with classifier-free guidance (Ho & Salimans 2022).

    python -m diffusion.main --config configs/mnist_ddpm_cond.py --workdir /tmp/mnist_cond
    python -m diffusion.main --config configs/mnist_ddpm_cond.py --workdir /tmp/mnist_cond \\
        --mode sample --config.sample.labels=3,7 --config.sample.guidance=3.0

`mnist_ddpm.py` (its data, network, process and run) with the labels 0..9 as the
condition (a class embedding added to the time embedding; label 10 is the null
label), dropped to the null label for 10% of the training examples so that the
one network is also the unconditional model that guidance needs
(`families.class_conditional`). Grids: one row per digit at guidance w = 2;
`--mode eval` scores DDIM-50 at w = 0, 1, 2, 4, 8 (`families.guidance_eval`).

Variants: those of `mnist_ddpm.py` (`default.VARIANT_KEYS` plus `source`).
"""
from configs import families
from configs import mnist_ddpm


def layers():
  """`mnist_ddpm.py`, then the labels with dropout and the guidance table."""
  return families.stack(mnist_ddpm.layers(), families.class_conditional(),
                        families.guidance_eval())


def get_config(arg=None):
  return mnist_ddpm.config_of(layers(), arg, "mnist_ddpm_cond.py")
