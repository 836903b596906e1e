"""Per-family settings, layered on `configs/default.py` (as score_sde's
`configs/default_*_configs.py`), so that an experiment file states only what
differs from its family.

A layer is ``{section: {key: value}}`` with the sections and keys of
`default.get_config()` (e.g. ``dict(model=dict(ch=64), ema=dict(decay=0.999))``);
a family is a tuple of layers, applied in order. An experiment file's
``layers()`` is ``stack(family, ..., own layer)`` and its ``get_config`` starts
from ``resolve(layers())``. A later layer only states keys whose value differs
from the layers before it (tests/test_configs.py checks it).

The families and where their numbers come from:
- `cifar10_data`: TFDS "cifar10" as Ho et al. 2020 and Song et al. 2021 train on it.
- `ddpm_unet`, `ddpm_optimiser`, `ddpm_process` (together `ddpm`): Ho et al.
  2020's CIFAR-10 UNet, optimiser + EMA, and noise process + sampler.
- `score_sde_cifar10`: what DDPM++ (VP) and NCSN++ (VE) share in Song et al. 2021.
- `ddpm_28x28`: the DDPM tutorials' 28x28x1 setting (MNIST, Fashion-MNIST).
- `digits_8x8`: scikit-learn's 8x8 digits and a small UNet, chosen here.
- `short_cpu_run`: the optimiser, EMA, cadence and sampler of a short CPU run, tuned here.
- `edm_process`: Karras et al. 2022's process, preconditioning, loss and Heun sampler.
- `vdm_process`, `vdm_sampler`: Kingma et al. 2021's learned schedule and ELBO; its sampler.
- `nfe_comparison_eval`: the README's formulation x sampler x NFE table (issue 13).
- `class_conditional`: 10 classes trained with label dropout 0.1 for classifier-free
  guidance (Ho & Salimans 2022 found 0.1 - 0.2 best), grids one row per label.
- `guidance_eval`: the README's guidance table: DDIM-50 at w = 1, 2, 4, 8 (issue 15).
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from configs import default

Layer = Mapping[str, Mapping[str, Any]]
Family = tuple[Layer, ...]


def stack(*parts: Layer | Family) -> Family:
  """The layers of `parts` in order; each part is one layer or a family (a tuple of layers)."""
  layers: list[Layer] = []
  for part in parts:
    layers.extend(part if isinstance(part, tuple) else (part,))
  return tuple(layers)


def apply(config: ml_collections.ConfigDict, layer: Layer) -> ml_collections.ConfigDict:
  """Sets the keys of `layer` in `config` (in place; locked or not) and returns it.

  Raises:
    ValueError: a section or key that `configs/default.py` lacks, or a value
      whose type is not exactly the key's (no silent int -> float or list ->
      tuple conversion).
  """
  for section, values in layer.items():
    node = config.get(section)
    if not isinstance(node, ml_collections.ConfigDict):
      sections = sorted(k for k, v in config.items() if isinstance(v, ml_collections.ConfigDict))
      raise ValueError(f"layer section {section!r} is not a section of configs/default.py; "
                       f"valid: {', '.join(sections)}")
    for key, value in values.items():
      if key not in node:
        raise ValueError(f"layer key {section}.{key} is not in configs/default.py; "
                         f"valid keys of {section}: {', '.join(sorted(node))}")
      kind = node.get_type(key)
      if kind is ml_collections.ConfigDict and isinstance(value, dict):
        value = ml_collections.ConfigDict(value)  # A typed sub-dict (config.eval.samplers).
      if type(value) is not kind:
        raise ValueError(f"layer value {section}.{key}={value!r} is a {type(value).__name__}; "
                         f"configs/default.py's {section}.{key} is a {kind.__name__}")
      node[key] = value
  return config


def resolve(layers: Family) -> ml_collections.ConfigDict:
  """`default.get_config()` (locked) with `layers` applied in order."""
  config = default.get_config()
  for layer in layers:
    apply(config, layer)
  return config


def cifar10_data() -> Family:
  """TFDS "cifar10" at 32x32x3, random horizontal flips, batch 128 (DDPM and score_sde alike)."""
  return (dict(data=dict(
      source="tfds", name="cifar10", data_dir="", image_size=32, channels=3, random_flip=True,
      dequantize=False, batch_size=128)),)


def ddpm_unet() -> Family:
  """Ho et al. 2020's 35.7M-parameter CIFAR-10 UNet (App. B; `diffusion_tf/runners/run_cifar.py`).

  ch 128, mult (1, 2, 2, 2), 2 ResBlocks per level, self-attention (1 head) at
  16x16, dropout 0.1, conv resampling, plain ResBlocks, additive time
  conditioning with a sinusoidal embedding, no residual rescaling. The other
  families scale it (ch, channel_mult, attention_resolutions, ...).
  """
  return (dict(model=dict(
      ch=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
      num_heads=1, dropout=0.1, resblock_updown=False, resamp_with_conv=True,
      scale_shift_norm=False, skip_rescale=False, embedding="sinusoidal")),)


def ddpm_optimiser() -> Family:
  """Ho et al. 2020's optimiser (Appendix B and `run_cifar.py`), which score_sde keeps.

  Adam lr 2e-4, constant after 5000 linear warmup steps, global-norm clip 1;
  EMA 0.9999 without warmup (score_sde's `default_cifar10_configs.py`: the same).
  """
  return (dict(optim=dict(optimizer="adam", lr=2e-4, warmup_steps=5000, schedule="constant",
                          grad_clip=1.0),
               ema=dict(decay=0.9999, warmup=False)),)


def ddpm_process() -> Family:
  """Ho et al. 2020's noise process, loss and sampler (Sec. 4).

  Discrete time, linear betas 1e-4 .. 0.02 (schedule "linear"), T = 1000, eps
  prediction with the simple (unweighted) loss; 1000 ancestral sampling steps
  with sigma_t^2 = beta_t.
  """
  return (dict(diffusion=dict(type="discrete", schedule="linear", num_steps=1000,
                              prediction="eps", weighting="none"),
               sample=dict(method="ddpm", num_steps=1000, variance="beta")),)


def ddpm() -> Family:
  """Ho et al. 2020 (DDPM): `ddpm_unet`, `ddpm_optimiser`, `ddpm_process`."""
  return stack(ddpm_unet(), ddpm_optimiser(), ddpm_process())


def score_sde_cifar10() -> Family:
  """What DDPM++ (VP) and NCSN++ (VE) on CIFAR-10 share in Song et al. 2021.

  Sources: score_sde's `configs/default_cifar10_configs.py` and their
  continuous CIFAR-10 configs (Appendix C/H). The CIFAR-10 data, DDPM's UNet
  with 4 ResBlocks per level, BigGAN-style up/down ResBlocks and residual
  sums / sqrt(2) (Fourier scale 16 where the embedding is "fourier"), DDPM's
  optimiser; continuous t ~ U[1e-5, 1], eps output, DSM loss with lambda =
  sigma^2 (likelihood weighting off); the constants of both SDEs (VP beta
  0.1 .. 20, VE sigma 0.01 .. 50, as their default sets both); 1.3M steps;
  PC sampling (reverse-diffusion predictor + one Langevin step, snr 0.16),
  1000 steps. Each file picks the SDE, the time embedding, the EMA rate and
  the final sampling time.
  """
  return stack(cifar10_data(), ddpm_unet(), ddpm_optimiser(), dict(
      model=dict(num_res_blocks=4, resblock_updown=True, skip_rescale=True, fourier_scale=16.0),
      diffusion=dict(type="continuous", prediction="eps", weighting="sigma2", eps=1e-5,
                     beta_min=0.1, beta_max=20.0, sigma_min=0.01, sigma_max=50.0),
      train=dict(num_steps=1_300_000, log_every=100, ckpt_every=10_000, sample_every=50_000),
      sample=dict(method="predictor_corrector", predictor="reverse_diffusion",
                  corrector="langevin", snr=0.16, corrector_steps=1, num_steps=1000,
                  num_samples=64)))


def ddpm_28x28() -> Family:
  """The 28x28x1 DDPM of `mnist_ddpm.py` and `fashion_mnist_ddpm.py` (sources: mnist_ddpm.py).

  `ddpm` with the UNet scaled down as in the DDPM tutorials (ch 64, mult
  (1, 2, 2) for 28/14/7, attention at 14x14); unflipped, batch 128; warmup
  1000, EMA 0.9995 (~20x fewer steps than CIFAR-10) and 40k steps, choices
  of this project. Each file names its data source.
  """
  return stack(ddpm(), dict(
      # Digits / clothes are not mirror symmetric: no flips.
      data=dict(image_size=28, channels=1, random_flip=False, dequantize=False, batch_size=128),
      model=dict(ch=64, channel_mult=(1, 2, 2), attention_resolutions=(14,)),
      optim=dict(warmup_steps=1000),
      ema=dict(decay=0.9995),
      train=dict(num_steps=40_000, log_every=100, ckpt_every=5000, sample_every=10_000),
      sample=dict(num_samples=64),
      # Grayscale digits / clothes: the project's classifier is the FID feature
      # extractor (trained once per dataset and cached); Inception needs RGB photos.
      eval=dict(features="classifier")))


def digits_8x8() -> Family:
  """scikit-learn's 8x8 digits (offline) and a small UNet for them, chosen here (not from a paper).

  Data: source "digits", 8x8x1, no flips (digits are not mirror symmetric), no
  dequantisation. UNet: one ResBlock per level, no self-attention in the
  levels (only the middle block's), 1 head, no dropout. `digits_ddpm.py` and
  `smoke.py` add the width, depth, batch and run.
  """
  return (dict(data=dict(source="digits", name="digits", image_size=8, channels=1,
                         random_flip=False, dequantize=False),
               model=dict(num_res_blocks=1, attention_resolutions=(), num_heads=1, dropout=0.0),
               # The project's classifier as the FID features (trained once, cached);
               # digits have no test split: bits/dim on training images, as stated here.
               eval=dict(features="classifier", bpd_split="train")),)


def short_cpu_run() -> Family:
  """A short run on a CPU (`digits_ddpm.py`, `mnist_ddpm_cpu.py`), tuned here (not from a paper).

  Cosine lr decay to 1e-4 after the warmup (each file sets lr, warmup_steps and
  decay_steps); k-diffusion's EMA warmup (power 3/4) capped at 0.999; metrics
  every 50 steps, checkpoints every 500 (2 kept); DDIM grids with 100 steps, eta 0.
  """
  return (dict(optim=dict(schedule="cosine", end_lr=1e-4),
               ema=dict(decay=0.999, warmup=True, power=0.75),
               train=dict(log_every=50, ckpt_every=500, keep_checkpoints=2),
               sample=dict(method="ddim", num_steps=100, eta=0.0)),)


def edm_process() -> Family:
  """EDM's noise process, loss and deterministic sampler (Karras et al. 2022, Table 1 and
  Sec. 3/5): x = x0 + sigma z with sigma from 0.002 to 80, sigma_data 0.5, the
  preconditioned "F" network with c_noise = log(sigma) / 4, ln sigma ~ N(-1.2, 1.2^2)
  in training with the weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2; Heun's
  2nd-order sampler on the rho = 7 Karras grid, 18 steps (35 network evaluations).
  """
  return (dict(diffusion=dict(type="edm", prediction="F", weighting="edm", sigma_min=0.002,
                              sigma_max=80.0, sigma_data=0.5, p_mean=-1.2, p_std=1.2),
               sample=dict(method="edm_heun", num_steps=18, grid="karras", rho=7.0)),)


def vdm_process() -> Family:
  """VDM's noise process and loss (Kingma et al. 2021, Sec. 3-5 and App. H): the learned
  monotone gamma(t) = -log SNR(t) network with endpoints starting at -13.3 and 5
  (learned by the ELBO, its shape by the variance-minimising gradient), the
  continuous-time ELBO in bits/dim over 256 bins with low-discrepancy t, an eps
  network (the default prediction) given gamma(t), its sinusoidal embedding scaled by
  1000 / (5 + 13.3), as the paper's code embeds 1000 (gamma - gamma_min) / (gamma_max
  - gamma_min). `vdm_sampler` is the paper's sampler.
  """
  return (dict(model=dict(time_scale=1000.0 / 18.3),
               diffusion=dict(type="vdm", weighting="elbo", gamma="learned", gamma_min=-13.3,
                              gamma_max=5.0, elbo_steps=0, antithetic=True,
                              variance_gradient=True, num_bins=256)),)


def vdm_sampler() -> Family:
  """VDM's ancestral sampler: DDIM with eta = 1 on uniform times (the default 1000
  steps are the paper's T = 1000)."""
  return (dict(sample=dict(method="ddim", eta=1.0, grid="time")),)


