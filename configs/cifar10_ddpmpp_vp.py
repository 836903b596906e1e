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
All but the SDE, the embedding's time scale and the final sampling time are
shared with `cifar10_ncsnpp_ve.py`: `families.score_sde_cifar10`.

Not representable by this UNet (so the parameter count differs from the
paper's ~62M): FIR resampling kernels, `init_scale=0` (zero-init of the last
convs), NCSN++'s progressive input/output paths. score_sde's VP data are
"centered" in [-1, 1], like ours.

Variants: `cifar10_ddpmpp_vp.py:key=value,...` with the keys of
`default.VARIANT_KEYS`.
"""
from configs import default
from configs import families


def layers():
  """`families.score_sde_cifar10`, then the VP SDE with a positional embedding of 999 t."""
  return families.stack(families.score_sde_cifar10(), dict(
      model=dict(time_scale=999.0), diffusion=dict(sde="vp"), sample=dict(eps=1e-3)))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="cifar10_ddpmpp_vp.py")
