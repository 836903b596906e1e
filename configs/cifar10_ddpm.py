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
(sigma_t^2 = beta_t). Each strided downsampling conv pads as TensorFlow's 'SAME'
(`model.downsample_padding=0`: bottom / right only), as their code does, so the
published weights (diffusers' google/ddpm-cifar10-32) run here unchanged
(`python -m diffusion.port`).

Variants: `cifar10_ddpm.py:key=value,...` with the keys of
`default.VARIANT_KEYS`, e.g. `:schedule=cosine`, `:sampler=ddim,steps=100,eta=0`.
"""
from configs import default
from configs import families


def layers():
  """CIFAR-10's data and DDPM (families), then the CIFAR-10 run's length and grids."""
  return families.stack(families.cifar10_data(), families.ddpm(), dict(
      model=dict(downsample_padding=0),
      train=dict(num_steps=800_000, log_every=100, ckpt_every=10_000, sample_every=50_000),
      sample=dict(num_samples=64)))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="cifar10_ddpm.py")