# DDIM, EDM-Heun and DPM-Solver++(2M) at about 10, 20 and 50 network evaluations
# (Heun's N steps cost 2N - 1: 9, 19, 49), on the Karras grid in sigma space (DDIM on
# a discrete model walks its integer steps instead), and the probability-flow ODE.
NFE_SPECS = ("ddim:steps=10,eta=0", "ddim:steps=20,eta=0", "ddim:steps=50,eta=0",
             "edm_heun:steps=5", "edm_heun:steps=10", "edm_heun:steps=25",
             "dpmpp_2m:steps=10", "dpmpp_2m:steps=20", "dpmpp_2m:steps=50",
             "probability_flow:steps=50,ode_method=heun")


def nfe_comparison_eval() -> Family:
  """The README's comparison of formulations (`mnist_*_cpu.py`, on top of
  `mnist_ddpm_cpu.py`'s eval settings: 256 samples per row, the data row, bits/dim
  on 64 test images): the rows `NFE_SPECS`. Chosen here."""
  return (dict(eval=dict(specs=NFE_SPECS)),)



def class_conditional() -> Family:
  """Ten classes with the null label dropped in at p_uncond = 0.1 (Ho & Salimans 2022,
  Sec. 4: 0.1 and 0.2 did best on ImageNet 64), grids of labels 0..9 (one row each)
  with guidance w = 2."""
  return (dict(model=dict(num_classes=10), cond=dict(p_uncond=0.1),
               sample=dict(labels="0,1,2,3,4,5,6,7,8,9", guidance=2.0)),)


