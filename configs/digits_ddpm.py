"""The quick start: a small DDPM on scikit-learn's 8x8 digits, offline, on CPU.

    python -m diffusion.main --config configs/digits_ddpm.py --workdir /tmp/digits

A 651k-parameter UNet (ch 32, two levels 8x8 / 4x4, attention only in the
middle), 1,000 Adam steps of batch 128 with a cosine lr decay and warmed-up
EMA, cosine noise schedule with T = 1000. Sample grids (100 digits, DDIM with
100 steps, EMA params) at steps 500 and 1000.

Numbers: chosen and tuned here for 8x8 digits on a CPU (not from a paper);
the schedule is Nichol & Dhariwal (2021)'s cosine, the EMA warmup k-diffusion's.

Variants (`configs.default.apply_variant`, keys `default.VARIANT_KEYS`):
`digits_ddpm.py:ddpm` (a preset) samples with 1000 ancestral DDPM steps
instead (~1 minute per grid on 2 cores); `digits_ddpm.py:sampler=ddim,steps=20`,
`digits_ddpm.py:schedule=linear,sampler=euler_maruyama`, ... change the named keys.
"""
from configs import default


PRESETS = {"ddpm": {"sampler": "ddpm", "steps": "1000"}}


def get_config(arg=None):
  config = default.get_config()

  config.data.source = "digits"
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.channels = 1
  config.data.random_flip = False
  config.data.dequantize = False
  config.data.batch_size = 128

  config.model.ch = 32
  config.model.channel_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = ()
  config.model.num_heads = 1
  config.model.dropout = 0.0

  config.diffusion.type = "discrete"
  config.diffusion.schedule = "cosine"
  config.diffusion.num_steps = 1000
  config.diffusion.prediction = "eps"

  config.optim.lr = 2e-3
  config.optim.warmup_steps = 100
  config.optim.schedule = "cosine"
  config.optim.decay_steps = 1000
  config.optim.end_lr = 1e-4
  config.optim.grad_clip = 1.0

  config.ema.decay = 0.999
  config.ema.warmup = True
  config.ema.power = 0.75

  config.train.num_steps = 1000
  config.train.log_every = 50
  config.train.ckpt_every = 500
  config.train.sample_every = 500
  config.train.keep_checkpoints = 2
  config.train.steps_per_call = 1

  config.sample.method = "ddim"  # 100 steps: ~5 s per grid here (ancestral 1000: ~55 s).
  config.sample.num_steps = 100
  config.sample.eta = 0.0
  config.sample.num_samples = 100
  config.sample.clip_denoised = True

  return default.apply_variant(config, arg, presets=PRESETS, source="digits_ddpm.py")
