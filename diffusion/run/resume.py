"""The resume policy: when a config may run in a workdir that has a config.json.

Every mode compares its config with ``workdir/config.json`` through
`check_config`: ``--mode train`` to resume (and then saves its config there),
``--mode sample`` and ``--mode eval`` to read a trained run. Keys in
`RESUMABLE_KEYS` may differ (they change how long or how verbosely a run
trains, or how it samples and is evaluated, not what it trains); any other
difference is refused unless ``config.allow_config_change``.
"""
from __future__ import annotations

from typing import Any

import jax

from diffusion.core import checks
from diffusion.run import sinks
from diffusion.run.redact import flatten, redacted_config
from diffusion.run.workdir import Workdir, read_json, write_json

# Keys that may differ from the workdir's config.json without
# --config.allow_config_change. A trailing "." is a prefix.
RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.ckpt_every",
                  "train.sample_every", "train.keep_checkpoints", "sample.", "eval.", "edit.", "wandb.",
                  "allow_config_change")
# Keys added to the config after workdirs were written without them, with the
# value the code before them behaved as: a config.json that lacks such a key
# reads as having that value (so old runs resume and sample as before).
ADDED_KEYS = {"model.downsample_padding": 1, "model.input_fourier": [], "diffusion.sigma_data": 0.5, "diffusion.p_mean": -1.2,
              "diffusion.p_std": 1.2, "diffusion.gamma": "learned", "diffusion.gamma_min": -13.3,
              "diffusion.gamma_max": 5.0, "diffusion.gamma_width": 1024, "diffusion.elbo_steps": 0,
              "diffusion.variance_gradient": True, "diffusion.num_bins": 256,
              "model.transformer_depth": 1, "cond.p_uncond": 0.0, "text.encoder": "none",
              "text.captions": "attributes", "text.max_length": 16, "text.vocab_size": 1000, "text.width": 64,
              "text.num_layers": 2, "text.num_heads": 4, "text.clip_weights": "",
              "text.vocab_file": "", "text.merges_file": "",
              "autoencoder.latent_channels": 4, "autoencoder.attention": False,
              "autoencoder.loss": "l1", "autoencoder.kl_weight": 1e-6,
              "autoencoder.disc_weight": 0.0, "autoencoder.disc_start": 0,
              "autoencoder.disc_ch": 32, "autoencoder.disc_layers": 2,
              "autoencoder.scale_num": 1024, "autoencoder.eval_split": "test",
              "autoencoder.eval_num": 512, "latent.autoencoder_workdir": "",
              "latent.checkpoint_step": None, "data.pad": 0, "latent.scale_factor": 0.0}
# What each mode does anyway with --config.allow_config_change=True. "train"
# may start a new workdir; the others read a trained one.
MODES = (("train", "resume"), ("sample", "sample"), ("eval", "evaluate"), ("export", "export"),
         ("edit", "edit"))


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """``{dotted key: (old value, new value)}`` for every key that differs."""
  old, new = {**ADDED_KEYS, **flatten(old)}, flatten(new)
  missing = object()
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k, missing) != new.get(k, missing)}


def is_resumable(key: str) -> bool:
  """Whether dotted `key` may differ from config.json (`RESUMABLE_KEYS`)."""
  return any(key.startswith(p) if p.endswith(".") else key == p for p in RESUMABLE_KEYS)


def check_config(config, workdir, write: bool, mode: str = "train") -> None:
  """Refuses a config that differs from ``workdir/config.json`` in a training key.

  Args:
    config: the full config of this run.
    workdir: the workdir (str, os.PathLike or epath.Path; gs:// too).
    write: process 0 then (over)writes config.json with `config` (`redact.redacted_config`,
      atomically); only ``--mode train`` passes True.
    mode: one of `MODES`: "train" (config.json may be missing: a new run),
      "sample" or "eval" (FileNotFoundError without config.json).

  Keys in `RESUMABLE_KEYS` (``eval.`` among them) may differ; any other
  difference raises ValueError naming the keys and both values unless
  ``config.allow_config_change``. Checks ``config.wandb`` first
  (`sinks.check_wandb_config`).
  """
  verbs = dict(MODES)
  if mode not in verbs:
    raise ValueError(f"mode={mode!r} is unknown; valid: {', '.join(verbs)}")
  sinks.check_wandb_config(config)
  wd = Workdir(workdir)
  path = wd.config_file
  new = redacted_config(config)
  if path.exists():
    changed = {k: v for k, v in config_changes(read_json(path), new).items()
               if not is_resumable(k)}
    if changed and not config.allow_config_change:
      keys = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
      raise checks.ConfigError(
          f"the config differs from {path} in keys that change what is trained ({keys}); "
          f"{'use a new --workdir, or ' if mode == 'train' else ''}"
          f"pass --config.allow_config_change=True to {verbs[mode]} anyway")
  elif mode != "train":
    raise checks.ConfigError(f"{wd.path} has no config.json: train there first "
                             "(or check --workdir)")
  if write:
    write_config(config, workdir)


def write_config(config, workdir) -> None:
  """Process 0 (over)writes ``workdir/config.json`` with `config`, redacted, atomically.

  ``--mode train`` calls it once its first step has run, so a run that fails
  earlier (bad data, an incompatible checkpoint) leaves config.json as it was."""
  if jax.process_index() == 0:
    write_json(Workdir(workdir).config_file, redacted_config(config), indent=2, sort_keys=True)
