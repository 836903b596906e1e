"""The experiment record: everything a config builds, built once and used by every driver.

    exp = experiment.build(config)        # validates the config first
    exp.model, exp.process                # Flax module; DiscreteSchedule or SDE
    exp.denoiser(params, cond)            # core.denoiser.Denoiser of the network
    exp.loss_fn(params, batch, rng)       # for train.step.make_train_step
    exp.create_state(rng), exp.tx         # TrainState factory and optimizer
    exp.sampler(sample_section)           # (record, options, process it runs on)
    exp.sample_fn(section, num_samples=N)  # jitted sample_fn(params, rng) of a sampler
    exp.cond(n)                           # labels 0..n-1 cycled (class-conditional) or None
    exp.abstract_state(sharding), exp.init_state()

`modes.train`, `modes.sample` and `modes.eval` take an `Experiment` instead of
rebuilding its parts; `restore_ema_params` is their one restore of a workdir's
EMA parameters.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusion.core import checks, edm, grids, losses, processes, schedules, sdes, vdm
from diffusion.core.denoiser import Denoiser
from diffusion.core.samplers import registry
from diffusion import models
from diffusion.data import sources
from diffusion.dist import placement
from diffusion.models import get_model, layers
from diffusion.train import state as ts

DIFFUSION_TYPES = ("discrete", "continuous", "edm", "vdm")
# What each type trains: its network outputs and loss weightings.
PREDICTIONS = {"discrete": losses.DISCRETE_PREDICTIONS,
               "continuous": losses.CONTINUOUS_PREDICTIONS, "edm": ("F",), "vdm": ("eps",)}
WEIGHTINGS = {"discrete": losses.DISCRETE_WEIGHTINGS,
              "continuous": losses.CONTINUOUS_WEIGHTINGS, "edm": ("edm",), "vdm": ("elbo",)}


# --------------------------------------------------------------------------
# Config checks.
# --------------------------------------------------------------------------


def _choice(value, valid, key):
  checks.setting(value, valid, f"config.{key}")


def check_sampler(config, process, section=None):
  """``(record, options, sampler_process)`` of ``config.sample`` (or `section`) for a
  model on `process`; ValueError naming the config key if it cannot run there."""
  s = config.sample if section is None else section
  d = config.diffusion
  try:
    record = registry.get(s.method)
  except ValueError as e:
    raise ValueError(f"config.sample.method: {e}") from None
  try:
    options = registry.options_from(record, s)
  except ValueError as e:
    raise ValueError(f"config.sample ({s.method}): {e}") from None
  on, domain, first_error = None, None, None
  for domain in record.domains:
    try:
      on = processes.on_domain(process, domain, f"config.sample.method={s.method!r}")
      break
    except ValueError as e:
      first_error = first_error or e
  if on is None:
    what = (f"a discrete-time sampler; a diffusion.type={d.type!r} model has no integer steps"
            if record.domains[0] == "discrete" else f"{first_error}; got diffusion.schedule="
            f"{d.schedule!r}")
    raise ValueError(f"config.sample.method={s.method!r} is {what}. Sample it with: "
                     f"{', '.join(runnable(process))}") from None
  if domain == "discrete" and hasattr(options, "num_steps"):
    grids.check_steps(options.num_steps, "config.sample.num_steps", upper=on.num_steps)
  # A learned schedule's noise levels are only known from a checkpoint.
  if domain == "sigma" and not learned_schedule(config):
    try:
      processes.sigma_grid(on, options.grid, options.num_steps, eps=options.eps, rho=options.rho)
    except ValueError as e:
      raise ValueError(f"config.sample (grid={options.grid!r}, num_steps={options.num_steps}): "
                       f"{e}") from None
  return record, options, on


# Numeric keys and their ranges (`checks.number`'s keyword arguments); None
# values pass where the default is a placeholder (model.num_classes, ...).
_INT = dict(integer=True)
RANGES = {
    "seed": dict(integer=True, lo=0),
    "data.batch_size": dict(_INT, lo=1),
    "data.image_size": dict(_INT, lo=1),
    "data.pad": dict(_INT, lo=0),
    "model.ch": dict(_INT, lo=1),
    "model.num_res_blocks": dict(_INT, lo=1),
    "model.num_heads": dict(_INT, lo=1),
    "model.dropout": dict(lo=0.0, hi=1.0, hi_open=True),
    "model.time_scale": dict(lo=0.0, lo_open=True),
    "model.fourier_scale": dict(lo=0.0, lo_open=True),
    "model.num_classes": dict(_INT, lo=1),
    "model.transformer_depth": dict(_INT, lo=1),
    "text.max_length": dict(_INT, lo=2),
    "text.width": dict(_INT, lo=1),
    "text.num_layers": dict(_INT, lo=1),
    "text.num_heads": dict(_INT, lo=1),
    "text.vocab_size": dict(_INT, lo=5),
    "diffusion.num_steps": dict(_INT, lo=1),
    "diffusion.min_snr_gamma": dict(lo=0.0, lo_open=True),
    "diffusion.beta_min": dict(lo=0.0, lo_open=True),
    "diffusion.beta_max": dict(lo=0.0, lo_open=True),
    "diffusion.sigma_min": dict(lo=0.0, lo_open=True),
    "diffusion.sigma_max": dict(lo=0.0, lo_open=True),
    "diffusion.eps": dict(lo=0.0, hi=1.0, lo_open=True, hi_open=True),
    "diffusion.sigma_data": dict(lo=0.0, lo_open=True),
    "diffusion.elbo_steps": dict(_INT, lo=0),
    "diffusion.gamma_width": dict(_INT, lo=1),
    "diffusion.num_bins": dict(_INT, lo=2),
    "diffusion.p_std": dict(lo=0.0, lo_open=True),
    "optim.lr": dict(lo=0.0, lo_open=True),
    "optim.beta1": dict(lo=0.0, hi=1.0, hi_open=True),
    "optim.beta2": dict(lo=0.0, hi=1.0, hi_open=True),
    "optim.eps": dict(lo=0.0),
    "optim.weight_decay": dict(lo=0.0),
    "optim.warmup_steps": dict(_INT, lo=0),
    "optim.decay_steps": dict(_INT, lo=0),
    "optim.end_lr": dict(lo=0.0),
    "optim.grad_clip": dict(lo=0.0),
    "ema.decay": dict(lo=0.0, hi=1.0, hi_open=True),
    "ema.inv_gamma": dict(lo=0.0, lo_open=True),
    "ema.power": dict(lo=0.0, lo_open=True),
    "ema.start_step": dict(_INT, lo=0),
    "train.keep_checkpoints": dict(_INT, lo=1),
    "train.steps_per_call": dict(_INT, lo=1),
    "sample.num_samples": dict(_INT, lo=1),
    "sample.batch_size": dict(_INT, lo=1),
    "sample.grid_size": dict(_INT, lo=1),
    "sample.gif_frames": dict(_INT, lo=1),
    "sample.checkpoint_step": dict(_INT, lo=0),
    "eval.num_samples": dict(_INT, lo=1),
    "eval.batch_size": dict(_INT, lo=1),
    "eval.reference_num": dict(_INT, lo=0),
    "eval.kept_features": dict(_INT, lo=2),
    "eval.kid_subsets": dict(_INT, lo=1),
    "eval.kid_subset_size": dict(_INT, lo=1),
    "eval.is_splits": dict(_INT, lo=1),
    "eval.bpd_num": dict(_INT, lo=1),
    "eval.classifier_steps": dict(_INT, lo=1),
}
CHANNELS = (1, 3)
# Named settings and their valid values (the lists live with the code that reads them).
CHOICES = {
    "data.source": sources.SOURCES,
    "data.split": sources.SPLITS,
    "data.crop": sources.CROPS,
    "model.downsample_padding": tuple(layers.DOWNSAMPLE_PADDINGS),
    "diffusion.gamma": tuple(vdm.GAMMAS),
    "optim.optimizer": ts.OPTIMIZERS,
    "optim.schedule": ts.SCHEDULES,
    "eval.features": ("classifier", "inception"),
    "eval.reference_split": sources.SPLITS,
    "eval.bpd_split": sources.SPLITS,
    "eval.baseline_split": ("",) + sources.SPLITS,
    "text.encoder": ("none", "trained", "clip"),
    "text.captions": ("attributes", "files"),
    "autoencoder.loss": ("l1", "l2"),
    "autoencoder.eval_split": sources.SPLITS,
}


def _lookup(config, key: str):
  node = config
  for part in key.split("."):
    if part not in node:
      return None
    node = node[part]
  return node


def check_ranges(config) -> None:
  """`checks.ConfigError` naming the first key of `RANGES` (and the tuple-valued
  model keys) whose value is out of range, with the allowed range."""
  for key, bounds in RANGES.items():
    value = _lookup(config, key)
    if value is not None:
      checks.number(value, f"config.{key}", **bounds)
  m, data = config.model, config.data
  for key in ("channel_mult", "attention_resolutions"):
    values = tuple(m[key]) if isinstance(m[key], (tuple, list)) else (m[key],)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
      raise checks.ConfigError(f"config.model.{key}={values!r}: every entry must be an int >= 1")
  if not m.channel_mult:
    raise checks.ConfigError("config.model.channel_mult=() needs at least one level")
  if data.channels not in CHANNELS:
    raise checks.ConfigError(f"config.data.channels={data.channels!r} must be 1 (gray) or 3 (RGB)")
  d = config.diffusion
  if (d.type == "edm" or d.type == "continuous" and d.sde == "ve") and not d.sigma_min < d.sigma_max:
    raise checks.ConfigError(f"config.diffusion.sigma_min={d.sigma_min} must be < "
                             f"config.diffusion.sigma_max={d.sigma_max}")
  if d.type == "vdm" and not d.gamma_min < d.gamma_max:
    raise checks.ConfigError(f"config.diffusion.gamma_min={d.gamma_min} must be < "
                             f"config.diffusion.gamma_max={d.gamma_max}")
  if d.type == "vdm" and m.embedding != "sinusoidal":
    raise checks.ConfigError(f"config.model.embedding={m.embedding!r}: a vdm model is given "
                             "gamma(t) = -log SNR (any sign) and needs 'sinusoidal'")
  if d.type == "continuous" and d.sde != "ve" and not d.beta_min < d.beta_max:
    raise checks.ConfigError(f"config.diffusion.beta_min={d.beta_min} must be < "
                             f"config.diffusion.beta_max={d.beta_max}")


def runnable(process) -> tuple[str, ...]:
  """The registered samplers that can run a model trained on `process`."""
  def ok(record):
    for domain in record.domains:
      try:
        processes.on_domain(process, domain)
        return True
      except ValueError:
        pass
    return False
  return tuple(n for n, r in registry.SAMPLERS.items() if ok(r))


def sampler_domain(record, process) -> str | None:
  """The domain (`processes.DOMAINS`) `record` runs a model of `process` on: its first
  that can; None if none can."""
  for domain in record.domains:
    try:
      processes.on_domain(process, domain)
      return domain
    except ValueError:
      continue
  return None


def runs_in_sigma_space(record, process) -> bool:
  """Whether `record` runs a model of `process` in sigma space (its first domain that can)."""
  return sampler_domain(record, process) == "sigma"


def check_sample_options(section, prefix: str = "config.sample") -> None:
  """Every sampler option key of `section`, whichever sampler it belongs to:
  each registered sampler's options are built from it (`registry.options_from`),
  so a bad value of an option the chosen sampler does not read fails too."""
  for record in registry.SAMPLERS.values():
    try:
      registry.options_from(record, section)
    except (ValueError, TypeError) as e:
      raise checks.ConfigError(f"{prefix}.{e}") from None


def validate_config(config) -> None:
  """Raises `checks.ConfigError` (a ValueError) naming the key for a value out of its
  range (`RANGES`) or values that cannot work together.

  (Names checked by the library — schedule, sde, optimizer, model fields — fail
  there with the list of valid names.)
  """
  check_ranges(config)
  for key, valid in CHOICES.items():
    value = _lookup(config, key)
    if value is not None:
      _choice(value, valid, key)
  if config.model.name == "autoencoder":  # A latent model's autoencoder (diffusion/latent.py).
    from diffusion import latent  # pylint: disable=g-import-not-at-top
    latent.check_autoencoder(config)
    check_train(config)
    return
  d, s = config.diffusion, config.sample
  _choice(config.model.name, tuple(n for n in models.MODELS if n != "autoencoder"),
          "model.name")
  if d.type == "discrete":
    _choice(d.schedule, tuple(sorted(schedules.SCHEDULES)), "diffusion.schedule")
  elif d.type == "continuous":
    _choice(d.sde, tuple(sorted(sdes.SDES)), "diffusion.sde")
  check_sample_options(s)
  check_conditioning(config)
  _choice(d.type, DIFFUSION_TYPES, "diffusion.type")
  for key, valid in (("prediction", PREDICTIONS[d.type]), ("weighting", WEIGHTINGS[d.type])):
    if d[key] not in valid:
      raise checks.ConfigError(f"config.diffusion.{key}={d[key]!r} is not one of "
                               f"{', '.join(valid)} (what diffusion.type={d.type!r} trains)")
  check_sampler(config, noise_process(config))
  check_train(config)
  for key in ("num_samples", "batch_size", "grid_size", "gif_frames"):
    if s[key] < 1:
      raise ValueError(f"config.sample.{key}={s[key]} must be >= 1")
  check_latent(config)


def check_train(config) -> None:
  """The train section's settings and the batch against the devices and processes."""
  tc = config.train
  _choice(tc.parallel, placement.MODES, "train.parallel")
  _choice(tc.precision, tuple(models.PRECISIONS), "train.precision")
  k = tc.steps_per_call
  if k < 1:
    raise ValueError(f"config.train.steps_per_call={k} must be >= 1")
  for key in ("num_steps", "log_every", "ckpt_every", "sample_every"):
    value = tc[key]
    if value < (0 if key == "sample_every" else 1) or value % k:
      raise ValueError(f"config.train.{key}={value} must be a positive multiple of "
                       f"config.train.steps_per_call={k}" + (" (or 0)" if key == "sample_every" else ""))
  n = jax.device_count()
  if config.data.batch_size % n:
    raise ValueError(f"config.data.batch_size={config.data.batch_size} is not divisible by "
                     f"the {n} devices ({jax.process_count()} processes)")
  if jax.process_count() > 1 and tc.parallel != "jit":
    raise ValueError(f"config.train.parallel={tc.parallel!r} runs on one process; with "
                     f"{jax.process_count()} processes use 'jit'")


