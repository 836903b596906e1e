"""A DDPM-trained UNet on Oxford Flowers 102 at 64x64, sampled with DDIM.

    python -m diffusion.main --config configs/flowers_ddim.py --workdir /tmp/flowers

Sources of the numbers:
- Data: TFDS "oxford_flowers102" at 64x64 with a central square crop, then a
  resize, and random flips — as in the Keras example "Denoising Diffusion
  Implicit Models" (A. Béres, keras.io/examples/generative/ddim), which
  trains on this dataset at this size. (That example trains on 80% of all
  three splits; here split "train" — pass another with --config.data.split.)
- Sampling: DDIM (Song, Meng & Ermon 2021) with 100 uniform-skip steps and
  eta = 0 (their Table 1 range 10..1000; 50 with `:steps=50`).
- Training: Ho et al. 2020's linear betas 1e-4 .. 0.02, T = 1000, eps loss,
  Adam 2e-4, warmup 5000, clip 1; the Keras example's EMA 0.999 and batch 64.
- Network: DDPM's 64x64 (CelebA-HQ/LSUN-style) UNet scaled to this budget — ch 64,
  mult (1, 2, 3, 4) for 64/32/16/8, 2 ResBlocks, attention at 16x16,
  dropout 0.1 — a choice, not from a paper. 200k steps is a choice too.

Variants: `flowers_ddim.py:key=value,...` with the keys of
`default.VARIANT_KEYS`, e.g. `:steps=50`, `:schedule=cosine`.
"""
from configs import default


def get_config(arg=None):
  config = default.get_config()

  config.data.source = "tfds"
  config.data.name = "oxford_flowers102"
  config.data.data_dir = ""
  config.data.split = "train"
  config.data.image_size = 64
  config.data.channels = 3
  config.data.crop = "center"
  config.data.random_flip = True
  config.data.dequantize = False
  config.data.batch_size = 64

  config.model.ch = 64
  config.model.channel_mult = (1, 2, 3, 4)
  config.model.num_res_blocks = 2
  config.model.attention_resolutions = (16,)
  config.model.num_heads = 1
  config.model.dropout = 0.1

  config.diffusion.type = "discrete"
  config.diffusion.schedule = "linear"
  config.diffusion.num_steps = 1000
  config.diffusion.prediction = "eps"

  config.optim.lr = 2e-4
  config.optim.warmup_steps = 5000
  config.optim.grad_clip = 1.0
  config.ema.decay = 0.999

  config.train.num_steps = 200_000
  config.train.log_every = 100
  config.train.ckpt_every = 10_000
  config.train.sample_every = 20_000

  config.sample.method = "ddim"
  config.sample.num_steps = 100
  config.sample.eta = 0.0
  config.sample.num_samples = 64
  return default.apply_variant(config, arg, source="flowers_ddim.py")
