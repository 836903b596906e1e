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
from configs import families


PRESETS = {"ddpm": {"sampler": "ddpm", "steps": "1000"}}


def layers():
  """The digits family and a short CPU run, then this UNet's width, the schedule and the run."""
  return families.stack(families.digits_8x8(), families.short_cpu_run(), dict(
      data=dict(batch_size=128),
      model=dict(ch=32, channel_mult=(1, 2)),
      diffusion=dict(type="discrete", schedule="cosine", num_steps=1000, prediction="eps"),
      optim=dict(lr=2e-3, warmup_steps=100, decay_steps=1000, grad_clip=1.0),
      train=dict(num_steps=1000, sample_every=500, steps_per_call=1),
      # DDIM with 100 steps (short_cpu_run): ~5 s per grid here (ancestral 1000: ~55 s).
      sample=dict(num_samples=100, clip_denoised=True)))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, presets=PRESETS,
                               source="digits_ddpm.py")