def latent_model(config) -> bool:
  """Whether the model is a latent diffusion model (``latent.autoencoder_workdir`` set)."""
  return bool(config.latent.autoencoder_workdir)


def check_latent(config) -> None:
  """ConfigError for latent settings that cannot work (the autoencoder workdir itself
  is checked by `latent.load_codec` when the experiment is built)."""
  lat = config.latent
  if lat.scale_factor < 0:
    raise checks.ConfigError(f"config.latent.scale_factor={lat.scale_factor} must be > 0 (or 0: "
                             "the autoencoder's measured 1 / std of the training latents)")
  if not latent_model(config):
    return
  for key in ("random_flip", "dequantize"):
    if config.data[key]:
      raise checks.ConfigError(f"config.data.{key}=True: a latent model trains on the latents "
                               "of the stored images, cached once; set it to False")


# --------------------------------------------------------------------------
# Parts.
# --------------------------------------------------------------------------


def build_model(config, codec=None) -> nn.Module:
  """``MODELS[config.model.name]`` with every other config.model key as a field, on
  images of ``config.data`` or, for a latent model, on the latents of `codec`."""
  fields = {k: v for k, v in config.model.items() if k != "name"}
  size, channels = config.data.image_size, config.data.channels
  if codec is not None:
    size, channels = codec.latent_shape[0], codec.latent_shape[2]
  if config.model.name == "unet":
    fields["cross_attention"] = text_conditional(config)
  else:
    fields.pop("transformer_depth", None)
  return get_model(config.model.name, **fields, image_size=size, in_channels=channels,
                   dtype=models.compute_dtype(config.train.precision))


