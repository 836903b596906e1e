"""DDPM on MNIST (28x28x1), the setting of the usual DDPM tutorials.

    python -m diffusion.main --config configs/mnist_ddpm.py --workdir /tmp/mnist
    python -m diffusion.main --config configs/mnist_ddpm.py:source=tfds --workdir /tmp/mnist

Sources of the numbers:
- Noise process: Ho et al. 2020 ("Denoising Diffusion Probabilistic Models",
  Sec. 4): linear betas 1e-4 .. 0.02, T = 1000, eps prediction, simple loss;
  Adam lr 2e-4, grad clip 1, EMA 0.9999 (here 0.9995: ~20x fewer steps).
- Network: the DDPM UNet scaled down for 28x28 as in the DDPM tutorials
  (e.g. Hugging Face's "The Annotated Diffusion Model", diffusers' MNIST /
  Fashion-MNIST examples): ch 64, levels 28/14/7 (mult (1, 2, 2)), 2 ResBlocks
  per level, self-attention at 14x14, dropout 0.1 (DDPM's CIFAR-10 value).
- Length: 40k steps of batch 128 (~85 epochs) — a choice, not from a paper.
- Sampling: 1000 ancestral DDPM steps (the paper); `:sampler=ddim,steps=100`
  is the fast variant.

Data: `source="files"` reads the MNIST idx files in
`diffusion.data.prepare.dataset_dir("mnist")` (``$DIFFUSION_DATA/mnist``, by
default ``~/.cache/diffusion/data/mnist``), where `python -m diffusion.data
prepare mnist` puts them; `--config.data.data_dir=/path/to/mnist` overrides
it. Variant `source=tfds` reads TFDS "mnist" instead (data_dir then "" =
TFDS's default directory).

Variants: `mnist_ddpm.py:key=value,...` with the keys of
`default.VARIANT_KEYS` plus `source` (files | tfds).
"""
from configs import default
from configs import families
from diffusion.data import prepare


def layers():
  """`families.ddpm_28x28`, then the MNIST idx files."""
  return families.stack(families.ddpm_28x28(), dict(
      data=dict(source="files", name="mnist", data_dir=prepare.dataset_dir("mnist"))))


def config_of(layers_, arg, source: str):
  """`layers_` resolved, with the variant `arg` (`default.VARIANT_KEYS` plus `source`:
  files | tfds; TFDS then reads its default directory). For MNIST files that share it
  (`mnist_ddpm_cond.py`); `source` names the file in errors."""
  config = families.resolve(layers_)
  default.apply_variant(config, arg, {**default.VARIANT_KEYS, "source": "data.source"},
                        source=source)
  if config.data.source == "tfds":
    config.data.data_dir = ""
  elif config.data.source != "files":
    raise ValueError(f"{source}: source={config.data.source!r}; valid: files, tfds")
  return config


def get_config(arg=None):
  return config_of(layers(), arg, "mnist_ddpm.py")
