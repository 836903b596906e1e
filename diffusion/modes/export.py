"""`--mode export`: the EMA parameters of a checkpoint alone, in one portable file.

    python -m diffusion.main --config configs/x.py --workdir DIR --mode export
    -> DIR/export/ema_XXXXXX.npz

The file is a plain ``.npz`` (numpy only, no Orbax, no pickles): one array per
parameter under its slash-joined name (``conv_in/kernel``, ...), plus
``__config__`` (the run's config.json, redacted, as a JSON string) and
``__step__``. `load` reads it back as ``(params, config, step)``; with
``experiment.build(config)`` that is everything needed to sample::

    params, config, step = export.load("ema_003000.npz")
    exp = experiment.build(config)
    images = exp.sample_fn(num_samples=16)(params, exp.sample_key)

An existing export of the same step is left as it is (it holds the same
parameters: a checkpoint's EMA never changes).
"""
from __future__ import annotations

import json

from etils import epath
import jax
import ml_collections
import numpy as np

from diffusion import experiment, latent
from diffusion.core import checks
from diffusion.dist import placement
from diffusion.run import checkpoint, console, resume
from diffusion.run.redact import redacted_config
from diffusion.run.workdir import Workdir, load_npz, save_npz

CONFIG_KEY, STEP_KEY = "__config__", "__step__"


def flatten_params(params) -> dict[str, np.ndarray]:
  """``{"conv_in/kernel": array, ...}`` of a nested dict of arrays."""
  return {name: np.asarray(placement.to_host(leaf))
          for name, leaf in checkpoint.named_leaves(params).items()}


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
  """The nested dict of `flatten_params`' output."""
  return latent.nested_params(flat)


def load(path) -> tuple[dict, ml_collections.ConfigDict, int]:
  """``(params, config, step)`` of an export file (`--mode export`)."""
  arrays = load_npz(path)
  if CONFIG_KEY not in arrays or STEP_KEY not in arrays:
    raise checks.ConfigError(f"{path} is not an export of --mode export (it has no "
                             f"{CONFIG_KEY} / {STEP_KEY}; keys: {sorted(arrays)[:5]}...)")
  config = ml_collections.ConfigDict(json.loads(str(arrays.pop(CONFIG_KEY))))
  step = int(arrays.pop(STEP_KEY))
  return unflatten_params(arrays), config, step


def export(config, workdir: str) -> str:
  """Writes the EMA parameters of the latest checkpoint (or
  ``config.sample.checkpoint_step``) to ``export/ema_XXXXXX.npz``; returns its path."""
  with checks.config_errors():
    exp = experiment.build(config)
    resume.check_config(config, workdir, write=False, mode="export")
  wd = Workdir(workdir)
  mesh = placement.make_mesh()
  with checkpoint.Checkpointer(wd.checkpoints_dir, None) as ckpt:
    params, step = experiment.restore_ema_params(exp, ckpt, config.sample.checkpoint_step, mesh,
                                                 warn=console.echo)
  path = wd.export_file(step)
  if epath.Path(path).exists():
    console.echo(f"export: {path} exists already (the EMA parameters of step {step})")
    return str(path)
  flat = flatten_params(params)
  if jax.process_index() == 0:
    save_npz(path, **flat, **{CONFIG_KEY: np.asarray(json.dumps(redacted_config(config))),
                              STEP_KEY: np.asarray(step)})
  console.echo(f"export: the EMA parameters of step {step} ({sum(v.size for v in flat.values()):,} "
               f"values) -> {path}")
  return str(path)