def noise_process(config):
  """The discrete schedule or the SDE of `config.diffusion`."""
  d = config.diffusion
  if d.type == "discrete":
    return schedules.get(d.schedule, num_steps=d.num_steps)
  if d.type == "edm":
    return edm.EDMProcess(sigma_min=d.sigma_min, sigma_max=d.sigma_max, sigma_data=d.sigma_data)
  if d.type == "vdm":
    return vdm.VDMProcess(gamma_schedule(config))
  if d.sde == "ve":
    return sdes.get("ve", sigma_min=d.sigma_min, sigma_max=d.sigma_max)
  return sdes.get(d.sde, beta_min=d.beta_min, beta_max=d.beta_max)


def gamma_schedule(config, params=None):
  """A vdm model's gamma schedule: fixed ("linear", "cosine": the config's endpoints) or
  "learned" (its parameters ``params["gamma"]`` of a train state; without `params`, the
  initial ones, a template of the right structure)."""
  d = config.diffusion
  if d.gamma != "learned":
    return vdm.get(d.gamma, gamma_min=d.gamma_min, gamma_max=d.gamma_max)
  if params is None:
    params = {"gamma": vdm.init_learned_gamma(jax.random.PRNGKey(0), d.gamma_width,
                                              d.gamma_min, d.gamma_max)}
  return vdm.LearnedGamma(params["gamma"])


