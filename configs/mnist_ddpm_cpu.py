"""`mnist_ddpm.py` scaled down to train in under an hour on a 2-core CPU.

    python -m diffusion.main --config configs/mnist_ddpm_cpu.py --workdir /tmp/mnist_cpu

The README's MNIST result table comes from this config (no accelerator was
available to the project when it was made). Same data (the real MNIST idx files
in ``../shared/data/mnist``), the same noise process (Ho et al. 2020: linear
betas 1e-4 .. 0.02, T = 1000, eps prediction, simple loss) and the same
samplers as `mnist_ddpm.py`. What is scaled down, and why:

- Network: ch 32 instead of 64, one ResBlock per level instead of two,
  self-attention at 7x7 instead of 14x14, no dropout (a 3-epoch run does not
  overfit): 1,112,801 parameters instead of 6.47M. Measured on the 2-core
  machine of ``benchmarks/README.md``: ~0.9 s per step of 64 images and ~250
  images/s in a forward pass (what sampling costs).
- Length: 3,000 steps of batch 64 (192k images, 3.2 epochs) instead of 40,000
  of batch 128 (85 epochs).
- Optimiser for a short run: lr 1e-3 (5x DDPM's 2e-4) after 200 warmup steps,
  cosine decay to 1e-4; EMA with k-diffusion's warmup (power 3/4) capped at
  0.999, so that the EMA averages the last few hundred steps, not 2000.
- Sample grids only at the end, with 100 DDIM steps (1000 ancestral steps of
  64 images cost ~4 minutes here).

Variants: `mnist_ddpm_cpu.py:key=value,...` with the keys of
`default.VARIANT_KEYS`.
"""
from configs import default
from configs import mnist_ddpm


def get_config(arg=None):
  config = mnist_ddpm.get_config()
  config.data.batch_size = 64

  config.model.ch = 32
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (7,)
  config.model.dropout = 0.0

  config.optim.lr = 1e-3
  config.optim.warmup_steps = 200
  config.optim.schedule = "cosine"
  config.optim.decay_steps = 3000
  config.optim.end_lr = 1e-4
  config.ema.decay = 0.999
  config.ema.warmup = True
  config.ema.power = 0.75

  config.train.num_steps = 3000
  config.train.log_every = 50
  config.train.ckpt_every = 500
  config.train.sample_every = 3000
  config.train.keep_checkpoints = 2

  config.sample.method = "ddim"
  config.sample.num_steps = 100
  config.sample.eta = 0.0
  config.sample.num_samples = 64
  return default.apply_variant(config, arg, source="mnist_ddpm_cpu.py")
