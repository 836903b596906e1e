"""Every configuration key, with its default and meaning.

Experiment files (`configs/digits_ddpm.py`, `configs/smoke.py`, ...) start from
`get_config()` with the layers of their families (`configs/families.py`: the
settings of DDPM, score SDE, the 28x28 and 8x8 data, ...) and their own on top,
each stating only what differs. The config comes back locked (and
`diffusion.main` locks again), so a typo'd key in an experiment file or in a
`--config.a.b=value` override fails instead of being ignored; values can
still be changed. `diffusion.experiment.validate_config` checks them.

Keys whose default is "unset" are `config_dict.placeholder(type)`: None until
given, typed so that command-line overrides still parse.

Variants: every experiment file takes `file.py:key=value,key=value` and hands
the string to `apply_variant` with the short keys it allows (`VARIANT_KEYS`
unless it says otherwise), e.g. ``cifar10_ddpm.py:schedule=cosine,sampler=ddim,steps=50``.
A bare word (no "=") names a preset of the file (``digits_ddpm.py:ddpm``).
"""
from __future__ import annotations

from typing import Mapping

import ml_collections
from ml_collections import config_dict

from diffusion.core import checks
from diffusion.core.samplers import registry

# Short variant keys -> dotted config keys (the default `allowed` of apply_variant).
VARIANT_KEYS = {
    "schedule": "diffusion.schedule",
    "prediction": "diffusion.prediction",
    "weighting": "diffusion.weighting",
    "sde": "diffusion.sde",
    "sampler": "sample.method",
    "steps": "sample.num_steps",
    "eta": "sample.eta",
    "predictor": "sample.predictor",
    "corrector": "sample.corrector",
    "snr": "sample.snr",
    "batch": "data.batch_size",
    "lr": "optim.lr",
    "train_steps": "train.num_steps",
    "seed": "seed",
}

def _convert(text: str, kind: type, key: str):
  """`text` as the type `kind` of config key `key`; ValueError names both."""
  try:
    return checks.parse_value(text, kind)
  except ValueError as e:
    raise ValueError(f"variant value {text!r} for {key} {e}") from None


def apply_variant(config: ml_collections.ConfigDict, arg: str | None,
                  allowed: Mapping[str, str] | None = None,
                  presets: Mapping[str, Mapping[str, str]] | None = None,
                  source: str = "this config") -> ml_collections.ConfigDict:
  """Applies ``arg = "key=value,key=value"`` (or preset names) to `config` in place.

  Args:
    config: the experiment's config (locked or not).
    arg: the `file.py:arg` string; None or "" changes nothing.
    allowed: short key -> dotted config key (default `VARIANT_KEYS`). Values
      are converted to the type of the config key (int, float, str, bool).
    presets: bare words -> ``{short key: value}`` applied as if spelled out.
    source: the file name, for error messages.

  Returns:
    `config` (the same object).

  Raises:
    ValueError: an unknown key or preset (the message lists the valid ones), an
      item without "=", a key given twice, or a value of the wrong type.
  """
  allowed = VARIANT_KEYS if allowed is None else allowed
  presets = presets or {}
  if not arg:
    return config
  items: list[tuple[str, str]] = []
  for item in arg.split(","):
    item = item.strip()
    if "=" in item:
      key, value = item.split("=", 1)
      items.append((key.strip(), value.strip()))
    elif item in presets:
      items.extend(presets[item].items())
    else:
      valid = ", ".join(sorted(presets)) or "none"
      raise ValueError(f"bad variant item {item!r} of {source}: expected key=value with key one "
                       f"of {', '.join(sorted(allowed))}, or a preset ({valid})")
  seen = set()
  for key, value in items:
    if key not in allowed:
      raise ValueError(f"unknown variant key {key!r} of {source}; valid keys: "
                       f"{', '.join(sorted(allowed))}")
    if key in seen:
      raise ValueError(f"variant key {key!r} given twice in {arg!r}")
    seen.add(key)
    *parents, leaf = allowed[key].split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = _convert(value, node.get_type(leaf), allowed[key])
  return config


