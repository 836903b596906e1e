"""VDM on CIFAR-10: Kingma et al. 2021's setting (the paper's Sec. 5 and App. B/H,
and `configs/cifar10.py` of their released code).

    python -m diffusion.main --config configs/cifar10_vdm.py --workdir /tmp/cifar10_vdm

Sources of the numbers:
- process and loss: `families.vdm_process` (learned monotone schedule from -13.3 to
  5, continuous-time ELBO over 256 bins, antithetic t, variance-minimising schedule
  gradient; the released config's default is instead a linear schedule with learned
  endpoints, `learnable_scalar`: `:gamma=linear` is its fixed-endpoint cousin);
- network: no downsampling, 32 ResBlocks of 128 channels at 32x32 down and 33 up
  (channel_mult (1,), num_res_blocks 32), the middle block's self-attention only,
  dropout 0.1, Fourier features of the input (2^n pi x for n = 7, 8 here = the
  released code's 2^n 2 pi x for n = 6, 7), random flips off (no augmentation);
- optimiser: AdamW lr 2e-4, betas 0.9 / 0.99, eps 1e-8, weight decay 0.01, 100 warmup
  steps, constant lr, no gradient clipping (none stated), batch 128, EMA 0.9999,
  10M steps.
Published: 2.65 bits/dim on the CIFAR-10 test set (Table 1, no augmentation).

Variants: `cifar10_vdm.py:key=value,...` with the keys of `default.VARIANT_KEYS`
plus `gamma` (learned | linear | cosine).
"""
from configs import default
from configs import families


def layers():
  """`families.cifar10_data` and `ddpm_unet` reshaped to VDM's, `vdm_process`, its optimiser."""
  return families.stack(families.cifar10_data(), families.ddpm_unet(), families.vdm_process(),
                        families.vdm_sampler(),
                        dict(
      data=dict(random_flip=False),
      model=dict(channel_mult=(1,), num_res_blocks=32, attention_resolutions=(),
                 input_fourier=(7, 8)),
      optim=dict(optimizer="adamw", lr=2e-4, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.01,
                 warmup_steps=100, schedule="constant", grad_clip=0.0),
      ema=dict(decay=0.9999, warmup=False),
      train=dict(num_steps=10_000_000, log_every=1000, ckpt_every=10_000, sample_every=100_000)))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg,
                               {**default.VARIANT_KEYS, "gamma": "diffusion.gamma"},
                               source="cifar10_vdm.py")
