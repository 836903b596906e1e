"""The DDPM paper's CIFAR-10 model (Ho et al. 2020), TFDS "cifar10".

    python -m diffusion.main --config configs/cifar10_ddpm.py --workdir /tmp/cifar10_ddpm

Sources of the numbers: Ho et al. 2020, "Denoising Diffusion Probabilistic
Models", Sec. 4 and Appendix B, and their released
`diffusion_tf/runners/run_cifar.py`: the 35.7M-parameter UNet (ch 128,
mult (1, 2, 2, 2), 2 ResBlocks per level, self-attention at 16x16, dropout
0.1 — exactly `UNet()`'s defaults: 35,746,307 parameters here), linear betas
1e-4 .. 0.02 with T = 1000, eps prediction with the simple (unweighted) loss,
Adam lr 2e-4 with 5000 warmup steps, batch 128, grad-norm clip 1, EMA 0.9999,
800k steps, random horizontal flips; samples with 1000 ancestral steps
(sigma_t^2 = beta_t).

Variants: `cifar10_ddpm.py:key=value,...` with the keys of
`default.VARIANT_KEYS`, e.g. `:schedule=cosine`, `:sampler=ddim,steps=100,eta=0`.
"""
from configs import default


def cifar10_data(data):
  """TFDS "cifar10" at 32x32x3, random flips, batch 128 (DDPM and score_sde alike)."""
  data.source = "tfds"
  data.name = "cifar10"
  data.data_dir = ""
  data.image_size = 32
  data.channels = 3
  data.random_flip = True
  data.dequantize = False
  data.batch_size = 128


def get_config(arg=None):
  config = default.get_config()

  cifar10_data(config.data)

  config.model.ch = 128
  config.model.channel_mult = (1, 2, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attention_resolutions = (16,)
  config.model.num_heads = 1
  config.model.dropout = 0.1
  config.model.resblock_updown = False
  config.model.scale_shift_norm = False
  config.model.skip_rescale = False
  config.model.embedding = "sinusoidal"

  config.diffusion.type = "discrete"
  config.diffusion.schedule = "linear"
  config.diffusion.num_steps = 1000
  config.diffusion.prediction = "eps"
  config.diffusion.weighting = "none"

  config.optim.optimizer = "adam"
  config.optim.lr = 2e-4
  config.optim.warmup_steps = 5000
  config.optim.schedule = "constant"
  config.optim.grad_clip = 1.0
  config.ema.decay = 0.9999
  config.ema.warmup = False

  config.train.num_steps = 800_000
  config.train.log_every = 100
  config.train.ckpt_every = 10_000
  config.train.sample_every = 50_000

  config.sample.method = "ddpm"
  config.sample.num_steps = 1000
  config.sample.variance = "beta"
  config.sample.num_samples = 64
  return default.apply_variant(config, arg, source="cifar10_ddpm.py")
