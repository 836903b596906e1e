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

Data: `source="files"` reads the MNIST idx files in `../shared/data/mnist`
(relative to the repository root, resolved here to an absolute path);
`--config.data.data_dir=/path/to/mnist` overrides it. Variant `source=tfds`
reads TFDS "mnist" instead (data_dir then "" = TFDS's default directory).

Variants: `mnist_ddpm.py:key=value,...` with the keys of
`default.VARIANT_KEYS` plus `source` (files | tfds).
"""
import os

from configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "mnist"))


def ddpm_28x28(config):
  """The shared 28x28x1 DDPM settings of mnist_ddpm.py and fashion_mnist_ddpm.py."""
  config.data.image_size = 28
  config.data.channels = 1
  config.data.random_flip = False  # Digits / clothes are not mirror symmetric.
  config.data.dequantize = False
  config.data.batch_size = 128

  config.model.ch = 64
  config.model.channel_mult = (1, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attention_resolutions = (14,)
  config.model.num_heads = 1
  config.model.dropout = 0.1

  config.diffusion.type = "discrete"
  config.diffusion.schedule = "linear"
  config.diffusion.num_steps = 1000
  config.diffusion.prediction = "eps"

  config.optim.lr = 2e-4
  config.optim.warmup_steps = 1000
  config.optim.grad_clip = 1.0
  config.ema.decay = 0.9995

  config.train.num_steps = 40_000
  config.train.log_every = 100
  config.train.ckpt_every = 5000
  config.train.sample_every = 10_000

  config.sample.method = "ddpm"
  config.sample.num_steps = 1000
  config.sample.num_samples = 64
  return config


def get_config(arg=None):
  config = ddpm_28x28(default.get_config())
  config.data.source = "files"
  config.data.name = "mnist"
  config.data.data_dir = MNIST_DIR
  default.apply_variant(config, arg, {**default.VARIANT_KEYS, "source": "data.source"},
                        source="mnist_ddpm.py")
  if config.data.source == "tfds":
    config.data.data_dir = ""
  elif config.data.source != "files":
    raise ValueError(f"mnist_ddpm.py: source={config.data.source!r}; valid: files, tfds")
  return config