def guidance_eval() -> Family:
  """--mode eval rows of the guidance table: DDIM with 50 steps (eta 0) at w = 1
  (the conditional model), 2, 4 and 8, and w = 0 (the same network unconditional)."""
  return (dict(eval=dict(specs=tuple(f"ddim:steps=50,eta=0,guidance={w}"
                                     for w in ("0", "1", "2", "4", "8")))),)


def autoencoder() -> Family:
  """The latent-diffusion autoencoder's run (`diffusion.latent`): model.name
  "autoencoder" (model.ch / channel_mult / num_res_blocks; it has no dropout), grids
  of 32 images over their reconstructions; L1 + KL 1e-6 (configs/default.py's
  autoencoder section, the paper's values)."""
  return (dict(model=dict(name="autoencoder"), sample=dict(num_samples=64),
               eval=dict(bpd=False)),)


def text_conditional() -> Family:
  """A CLIP-style text encoder (width 64, 2 layers, 4 heads, 12 tokens) trained with the
  model on the attribute captions of `diffusion.data.captions` ("a thin 7 slanted to the
  right"), the empty prompt dropped in at p_uncond = 0.1, grids at guidance w = 2 (one
  row per prompt). Sizes chosen here for 8x8 / 28x28 digits on a CPU."""
  return (dict(text=dict(encoder="trained", captions="attributes", max_length=12),
               cond=dict(p_uncond=0.1), sample=dict(guidance=2.0),
               eval=dict(bpd=False)),)
