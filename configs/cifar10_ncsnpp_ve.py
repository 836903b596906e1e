"""NCSN++ (continuous, VE SDE) on CIFAR-10: score_sde's `ve/cifar10_ncsnpp_continuous`.

    python -m diffusion.main --config configs/cifar10_ncsnpp_ve.py --workdir /tmp/ncsnpp

Sources of the numbers: Song et al. 2021 (score SDE, ICLR), Appendix C/H, and
their `configs/default_cifar10_configs.py` + `configs/ve/cifar10_ncsnpp_continuous.py`:
- VE SDE sigma_min 0.01, sigma_max 50, t ~ U[1e-5, 1]; DSM loss with lambda =
  sigma^2 (likelihood weighting off); the network output divided by sigma
  (`scale_by_sigma`) is our eps prediction, score = -eps / sigma;
- network: the settings shared with `cifar10_ddpmpp_vp.py` in
  `families.score_sde_cifar10` (nf 128, ch_mult (1, 2, 2, 2), 4 ResBlocks,
  attention at 16, dropout 0.1, BigGAN ResBlocks, skip_rescale) with a
  Gaussian Fourier embedding (scale 16) of log sigma: `embedding="fourier"`,
  and `train.make_apply_fn` then feeds the network sigma(t), not t;
- EMA 0.999 (VE); Adam lr 2e-4, warmup 5000, grad clip 1, batch 128, 1.3M steps;
- sampling: PC, reverse-diffusion predictor + Langevin corrector, snr 0.16,
  1000 steps, final time 1e-5 (score_sde's sampling_eps for VE).

Not representable by this UNet: FIR kernels, progressive "residual" input
path, init_scale=0. score_sde's VE data live in [0, 1] ("centered=False");
ours are in [-1, 1] (sigma_max = 50 still dominates the data's spread).

Variants: `cifar10_ncsnpp_ve.py:key=value,...` with the keys of
`default.VARIANT_KEYS`.
"""
from configs import default
from configs import families


def layers():
  """`families.score_sde_cifar10`, then the VE SDE with a Fourier embedding of log sigma."""
  return families.stack(families.score_sde_cifar10(), dict(
      model=dict(embedding="fourier", time_scale=1.0), diffusion=dict(sde="ve"),
      ema=dict(decay=0.999), sample=dict(eps=1e-5)))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="cifar10_ncsnpp_ve.py")
