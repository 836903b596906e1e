"""DDPM++ (continuous, VP SDE) on CIFAR-10: score_sde's `vp/cifar10_ddpmpp_continuous`.

    python -m diffusion.main --config configs/cifar10_ddpmpp_vp.py --workdir /tmp/ddpmpp

Sources of the numbers: Song et al. 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations" (ICLR), Appendix C/H, and their
`configs/default_cifar10_configs.py` + `configs/vp/cifar10_ddpmpp_continuous.py`:
- VP SDE beta_min 0.1, beta_max 20, continuous t ~ U[1e-5, 1], eps-style
  output (score = -out / std, no scale_by_sigma), DSM loss with lambda =
  sigma^2 (`weighting="sigma2"`; likelihood weighting off, as there);
- network: nf 128, ch_mult (1, 2, 2, 2), 4 ResBlocks per level, attention
  at 16x16, dropout 0.1, BigGAN-style up/down ResBlocks (`resblock_updown`),
  residual sums / sqrt(2) (`skip_rescale`), additive (not FiLM) time
  conditioning, positional embedding of 999 t (`time_scale=999`);
- Adam lr 2e-4, warmup 5000, grad clip 1, batch 128, EMA 0.9999, 1.3M steps,
  random flips;
- sampling: PC with the reverse-diffusion predictor + Langevin corrector,
  snr 0.16, 1000 steps, final time 1e-3 (the paper's PC1000; the released
  config file samples with `:predictor=euler_maruyama,corrector=none`).

Not representable by this UNet (so the parameter count differs from the
paper's ~62M): FIR resampling kernels, `init_scale=0` (zero-init of the last
convs), NCSN++'s progressive input/output paths. score_sde's VP data are
"centered" in [-1, 1], like ours.

Variants: `cifar10_ddpmpp_vp.py:key=value,...` with the keys of
`default.VARIANT_KEYS`.
"""
from configs import cifar10_ddpm, default


def score_sde_cifar10(config):
  """The settings shared by the DDPM++ (VP) and NCSN++ (VE) CIFAR-10 configs."""
  cifar10_ddpm.cifar10_data(config.data)

  config.model.ch = 128
  config.model.channel_mult = (1, 2, 2, 2)
  config.model.num_res_blocks = 4
  config.model.attention_resolutions = (16,)
  config.model.num_heads = 1
  config.model.dropout = 0.1
  config.model.resblock_updown = True
  config.model.resamp_with_conv = True
  config.model.scale_shift_norm = False
  config.model.skip_rescale = True
  config.model.fourier_scale = 16.0

  config.diffusion.type = "continuous"
  config.diffusion.prediction = "eps"
  config.diffusion.weighting = "sigma2"  # likelihood_weighting = False.
  config.diffusion.eps = 1e-5

  config.optim.optimizer = "adam"
  config.optim.lr = 2e-4
  config.optim.warmup_steps = 5000
  config.optim.grad_clip = 1.0

  config.train.num_steps = 1_300_000
  config.train.log_every = 100
  config.train.ckpt_every = 10_000
  config.train.sample_every = 50_000

  config.sample.method = "predictor_corrector"
  config.sample.predictor = "reverse_diffusion"
  config.sample.corrector = "langevin"
  config.sample.snr = 0.16
  config.sample.corrector_steps = 1
  config.sample.num_steps = 1000
  config.sample.num_samples = 64
  return config


def get_config(arg=None):
  config = score_sde_cifar10(default.get_config())
  config.model.embedding = "sinusoidal"
  config.model.time_scale = 999.0
  config.diffusion.sde = "vp"
  config.diffusion.beta_min = 0.1
  config.diffusion.beta_max = 20.0
  config.ema.decay = 0.9999
  config.sample.eps = 1e-3
  return default.apply_variant(config, arg, source="cifar10_ddpmpp_vp.py")