def text_conditional(config) -> bool:
  """Whether the model is conditioned on text (``text.encoder`` is not "none")."""
  return config.text.encoder != "none"


def class_conditional(config) -> bool:
  return config.model.num_classes is not None


def structured_params(config) -> bool:
  """Whether a train state's params are a dict ``{"net": ..., "gamma"?: ..., "text"?: ...}``
  (a learned VDM schedule, or a text encoder) rather than the network's alone."""
  return learned_schedule(config) or text_conditional(config)


def build_text_encoder(config):
  """The `models.text_encoder.TextEncoder` of ``config.text`` (None without text)."""
  if not text_conditional(config):
    return None
  from diffusion.models import text_encoder  # pylint: disable=g-import-not-at-top
  t = config.text
  if t.encoder == "clip":
    return text_encoder.load_params(t.clip_weights)[0]
  return text_encoder.TextEncoder(vocab_size=t.vocab_size, width=t.width,
                                  num_layers=t.num_layers, num_heads=t.num_heads,
                                  max_length=t.max_length)


def parse_labels(text: str, num_classes, key: str = "config.sample.labels") -> tuple[int, ...]:
  """``"3,7"`` -> ``(3, 7)``; ConfigError unless every entry is an int in [0, num_classes)."""
  if not text.strip():
    return ()
  if num_classes is None:
    raise checks.ConfigError(f"{key}={text!r}: the model is unconditional "
                             "(config.model.num_classes is None)")
  out = []
  for item in text.split(","):
    try:
      v = int(item.strip())
    except ValueError:
      raise checks.ConfigError(f"{key}={text!r}: {item.strip()!r} is not an integer label") from None
    if not 0 <= v < num_classes:
      raise checks.ConfigError(f"{key}={text!r}: label {v} is not in 0..{num_classes - 1}")
    out.append(v)
  return tuple(out)


def parse_interval(text: str, key: str = "config.sample.guidance_interval"):
  """``"lo,hi"`` (or ``"lo..hi"``, as eval specs write it) -> ``(lo, hi)`` (noise
  levels sigma / alpha); "" -> None."""
  if not text.strip():
    return None
  try:
    lo, hi = (float(v) for v in text.replace("..", ",").split(","))
    from diffusion.core import guidance  # pylint: disable=g-import-not-at-top
    return guidance.check_interval((lo, hi))
  except ValueError as e:
    why = str(e) if "lo < hi" in str(e) else "expected two numbers 'lo,hi'"
    raise checks.ConfigError(f"{key}={text!r}: {why}") from None


def check_conditioning(config, section=None) -> None:
  """ConfigError naming the key for conditioning settings that cannot work: labels
  or guidance on a model without a condition, guidance of a model whose null
  condition was never trained (``cond.p_uncond = 0``), a bad interval or label."""
  s = config.sample if section is None else section
  conditional = class_conditional(config) or text_conditional(config)
  p = config.cond.p_uncond
  if not 0.0 <= p < 1.0:
    raise checks.ConfigError(f"config.cond.p_uncond={p} must lie in [0, 1)")
  if not s.guidance >= 0.0:
    raise checks.ConfigError(f"config.sample.guidance={s.guidance} must be >= 0 (1 = the "
                             "conditional model, 0 = the unconditional one)")
  if s.guidance != 1.0 or s.guidance_interval.strip():
    if not conditional:
      raise checks.ConfigError(f"config.sample.guidance={s.guidance}: classifier-free guidance "
                               "needs a conditional model (config.model.num_classes or "
                               "config.text.encoder)")
    if p == 0.0:
      raise checks.ConfigError(f"config.sample.guidance={s.guidance} needs a model trained with "
                               "config.cond.p_uncond > 0 (its null condition); this one never "
                               "saw it: use guidance=1, or retrain with e.g. p_uncond=0.1")
  parse_interval(s.guidance_interval)
  parse_labels(s.labels, config.model.num_classes)
  if s.classifier_scale < 0:
    raise checks.ConfigError(f"config.sample.classifier_scale={s.classifier_scale} must be >= 0")
  if s.classifier_scale > 0 and not s.classifier_path:
    raise checks.ConfigError("config.sample.classifier_scale > 0 needs config.sample."
                             "classifier_path (`python -m diffusion.classify --noisy`)")
  if (s.prompt or s.prompts_file) and not text_conditional(config):
    raise checks.ConfigError("config.sample.prompt / prompts_file: the model is not "
                             "text-conditional (config.text.encoder='none')")
  if s.prompts_file and not os.path.isfile(s.prompts_file):
    raise checks.ConfigError(f"config.sample.prompts_file={s.prompts_file!r} does not exist")
  if text_conditional(config):
    t = config.text
    if t.encoder == "clip":
      for key in ("clip_weights", "vocab_file", "merges_file"):
        if not t[key] or not os.path.isfile(t[key]):
          raise checks.ConfigError(f"config.text.encoder='clip' needs config.text.{key} (an "
                                   f"existing file), got {t[key]!r}")
    elif t.width % t.num_heads:
      raise checks.ConfigError(f"config.text.num_heads={t.num_heads} must divide "
                               f"config.text.width={t.width}")
    if class_conditional(config):
      raise checks.ConfigError("config.model.num_classes and config.text.encoder are both set: "
                               "a model is conditioned on labels or on text, not both")


