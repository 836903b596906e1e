"""DDPM on Fashion-MNIST (28x28x1) from TFDS "fashion_mnist".

    python -m diffusion.main --config configs/fashion_mnist_ddpm.py --workdir /tmp/fmnist

Every number is that of `configs/mnist_ddpm.py` (see its sources: Ho et al.
2020's noise process and optimiser, the DDPM tutorials' ch-64 (1, 2, 2) UNet
with attention at 14x14); Hugging Face's "The Annotated Diffusion Model" trains
on exactly this dataset. Only the data differ: TFDS "fashion_mnist", split
"train" (60,000 images), unflipped.

Variants: `fashion_mnist_ddpm.py:key=value,...` with the keys of
`default.VARIANT_KEYS`.
"""
from configs import default
from configs import families


def layers():
  """`families.ddpm_28x28`, then TFDS "fashion_mnist"."""
  return families.stack(families.ddpm_28x28(), dict(
      data=dict(source="tfds", name="fashion_mnist", data_dir="")))  # data_dir: TFDS's default.


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="fashion_mnist_ddpm.py")
