"""EDM on CIFAR-10: Karras et al. 2022's unconditional DDPM++ setting ("config F").

    python -m diffusion.main --config configs/cifar10_edm.py --workdir /tmp/cifar10_edm

Sources of the numbers: Karras, Aittala, Aila, Laine 2022, "Elucidating the Design
Space of Diffusion-Based Generative Models" (NeurIPS), Table 1, Table 7 and
Appendix F.2, and their `train.py` defaults for `--arch=ddpmpp --precond=edm`:
- process, loss and sampler: `families.edm_process` (sigma 0.002 .. 80, sigma_data
  0.5, P_mean -1.2, P_std 1.2, Heun with 18 steps = 35 evaluations, rho 7);
- network (DDPM++): ch 128, channel_mult (2, 2, 2) for 32/16/8, 4 ResBlocks per
  level, attention at 16x16, dropout 0.13, up/down ResBlocks, residual sums /
  sqrt(2), positional embedding of c_noise (here the sinusoidal embedding of
  log(sigma)/4 with time_scale 1);
- optimiser: Adam lr 1e-3 (betas 0.9 / 0.999, eps 1e-8), linear ramp-up over 10 Mimg
  (19,531 steps at batch 512), no gradient clipping; batch 512; 200 Mimg =
  390,625 steps; EMA half-life 0.5 Mimg = 977 steps at batch 512, i.e. a constant
  rate 0.5^(1/977) = 0.99929; random flips.
Published: FID 1.97 (VP) with these settings, 50k samples (Table 2).

Not representable here: the non-leaking augmentation pipeline (probability 0.12,
with its augmentation labels), FIR resampling, the learned/zero init scales of
DDPM++, so the parameter count and FID will differ.

Variants: `cifar10_edm.py:key=value,...` with the keys of `default.VARIANT_KEYS`.
"""
from configs import default
from configs import families


def layers():
  """`families.cifar10_data` and `families.ddpm_unet` reshaped to DDPM++, `edm_process`,
  EDM's optimiser and length."""
  return families.stack(families.cifar10_data(), families.ddpm_unet(), families.edm_process(),
                        dict(
      data=dict(batch_size=512),
      model=dict(channel_mult=(2, 2, 2), num_res_blocks=4, dropout=0.13, resblock_updown=True,
                 skip_rescale=True),
      optim=dict(optimizer="adam", lr=1e-3, warmup_steps=19_531, schedule="constant",
                 grad_clip=0.0),
      ema=dict(decay=0.99929, warmup=False),
      train=dict(num_steps=390_625, log_every=100, ckpt_every=10_000, sample_every=50_000)))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="cifar10_edm.py")
