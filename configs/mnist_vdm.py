"""VDM on MNIST (28x28x1): `mnist_ddpm.py`'s data, network, optimiser and length with
VDM's learned schedule and continuous-time ELBO (`families.vdm_process`).

    python -m diffusion.main --config configs/mnist_vdm.py --workdir /tmp/mnist_vdm

The network is conditioned on gamma(t) = -log SNR(t) instead of the integer step;
no Fourier features (`:` overrides `--config.model.input_fourier="(7, 8)"` add them).
The loss is the ELBO in bits/dim (the likelihood itself), so its values are not
comparable with DDPM's eps-MSE.

Variants: `mnist_vdm.py:key=value,...` with the keys of `default.VARIANT_KEYS` plus
`gamma` (learned | linear | cosine).
"""
from configs import default
from configs import families
from configs import mnist_ddpm

VARIANT_KEYS = {**default.VARIANT_KEYS, "gamma": "diffusion.gamma"}


def layers():
  """`mnist_ddpm.py`'s layers, then `families.vdm_process` and `vdm_sampler`."""
  return families.stack(mnist_ddpm.layers(), families.vdm_process(), families.vdm_sampler())


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, VARIANT_KEYS,
                               source="mnist_vdm.py")
