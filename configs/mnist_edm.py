"""EDM on MNIST (28x28x1): `mnist_ddpm.py`'s data and network with EDM's process.

    python -m diffusion.main --config configs/mnist_edm.py --workdir /tmp/mnist_edm

Sources: the data, network, optimiser and length of `mnist_ddpm.py` (the DDPM
tutorials' 28x28 UNet, 40k steps of batch 128); the process, preconditioning, loss
and 18-step Heun sampler of Karras et al. 2022 (`families.edm_process`). EDM's
sigma_data = 0.5 is its CIFAR-10 value; MNIST in [-1, 1] has std ~0.62 (measured on
the training set), near enough that the preconditioning is kept as published.
The same UNet, with the sinusoidal embedding of c_noise = log(sigma) / 4
(time_scale 1), replaces DDPM's embedding of the integer step.

Variants: `mnist_edm.py:key=value,...` with the keys of `default.VARIANT_KEYS`.
"""
from configs import default
from configs import families
from configs import mnist_ddpm


def layers():
  """`mnist_ddpm.py`'s layers, then `families.edm_process`."""
  return families.stack(mnist_ddpm.layers(), families.edm_process())


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="mnist_edm.py")