def get_config(arg=None):
  """The defaults: a DDPM on CIFAR-10-sized images (overridden per experiment).

  Args:
    arg: unused; experiment files take a variant string (`file.py:variant`).
  """
  del arg
  config = ml_collections.ConfigDict()

  config.seed = 0  # Seeds params init, per-step rngs, data order and samples.
  # Resume in a workdir whose config.json differs in keys other than those in
  # train.RESUMABLE_KEYS (train length, logging cadence, sampling, wandb).
  config.allow_config_change = False

  # ------------------------------------------------------------------ data
  config.data = data = ml_collections.ConfigDict()
  data.source = "digits"  # "digits" (sklearn, offline) | "files" | "tfds".
  data.name = "digits"  # Dataset name: a label for "digits"/"files", the TFDS name for "tfds".
  # source="files": a directory of MNIST idx files (train-images-idx3-ubyte[.gz],
  # ...-labels-idx1-ubyte[.gz]) or an .npz file with key "image" (or "x") and
  # optionally "label" (or "y"). Unused for "digits".
  data.data_dir = ""
  data.split = "train"  # "train" | "test" (MNIST idx: t10k-*); digits/npz have one split.
  # H = W of the images; larger stored images are (cropped, see below, and) shrunk to it, never enlarged.
  data.image_size = 32
  data.channels = 3  # C of the images; gray <-> RGB is converted, anything else is an error.
  # "none" | "center": crop the largest central square before resizing to
  # image_size (tfds / image folders with non-square images, e.g. oxford_flowers102).
  data.crop = "none"
  # Pixels of value 0 (black) added on every side after fitting to image_size - 2 pad
  # (MNIST's 28x28 -> 32x32 with image_size=32, pad=2: even sizes down to 8x8 latents).
  data.pad = 0
  data.random_flip = False  # Random horizontal flips (off for digits: they are not symmetric).
  # Uniform dequantisation: x = (k + u) / levels, u ~ U[0, 1), for the integer
  # pixel value k out of `levels` (17 for digits, 256 for uint8); otherwise
  # x = k / (levels - 1). Either way mapped to [-1, 1].
  data.dequantize = False
  data.batch_size = 128  # Global batch size (all devices and hosts together).

  # ----------------------------------------------------------------- model
  config.model = model = ml_collections.ConfigDict()
  model.name = "unet"  # A key of diffusion.models.MODELS ("unet" | "autoencoder").
  model.ch = 128  # Base channels; level i has ch * channel_mult[i].
  model.channel_mult = (1, 2, 2, 2)  # Per-level multipliers; len = number of levels.
  model.num_res_blocks = 2  # ResBlocks per level on the way down (+1 up).
  model.attention_resolutions = (16,)  # Feature-map heights with self-attention.
  model.num_heads = 1  # Attention heads (must divide the channels there).
  model.dropout = 0.1  # Dropout in ResBlocks during training.
  model.resblock_updown = False  # Resample inside ResBlocks (BigGAN/ADM style).
  model.resamp_with_conv = True  # Conv resampling (else avg-pool / nearest).
  # Padding of the strided downsampling conv: 1 = one pixel on every side; 0 =
  # bottom / right only (TF 'SAME', the DDPM paper's code and its published weights).
  model.downsample_padding = 1
  model.scale_shift_norm = False  # FiLM conditioning (ADM) instead of additive.
  model.skip_rescale = False  # Residual sums / sqrt(2) (DDPM++).
  # "sinusoidal" (of time_scale * t) | "fourier" (of log sigma(t); for VE SDEs:
  # the network is then given the noise level, not the time).
  model.embedding = "sinusoidal"
  # Multiplier on t before the sinusoidal embedding: 1 for discrete steps
  # 0..T-1, ~1000 for continuous t in [0, 1].
  model.time_scale = 1.0
  model.fourier_scale = 16.0  # Std of the fixed Fourier frequencies ("fourier" only).
  # Fourier features of the input (VDM): sin / cos(2^n pi x) for each n, as extra
  # input channels; () = off. VDM's CIFAR-10 uses (7, 8).
  model.input_fourier = ()
  model.num_classes = config_dict.placeholder(int)  # None: unconditional; else labels 0..n-1.
  # Text models (text.encoder != "none"): transformer blocks (self-attention,
  # cross-attention to the text tokens, feed-forward) per attention resolution.
  model.transformer_depth = 1

  # ------------------------------------------------------------------ cond
  # Conditioning: class labels (model.num_classes) or text (the text section).
  config.cond = cond = ml_collections.ConfigDict()
  # Classifier-free guidance training (Ho & Salimans 2022): the fraction of
  # examples whose condition is replaced by the null one (the null label
  # num_classes, or the empty prompt), so the one network is also unconditional.
  # 0 = never (then config.sample.guidance must stay 1). Typical: 0.1.
  cond.p_uncond = 0.0

  # ------------------------------------------------------------------ text
  # Text conditioning: captions -> tokenizer -> text encoder -> token embeddings
  # [B, L, width] -> the UNet's cross-attention (with the padding mask).
  config.text = text = ml_collections.ConfigDict()
  # "none" | "trained" (a CLIP-style causal Transformer trained with the model) |
  # "clip" (a frozen pretrained CLIP text encoder: clip_weights, vocab_file, merges_file).
  text.encoder = "none"
  # Where captions come from: "attributes" (digits / MNIST: the label and the stroke
  # thickness, slant and size measured on each image, diffusion.data.captions) |
  # "files" (image folders: a .txt beside each image, or a captions.jsonl).
  text.captions = "attributes"
  text.max_length = 16  # Tokens per caption (bos + words + eos, padded).
  # encoder="trained": the word vocabulary's size (specials + the most frequent words of
  # the training captions; the rest read as <unk>).
  text.vocab_size = 1000
  text.width = 64  # encoder="trained": width D of the token embeddings ...
  text.num_layers = 2  # ... Transformer layers ...
  text.num_heads = 4  # ... and attention heads.
  # encoder="clip": the .npz of `python -m diffusion.models.text_encoder --convert`
  # and CLIP's BPE files (vocab.json, merges.txt).
  text.clip_weights = ""
  text.vocab_file = ""
  text.merges_file = ""

  # ----------------------------------------------------------- autoencoder
  # model.name="autoencoder": a KL-regularised VAE for latent diffusion (diffusion/latent.py),
  # with model.ch, model.channel_mult (f = 2 ** (len - 1)) and model.num_res_blocks.
  config.autoencoder = ae = ml_collections.ConfigDict()
  ae.latent_channels = 4  # Channels of the latents [H/f, W/f, latent_channels].
  ae.attention = False  # Self-attention in the middle of the encoder and the decoder.
  ae.loss = "l1"  # Reconstruction loss per pixel: "l1" | "l2".
  # Weight of the posterior's KL to N(0, I) per pixel (the latent-diffusion code's
  # kl_weight: 1e-6 there; larger values trade reconstruction for smoother latents).
  ae.kl_weight = 1e-6
  # Patch discriminator (hinge loss) from step disc_start on; 0 = no discriminator.
  ae.disc_weight = 0.0
  ae.disc_start = 0
  ae.disc_ch = 32  # Its first layer's width (doubled per layer, at most 8x) ...
  ae.disc_layers = 2  # ... and its stride-2 layers.
  ae.scale_num = 1024  # Training images whose latents' std gives the scale factor 1 / std.
  ae.eval_split = "test"  # Split of the reconstruction PSNR / MSE written at each checkpoint ...
  ae.eval_num = 512  # ... on this many images.

  # ---------------------------------------------------------------- latent
  # Latent diffusion: the model denoises the latents of a trained autoencoder.
  config.latent = latent = ml_collections.ConfigDict()
  # A workdir of a model.name="autoencoder" run ("" = a pixel-space model). Its
  # image size and channels must be config.data's; the latents are cached in
  # this run's workdir/latents/ and the samples decoded.
  latent.autoencoder_workdir = ""
  latent.checkpoint_step = config_dict.placeholder(int)  # Its step (None: the newest).
  latent.scale_factor = 0.0  # Latents are multiplied by it; 0 = the autoencoder's 1 / std.

  # ------------------------------------------------------------- diffusion
  config.diffusion = diff = ml_collections.ConfigDict()
  # "discrete" (DDPM, integer t) | "continuous" (score SDE, t in [0, 1]) | "edm"
  # (Karras et al. 2022: sigma_min .. sigma_max below, preconditioned "F" network) |
  # "vdm" (Kingma et al. 2021: the ELBO, gamma schedule below, eps prediction).
  diff.type = "discrete"
  diff.schedule = "linear"  # Discrete betas: a key of schedules.SCHEDULES (linear, cosine, ...).
  diff.num_steps = 1000  # T, discrete only.
  # Network output: "eps" | "x0" | "v" (+ "score" if continuous); "F" for edm.
  diff.prediction = "eps"
  # Discrete: "none" | "min_snr"; continuous: "sigma2" | "likelihood"; edm: "edm";
  # vdm: "elbo".
  diff.weighting = "none"
  diff.min_snr_gamma = 5.0  # gamma of the min-SNR weighting.
  diff.sde = "vp"  # Continuous only: "vp" | "subvp" | "ve".
  diff.beta_min = 0.1  # VP / sub-VP beta(0).
  diff.beta_max = 20.0  # VP / sub-VP beta(1).
  diff.sigma_min = 0.01  # VE sigma(0); edm: the smallest sampling sigma (0.002).
  diff.sigma_max = 50.0  # VE sigma(1); edm: the prior's sigma (80).
  diff.sigma_data = 0.5  # edm: the data std of the preconditioning.
  diff.p_mean = -1.2  # edm: ln sigma ~ N(p_mean, p_std^2) in training.
  diff.p_std = 1.2
  # vdm: gamma(t) = -log SNR(t): "linear" | "cosine" (fixed, from gamma_min to
  # gamma_max) | "learned" (the paper's monotone network; endpoints start there).
  diff.gamma = "learned"
  diff.gamma_min = -13.3
  diff.gamma_max = 5.0
  diff.gamma_width = 1024  # vdm learned: the monotone network's hidden units.
  diff.elbo_steps = 0  # vdm: 0 = the continuous-time ELBO; T > 0 its T-step discrete-time form.
  # vdm learned: the schedule's shape minimises the loss estimate's variance (the
  # paper's gradient; its endpoints and the network follow the ELBO).
  diff.variance_gradient = True
  diff.num_bins = 256  # vdm: levels of the data (the discretised decoder's bins).
  diff.eps = 1e-5  # Continuous: smallest training time t (t ~ U[eps, 1]).
  diff.antithetic = False  # Continuous: low-discrepancy times over the batch.

  # ----------------------------------------------------------------- optim
  # Read by diffusion.train.state.make_optimizer / lr_schedule.
  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = "adam"  # "adam" | "adamw".
  optim.lr = 2e-4  # Peak learning rate.
  optim.beta1 = 0.9
  optim.beta2 = 0.999
  optim.eps = 1e-8
  optim.weight_decay = 0.0  # adamw: decoupled; adam: coupled L2; 0 = off.
  optim.warmup_steps = 5000  # Linear warmup from 0 to lr.
  optim.schedule = "constant"  # "constant" | "cosine" (after warmup).
  optim.decay_steps = 0  # Cosine: step at which lr reaches end_lr (warmup included).
  optim.end_lr = 0.0  # Cosine: final learning rate.
  optim.grad_clip = 1.0  # Global-norm clipping threshold; 0 = off.

  # ------------------------------------------------------------------- ema
  # Read by diffusion.train.state.ema_decay.
  config.ema = ema = ml_collections.ConfigDict()
  ema.decay = 0.9999  # EMA rate (the cap of the warmed-up rate if warmup).
  ema.warmup = False  # k-diffusion warmup: rate = 1 - (1 + s / inv_gamma) ** -power.
  ema.inv_gamma = 1.0  # Warmup step scale.
  ema.power = 0.75  # Warmup growth (2/3 long runs, 3/4 short ones).
  ema.start_step = 0  # Before this step the EMA copies the params.

  # ----------------------------------------------------------------- train
  config.train = train = ml_collections.ConfigDict()
  train.num_steps = 800_000  # Total optimizer steps (resuming continues up to it).
  train.log_every = 100  # Steps between rows of metrics.jsonl (mean over the steps).
  train.ckpt_every = 10_000  # Steps between checkpoints (one is also saved at the end).
  train.sample_every = 50_000  # Steps between sample grids (also at the end); 0 = never.
  train.keep_checkpoints = 3  # Orbax max_to_keep.
  train.parallel = "jit"  # "jit" (jit + shard_map) | "pmap": both data parallel.
  # Steps per compiled call (lax.scan); every *_every and num_steps must be
  # multiples of it.
  train.steps_per_call = 1
  train.precision = "float32"  # Activations: "float32" | "bfloat16" (params stay float32).

  # ---------------------------------------------------------------- sample
  config.sample = sample = ml_collections.ConfigDict()
  # A sampler of diffusion.core.samplers.registry: "ddpm" | "ddim" (discrete
  # steps) | "euler_maruyama" | "predictor_corrector" | "probability_flow"
  # (continuous t; a discrete model with diffusion.schedule="linear" takes them
  # too, via the VP SDE of its betas). Its options are the keys below, one per
  # field of the samplers' options dataclasses (their docstrings say what each
  # means): num_steps, eta, variance, clip_denoised, predictor, corrector, snr,
  # corrector_steps, ode_method, eps. A sampler registered by your own module
  # adds its own.
  sample.method = "ddpm"
  for key, value in registry.config_defaults().items():
    sample[key] = value
  # Images per grid while training; --mode sample: the number N written to the
  # .npz (its first min(N, grid_size) form the PNG grid and the GIF).
  sample.num_samples = 64
  sample.batch_size = 64  # --mode sample: images per sampler call (chunks of N).
  sample.grid_size = 64  # --mode sample: images in the grid PNG / reverse-process GIF.
  sample.gif_frames = 50  # --mode sample: GIF frames (subsampled from the sampler steps).
  sample.checkpoint_step = config_dict.placeholder(int)  # --mode sample: None = latest.
  # Conditional models. labels: "3,7" = N / 2 samples of each (one grid row per
  # label); "" = the labels 0..num_classes-1 cycled.
  sample.labels = ""
  # Classifier-free guidance weight w: eps_u + w (eps_c - eps_u); 1 = the conditional
  # model, 0 = the unconditional one (core/guidance.py).
  sample.guidance = 1.0
  # "lo,hi": apply w only where sigma / alpha lies in (lo, hi] (Kynkaenniemi et al.
  # 2024); elsewhere w = 1. "" = every step.
  sample.guidance_interval = ""
  # --mode sample: "1,2,4,8" writes instead one labelled figure, rows = labels /
  # prompts, a block of columns per w, the same noise in every block.
  sample.guidance_sweep = ""
  # Text models: prompts separated by "|" (one grid row each), or a file of prompts,
  # one per line; both "": the training captions' first prompts.
  sample.prompt = ""
  sample.prompts_file = ""
  # Classifier guidance (Dhariwal & Nichol 2021): a noise-aware classifier written by
  # `python -m diffusion.classify --noisy` and its gradient scale s (0 = off).
  sample.classifier_path = ""
  sample.classifier_scale = 0.0

  # ------------------------------------------------------------------ eval
  # --mode eval (diffusion/modes/eval.py): FID / KID / IS per sampler, bits/dim.
  config.eval = ev = ml_collections.ConfigDict()
  # The samplers to evaluate, as typed entries: config.eval.samplers.<name> =
  # dict(method="ddim", num_steps=50, eta=0.0) (a method of the sampler registry
  # and any of its options; unset options come from config.sample).
  ev.samplers = ml_collections.ConfigDict()
  # The same as spec strings "name[:key=value,...]" (command-line shorthand),
  # e.g. "ddpm", "ddim:steps=50,eta=0", "probability_flow:steps=100,ode_method=heun";
  # keys are the options' fields or the short steps / clip (diffusion/eval/entries.py).
  # Both empty: the sampler of config.sample.
  ev.specs = ()
  ev.num_samples = 50_000  # Samples per sampler (N).
  ev.batch_size = 500  # Images per sampler / feature-extractor / bits-per-dim call.
  ev.features = "inception"  # "inception" (FID Inception-v3) | "classifier" (diffusion.classify).
  # features="classifier": a directory written by classify.save; "" = the project's
  # classifier of this dataset, trained once (classifier_steps) and cached in
  # $DIFFUSION_DATA/classifiers/ (eval.features.resolve_defaults).
  ev.classifier_path = ""
  ev.classifier_steps = 2000
  # features="inception": an .npz for models.inception.load_params ("" =
  # $DIFFUSION_DATA/inception/inception_fid.npz).
  ev.inception_weights = ""
  # Cached reference statistics ("" = workdir/eval/reference_<features>_<split>.npz).
  ev.reference_stats = ""
  ev.reference_split = "train"  # Split the reference statistics come from.
  ev.reference_num = 0  # Reference images: 0 = every image of the split, else the first n.
  # Feature vectors held in memory per set for KID and precision/recall (O(n^2)).
  ev.kept_features = 5_000
  ev.kid_subsets = 100  # KID: random subsets ...
  ev.kid_subset_size = 1000  # ... of this many vectors (at most the kept ones).
  ev.is_splits = 10  # Inception Score splits (at most N).
  # A first row "data:<split>": eval.num_samples real images of this split scored
  # like samples (each metric's floor at this N); "" = no such row.
  ev.baseline_split = ""
  # Score samples (and the data row) quantised to 256 levels, as the published
  # protocol does (FID of uint8 image files); False scores the float samples.
  ev.quantize = True
  ev.bpd = True  # Bits/dim once per model (DDPM bound if discrete, ODE if continuous).
  ev.bpd_num = 1000  # Images of bpd_split for bits/dim.
  ev.bpd_split = "test"  # "train" | "test".

  # ------------------------------------------------------------------ edit
  # --mode edit (diffusion/modes/edit.py): applications of a trained model to given
  # images, with the sampler of config.sample (and its guidance); results under
  # workdir/edit/<task>[-2, ...]/.
  config.edit = ed = ml_collections.ConfigDict()
  # "inpaint" | "img2img" (SDEdit) | "invert" (DDIM inversion, then regeneration under
  # edit.labels / edit.prompt) | "denoise" | "anomaly" (per-image scores).
  ed.task = "inpaint"
  ed.name = ""  # The output folder's name under workdir/edit/ ("": the task's).
  # The images: an image file, a folder of them, or an .npz ("images" or "arr_0";
  # optional "label" [N] and, for anomaly, "anomaly" [N] of 0 / 1). The model's exact
  # size and channels; pixels in [0, 255] (files, uint8) or [-1, 1] (float npz).
  ed.input = ""
  ed.num = 0  # Use the first n images (0: all).
  ed.batch_size = 64  # Images per compiled call.
  ed.grid_size = 16  # Images in the side-by-side figure (input | mask or noise | result).
  # inpaint: "half" (the bottom half generated) | "box" (a centred square) | "strokes"
  # (seeded random strokes, one mask per image) | a black-and-white PNG (white = keep).
  ed.mask = "half"
  ed.inpaint_method = "replace"  # "replace" (any sampler) | "repaint" (discrete models).
  ed.jump_length = 10  # repaint: levels per resampling jump ...
  ed.jump_n_sample = 10  # ... and passes over each (1 = the replacement method on DDPM).
  ed.strength = 0.5  # img2img: SDEdit's start time s in (0, 1] (1: a fresh sample).
  # img2img / invert on conditional models: the target labels ("3" or "3,7", cycled
  # over the images) or prompts ("a|b", cycled); "": unconditional (the null condition).
  ed.labels = ""
  ed.prompt = ""
  # invert: the condition of the inversion (labels "" = the npz's "label" if any, else the
  # null condition; prompt "" = the empty prompt), and its DDIM steps (0: sample.num_steps).
  ed.source_labels = ""
  ed.source_prompt = ""
  ed.invert_steps = 0
  # denoise: the input's noise std in [-1, 1] units (0: estimated per image from its
  # finest wavelet band); with add_noise the input is clean and that noise is added
  # first (then PSNR against the clean images is reported).
  ed.sigma = 0.0
  ed.add_noise = False
  ed.denoise_method = "tweedie"  # "tweedie" (one step, E[x | y]) | "reverse" (the sampler from sigma).
  # anomaly: scores among "reconstruction" (noised to each of recon_sigmas, denoised in
  # one step, squared error), "score_norm" (|D(x, score_sigma) - x|^2) and "bpd" (bits/dim:
  # DDPM's bound on discrete models, the ODE's on continuous ones; costly).
  ed.scores = ("reconstruction", "score_norm")
  ed.recon_sigmas = (0.1, 0.3, 0.6)
  ed.score_sigma = 0.05
  # anomaly: normal validation images whose score quantile is the threshold ("": none).
  ed.normal = ""
  ed.quantile = 0.95

  # ----------------------------------------------------------------- wandb
  config.wandb = wb = ml_collections.ConfigDict()
  wb.mode = "disabled"  # "disabled" | "offline" | "online" (offline: workdir/wandb/, upload with `wandb sync`).
  wb.project = "diffusion"
  wb.group = ""  # Groups the runs of one ablation.
  wb.tags = ()  # Run tags.
  wb.name = ""  # Run name ("" = the workdir's basename).
  wb.notes = ""  # Run notes (a description shown in the wandb UI).

  config.lock()
  return config