def learned_schedule(config) -> bool:
  """Whether the train state's params are ``{"net": ..., "gamma": ...}`` (a vdm model
  with a learned schedule) rather than the network's alone."""
  return config.diffusion.type == "vdm" and config.diffusion.gamma == "learned"


def noise_input(config) -> str:
  """What the denoiser gives the network for t: a Fourier-embedding network embeds
  ``log(input)``, so it is given the noise level sigma(t); an EDM model with a
  sinusoidal embedding gets EDM's ``c_noise = log(sigma) / 4``; others the time itself."""
  if config.diffusion.type == "vdm":
    return "gamma"
  if config.model.embedding == "fourier":
    return "sigma"
  return "edm" if config.diffusion.type == "edm" else "time"


def keys(config):
  """``(state_key, sample_key)`` from the seed: one per purpose."""
  return jax.random.split(jax.random.PRNGKey(config.seed))


@dataclasses.dataclass(frozen=True)
class Experiment(ts.StateFactory):
  """What `build` makes from a config (module docstring); `abstract_state` and
  `init_state` come from `train.state.StateFactory`."""

  config: Any
  model: nn.Module
  process: Any
  tx: Any
  state_key: jax.Array
  sample_key: jax.Array
  tokenizer: Any = None  # Text models: `data.tokenizers` (train: built from the captions).
  default_prompts: tuple[str, ...] = ()  # Text models: prompts of grids without sample.prompt.
  text_bins: Any = None  # Attribute captions: the thresholds (`data.captions.AttributeBins`).
  codec: Any = None  # Latent models: the autoencoder's maps (`latent.Codec`).

  @property
  def data_shape(self) -> tuple[int, int, int]:
    """``(H, W, C)`` of what the network denoises: the images, or a latent model's latents."""
    if self.codec is not None:
      return tuple(self.codec.latent_shape)
    c = self.config.data
    return (c.image_size, c.image_size, c.channels)

  def decode(self, z, trajectory=None, sigma_space: bool = False):
    """Images of latents `z` (unchanged for pixel models); with `trajectory` (the
    sampler's ``traj``), also its frames ``traj["x"]``, decoded one by one. A sigma-space
    sampler's (`sigma_space`) frames ``x0 + sigma z`` are shown as ``x / sqrt(1 + sigma^2)``, scaled to
    unit variance before decoding (``traj["scaled"]`` then says so)."""
    if self.codec is None:
      return z if trajectory is None else (z, trajectory)
    images = self.codec.decode(z)
    if trajectory is None:
      return images
    frames = trajectory["x"]
    traj = dict(trajectory)
    if sigma_space:
      frames = unit_scale_frames(frames, trajectory["t"])
      traj["scaled"] = True
    traj["x"] = jax.lax.map(self.codec.decode, frames)
    return images, traj

  def apply(self, params, x, c_noise, cond=None, rng=None):
    """The network: ``[B, H, W, C]``, ``[B]`` -> ``[B, H, W, C]``; a `rng` turns on dropout."""
    train = rng is not None
    return self.model.apply({"params": params}, x, c_noise, cond, train=train,
                            rngs={"dropout": rng} if train else None)

  def net_params(self, params):
    """The network's part of a state's `params` (all of them unless the schedule is
    learned or there is a text encoder: then ``params["net"]``)."""
    return params["net"] if structured_params(self.config) else params

  def process_of(self, params):
    """The noise process of a state's `params`: `process`, or for a learned schedule the
    process of ``params["gamma"]``."""
    if learned_schedule(self.config):
      return vdm.VDMProcess(gamma_schedule(self.config, params))
    return self.process

  def denoiser(self, params, cond=None, *, rng=None, shard: Callable | None = None) -> Denoiser:
    """The `Denoiser` of the network with `params` (`shard`: applied to every input x)."""
    shard = shard or (lambda x: x)
    net_params = self.net_params(params)
    net = lambda x, c, y: self.apply(net_params, shard(x), c, y, rng)
    d = self.config.diffusion
    return Denoiser(net, d.prediction, self.process_of(params),
                    noise_input=noise_input(self.config), cond=cond, sigma_data=d.sigma_data)

  # ------------------------------------------------------------ conditioning
  # A condition's inputs are int labels [N] (class-conditional) or {"tokens": int32
  # [N, L], "mask": bool [N, L]} (text); `condition` turns them into what the
  # network is given (labels, or {"context": the encoder's [N, L, D], "mask"}).

  @property
  def text_encoder(self):
    """The text encoder module (None without text conditioning)."""
    if self.config.text.encoder == "clip":
      return self._clip()[0]
    enc = self.__dict__.get("_text_encoder", False)
    if enc is False:
      enc = build_text_encoder(self.config)
      object.__setattr__(self, "_text_encoder", enc)
    return enc

  def _clip(self):
    """``(TextEncoder, weights)`` of ``text.clip_weights``, read once."""
    got = self.__dict__.get("_clip_file")
    if got is None:
      from diffusion.models import text_encoder  # pylint: disable=g-import-not-at-top
      got = text_encoder.load_params(self.config.text.clip_weights)
      object.__setattr__(self, "_clip_file", got)
    return got

  def null_label(self) -> int:
    return self.config.model.num_classes

  def tokenize(self, prompts) -> dict:
    """``{"tokens", "mask"}`` of `prompts` by the experiment's tokenizer."""
    if self.tokenizer is None:
      raise checks.ConfigError("this text model has no tokenizer: train it first (the "
                               "workdir's tokenizer.json), or give the CLIP vocab / merges files")
    ids, mask = self.tokenizer.encode(list(prompts))
    return {"tokens": jnp.asarray(ids, jnp.int32), "mask": jnp.asarray(mask, bool)}

  def null_inputs(self, n: int):
    """The null condition's inputs for `n` samples: the null label, or the empty prompt."""
    if class_conditional(self.config):
      return jnp.full((n,), self.null_label(), jnp.int32)
    if text_conditional(self.config):
      return jax.tree.map(lambda a: jnp.repeat(a, n, 0), self.tokenize([""]))
    return None

  def condition(self, params, inputs):
    """What the network is given for `inputs` (labels as they are; tokens encoded by
    ``params["text"]``, frozen for a pretrained CLIP)."""
    if inputs is None or not text_conditional(self.config):
      return inputs
    context = self.text_encoder.apply({"params": params["text"]}, inputs["tokens"],
                                      inputs["mask"])
    if self.config.text.encoder == "clip":
      context = jax.lax.stop_gradient(context)
    return {"context": context, "mask": inputs["mask"]}

  def batch_inputs(self, batch, rng=None):
    """The condition inputs of a training batch; with `rng`, each example's replaced by
    the null one with probability ``cond.p_uncond`` (classifier-free guidance training:
    the draw is ``uniform(fold_in(rng, 0x636f6e64)) < p_uncond`` per example)."""
    config = self.config
    if class_conditional(config):
      inputs = batch["label"]
    elif text_conditional(config):
      inputs = {"tokens": batch["tokens"], "mask": batch["mask"]}
    else:
      return None
    p = config.cond.p_uncond
    if rng is None or p == 0.0:
      return inputs
    n = jax.tree.leaves(inputs)[0].shape[0]
    drop = jax.random.uniform(jax.random.fold_in(rng, 0x636F6E64), (n,)) < p
    null = self.null_inputs(n)
    return jax.tree.map(lambda a, b: jnp.where(drop.reshape((n,) + (1,) * (a.ndim - 1)), b, a),
                        inputs, null)

  def labels_of(self, n: int, section=None, cycle: bool = False):
    """The labels of `n` samples: ``sample.labels`` "3,7" in equal blocks (sample i gets
    ``labels[i k // n]``: grid rows) or, with `cycle`, in turn (``labels[i % k]``: what
    eval rounds use, so that every split of the Inception Score sees every label), else
    ``0..num_classes-1`` cycled; None if unconditional."""
    k = self.config.model.num_classes
    s = self.config.sample if section is None else section
    chosen = parse_labels(s.labels, k)
    if chosen:
      pick = (lambda i: i % len(chosen)) if cycle else (lambda i: i * len(chosen) // n)
      return jnp.asarray([chosen[pick(i)] for i in range(n)], jnp.int32)
    if k is None:
      return None
    return jnp.arange(n, dtype=jnp.int32) % k

  def prompts_of(self, n: int, section=None, cycle: bool = False) -> list[str] | None:
    """The prompts of `n` samples (text models): ``sample.prompt`` split at "|", or the
    lines of ``sample.prompts_file``, else `default_prompts`, in equal blocks (or in
    turn with `cycle`, as `labels_of`)."""
    if not text_conditional(self.config):
      return None
    s = self.config.sample if section is None else section
    prompts = prompt_list(s) or list(self.default_prompts)
    if not prompts:
      raise checks.ConfigError("config.sample.prompt is empty and the model has no default "
                               "prompts: give config.sample.prompt='a thick 3|a thin 7'")
    if cycle:
      return [prompts[i % len(prompts)] for i in range(n)]
    return [prompts[i * len(prompts) // n] for i in range(n)]

  def cond(self, n: int, section=None, cycle: bool = False):
    """The condition inputs of `n` samples (`labels_of` / `prompts_of`), or None."""
    if text_conditional(self.config):
      return self.tokenize(self.prompts_of(n, section, cycle))
    return self.labels_of(n, section, cycle)

  def noisy_classifier(self, section=None):
    """``(log_prob, num_classes)`` of ``sample.classifier_path`` when
    ``classifier_scale > 0`` (loaded once, outside any trace), else None."""
    s = self.config.sample if section is None else section
    if s.classifier_scale <= 0:
      return None
    from diffusion.models import classifier  # pylint: disable=g-import-not-at-top
    return classifier.noisy_log_prob(s.classifier_path, self.process)

  def guide(self, den, params, inputs, section=None, n=None, classifier=None):
    """`den` with the guidance of ``sample`` (or `section`): classifier-free
    (``guidance``, ``guidance_interval``) and classifier guidance (``classifier_scale``,
    with `classifier` from `noisy_classifier`; loaded here when not given)."""
    from diffusion.core import guidance  # pylint: disable=g-import-not-at-top
    s = self.config.sample if section is None else section
    interval = parse_interval(s.guidance_interval)
    if inputs is not None and (s.guidance != 1.0 or interval is not None):
      n = jax.tree.leaves(inputs)[0].shape[0]
      den = guidance.ClassifierFree(den, self.condition(params, self.null_inputs(n)),
                                    float(s.guidance), interval)
    if s.classifier_scale > 0:
      log_prob, k = classifier or self.noisy_classifier(section)
      labels = inputs if class_conditional(self.config) else (
          jnp.arange(n, dtype=jnp.int32) % k if n else None)
      den = guidance.ClassifierGuided(den, log_prob, labels, float(s.classifier_scale))
    return den

  def loss_fn(self, params, batch, rng):
    """``(loss, metrics)`` of a batch; for `make_train_step`."""
    d = self.config.diffusion
    inputs = self.batch_inputs(batch, rng)
    model_fn = lambda p, x_t, t, r: self.denoiser(p, self.condition(p, inputs),
                                                  rng=r).output(x_t, t)
    if d.type == "discrete":
      return losses.discrete_loss(params, batch, rng, model_fn=model_fn, sched=self.process,
                                  prediction=d.prediction, weighting=d.weighting,
                                  min_snr_gamma=d.min_snr_gamma)
    if d.type == "edm":
      return edm.edm_loss(params, batch, rng, model_fn=model_fn, process=self.process,
                          p_mean=d.p_mean, p_std=d.p_std)
    if d.type == "vdm":
      m_key, v_key = jax.random.split(rng)
      net_params = self.net_params(params)
      y = self.condition(params, inputs)
      eps_fn = lambda z, g: self.apply(net_params, z, g, y, m_key)
      return vdm.vdm_loss(batch["image"], eps_fn, self.process_of(params).gamma_schedule, v_key,
                          num_steps=d.elbo_steps, num_bins=d.num_bins, antithetic=d.antithetic,
                          variance_gradient=d.variance_gradient)
    return losses.continuous_loss(params, batch, rng, model_fn=model_fn, sde=self.process,
                                  prediction=d.prediction, weighting=d.weighting, eps=d.eps,
                                  antithetic=d.antithetic)

  def sampler(self, section=None):
    """``(record, options, process)`` of ``config.sample`` or another sample `section`."""
    return check_sampler(self.config, self.process, section)

  def sample_fn(self, section=None, *, num_samples: int | None = None,
                return_trajectory: bool = False, mesh=None, cond_inputs=None) -> Callable:
    """A jitted ``sample_fn(params, rng) -> x [N, H, W, C]`` (the sampler factory).

    The sampler is ``config.sample``'s, or that of another sample `section` (an
    eval entry's); the sampler record (`core.samplers.registry`) runs the
    experiment's denoiser on the process its domain needs
    (`core.processes.on_domain`). ``N = num_samples`` (default
    ``config.sample.num_samples``); conditional models get the condition inputs
    `cond_inputs` (default `cond`: ``sample.labels`` or labels cycled; the prompts)
    and the section's guidance (`guide`). With `return_trajectory` it returns ``(x,
    traj)`` as the samplers do (``traj["x"]`` ``[S, N, H, W, C]``; ValueError
    if the sampler has none, e.g. rk45).

    With a `mesh` whose devices divide N (`batch_sharding`), the N images are
    split over all its devices (of all processes): every network input is
    constrained to that batch sharding and so is the output, a global array
    (`to_host` gathers it); `params` must then be replicated on the mesh and
    every process must make the call. The noise is drawn by the same
    counter-based threefry as without a mesh, so the samples do not depend on
    how many devices or processes share them (up to float rounding).
    """
    config = self.config
    record, options, process = self.sampler(section)
    if return_trajectory and not record.traceable(options):
      raise ValueError(f"sampler {record.name} with these options has no trajectory (e.g. "
                       "ode_method='rk45'): use 'euler' or 'heun'")
    n = config.sample.num_samples if num_samples is None else num_samples
    shape = (n,) + self.data_shape
    inputs = self.cond(n, section) if cond_inputs is None else cond_inputs
    traj = {"return_trajectory": True} if return_trajectory else {}
    sigma_space = runs_in_sigma_space(record, process)
    sharding = batch_sharding(mesh, n)
    split = (lambda x: x) if sharding is None else (
        lambda x: jax.lax.with_sharding_constraint(x, sharding))

    learned = learned_schedule(config)

    classifier = self.noisy_classifier(section)

    def sample_fn(params, rng):
      den = self.denoiser(params, self.condition(params, inputs), shard=split)
      den = self.guide(den, params, inputs, section, n, classifier)
      out = record.run(den, den.process if learned else process, rng, shape, options, **traj)
      if self.codec is not None:
        out = self.decode(*out, sigma_space=sigma_space) if return_trajectory else (
            self.decode(out))
      if sharding is None:
        return out
      return (split(out[0]), out[1]) if return_trajectory else split(out)

    return jax.jit(sample_fn)

  def create_state(self, rng) -> ts.TrainState:
    x = jnp.zeros((1,) + self.data_shape, jnp.float32)
    t = jnp.zeros((1,), processes.time_dtype(self.process))
    y = None if self.config.model.num_classes is None else jnp.zeros((1,), jnp.int32)
    enc = self.text_encoder
    if enc is not None:
      length = self.config.text.max_length
      y = {"context": jnp.zeros((1, length, enc.width), jnp.float32),
           "mask": jnp.ones((1, length), bool)}
    init_fn = lambda r: self.model.init(r, x, t, y, train=False)["params"]
    if structured_params(self.config):
      d = self.config.diffusion
      net_init = init_fn

      def init_fn(r):
        params = {"net": net_init(jax.random.fold_in(r, 0))}
        if learned_schedule(self.config):
          params["gamma"] = vdm.init_learned_gamma(jax.random.fold_in(r, 1), d.gamma_width,
                                                   d.gamma_min, d.gamma_max)
        if enc is not None:
          params["text"] = self._init_text(jax.random.fold_in(r, 2))
        return params
    return ts.create(rng, init_fn, self.tx)

  def _init_text(self, rng):
    """The text encoder's initial params: random ("trained"), or the converted CLIP
    weights of ``text.clip_weights`` ("clip"; frozen by `tx`)."""
    if self.config.text.encoder == "clip":
      return jax.tree.map(jnp.asarray, self._clip()[1])
    length = self.config.text.max_length
    return self.text_encoder.init(rng, jnp.zeros((1, length), jnp.int32),
                                  jnp.ones((1, length), bool))["params"]


def batch_sharding(mesh, num_samples: int):
  """The sharding of ``num_samples`` images split over every device of `mesh`
  (None when `mesh` is None or has one device, or the devices do not divide N)."""
  if mesh is None or mesh.devices.size == 1 or num_samples % mesh.devices.size:
    return None
  return NamedSharding(mesh, P(placement.AXIS))


def prompt_list(section) -> list[str]:
  """The prompts of ``sample.prompt`` (split at "|") or ``sample.prompts_file`` (one per
  line, blank lines skipped); [] if neither is set."""
  if section.prompts_file:
    with open(section.prompts_file, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  return [p.strip() for p in section.prompt.split("|") if p.strip()]


def make_tx(config):
  """The optimizer; a pretrained CLIP text encoder's params (``params["text"]``) frozen."""
  tx = ts.make_optimizer(config)
  if config.text.encoder != "clip":
    return tx
  import optax  # pylint: disable=g-import-not-at-top
  labels = lambda params: {k: jax.tree.map(lambda _: "frozen" if k == "text" else "train", v)
                           for k, v in params.items()}
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def unit_scale_frames(frames, sigmas):
  """A sigma-space trajectory's frames ``x0 + sigma z`` ([T, B, ...], one sigma per
  frame) as the VP state ``x / sqrt(1 + sigma^2)`` (unit scale, shown or decoded
  instead of noise of scale 80). NumPy or JAX arrays."""
  t = sigmas.reshape((-1,) + (1,) * (frames.ndim - 1))
  return frames / (1.0 + t * t) ** 0.5


def build(config, *, tokenizer=None, default_prompts=(), codec=None) -> Experiment:
  """Validates `config` and builds its `Experiment` (text models: with their tokenizer;
  latent models: with the `latent.Codec` of ``latent.autoencoder_workdir``, read and
  checked here, or the given `codec`). An autoencoder config (``model.name =
  "autoencoder"``) gives a `latent.AutoencoderExperiment`."""
  from diffusion import latent  # pylint: disable=g-import-not-at-top
  validate_config(config)
  if latent.is_autoencoder(config):
    return latent.build_autoencoder(config)
  if codec is None:
    codec = latent.load_codec(config)
  state_key, sample_key = keys(config)
  if tokenizer is None and config.text.encoder == "clip":
    from diffusion.data import tokenizers  # pylint: disable=g-import-not-at-top
    tokenizer = tokenizers.CLIPTokenizer.from_files(config.text.vocab_file,
                                                    config.text.merges_file,
                                                    max_length=config.text.max_length)
  return Experiment(config=config, model=build_model(config, codec),
                    process=noise_process(config), tx=make_tx(config), state_key=state_key,
                    sample_key=sample_key, tokenizer=tokenizer,
                    default_prompts=tuple(default_prompts), codec=codec)


def with_trained_text(exp: Experiment, workdir) -> Experiment:
  """A text model's `exp` with the tokenizer, attribute bins and default prompts its
  train run saved in ``workdir/text/`` (`data.text.save`); others unchanged."""
  if not text_conditional(exp.config):
    return exp
  from diffusion.data import text  # pylint: disable=g-import-not-at-top
  tok, bins, prompts = text.load(workdir, exp.config.text)
  return dataclasses.replace(exp, tokenizer=tok, text_bins=bins, default_prompts=tuple(prompts))


def restore_ema_params(exp: Experiment, ckpt, step: int | None, mesh, warn=print):
  """``(ema_params, step)`` of checkpoint `step` of `ckpt` (a
  `run.checkpoint.Checkpointer`), replicated on every device of `mesh` (several
  processes restore collectively).

  `step` None: the newest checkpoint that restores and verifies (a damaged
  newer one is reported through `warn` and left in place: a reader does not
  move a trainer's files). A given `step` must exist and be intact
  (`CheckpointDamaged` otherwise). `checks.ConfigError` when there is no
  checkpoint or not that one.
  """
  target = exp.abstract_state(placement.replicated(mesh))
  if step is None:
    found = ckpt.restore_latest(target, warn=warn)
    if found is None:
      raise checks.ConfigError(f"no checkpoint in {ckpt.directory}: train first")
    step, state, _ = found
  else:
    if step not in ckpt.all_steps():
      raise checks.ConfigError(f"config.sample.checkpoint_step={step}: no such checkpoint in "
                               f"{ckpt.directory}; available: {ckpt.all_steps()}")
    state, _ = ckpt.restore(step, target)
  return state.ema_params, int(step)
