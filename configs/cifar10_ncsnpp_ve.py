"""NCSN++ (continuous, VE SDE) on CIFAR-10: score_sde's `ve/cifar10_ncsnpp_continuous`.

    python -m diffusion.main --config configs/cifar10_ncsnpp_ve.py --workdir /tmp/ncsnpp

Sources of the numbers: Song et al. 2021 (score SDE, ICLR), Appendix C/H, and
their `configs/default_cifar10_configs.py` + `configs/ve/cifar10_ncsnpp_continuous.py`:
- VE SDE sigma_min 0.01, sigma_max 50, t ~ U[1e-5, 1]; DSM loss with lambda =
  sigma^2 (likelihood weighting off); the network output divided by sigma
  (`scale_by_sigma`) is our eps prediction, score = -eps / sigma;
- network: the shared CIFAR-10 settings of `cifar10_ddpmpp_vp.py` (nf 128,
  ch_mult (1, 2, 2, 2), 4 ResBlocks, attention at 16, dropout 0.1, BigGAN
  ResBlocks, skip_rescale) with a Gaussian Fourier embedding (scale 16) of
  log sigma: `embedding="fourier"`, and `train.make_apply_fn` then feeds the
  network sigma(t), not t;
- EMA 0.999 (VE); Adam lr 2e-4, warmup 5000, grad clip 1, batch 128, 1.3M steps;
- sampling: PC, reverse-diffusion predictor + Langevin corrector, snr 0.16,
  1000 steps, final time 1e-5 (score_sde's sampling_eps for VE).

Not representable by this UNet: FIR kernels, progressive "residual" input
path, init_scale=0. score_sde's VE data live in [0, 1] ("centered=False");
ours are in [-1, 1] (sigma_max = 50 still dominates the data's spread).

Variants: `cifar10_ncsnpp_ve.py:key=value,...` with the keys of
`default.VARIANT_KEYS`.
"""
from configs import cifar10_ddpmpp_vp
from configs import default


def get_config(arg=None):
  config = cifar10_ddpmpp_vp.score_sde_cifar10(default.get_config())
  config.model.embedding = "fourier"
  config.model.time_scale = 1.0
  config.diffusion.sde = "ve"
  config.diffusion.sigma_min = 0.01
  config.diffusion.sigma_max = 50.0
  config.ema.decay = 0.999
  config.sample.eps = 1e-5
  return default.apply_variant(config, arg, source="cifar10_ncsnpp_ve.py")
