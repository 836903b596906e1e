"""What a run writes into its workdir besides checkpoints and images.

- ``config.json``: the run's config; `check_config` refuses to resume under a
  config that changes what is trained.
- ``metrics.jsonl``: one JSON object per logged step (`MetricWriter`).
- a tqdm progress bar and `echo`ed messages on stderr; wandb later.

Only process 0 writes; every other process gets writers that do nothing, so
the training loop calls them unconditionally. Made in `train_and_evaluate`
and passed down (no module-level state).
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Mapping

import jax
import numpy as np
from tqdm import auto as tqdm

WANDB_MODES = ("disabled", "offline", "online")

# Keys that may differ from the workdir's config.json without
# --config.allow_config_change: they change how long or how verbosely a run
# trains, or how it samples, not what it trains. A trailing "." is a prefix.
RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.ckpt_every",
                  "train.sample_every", "train.keep_checkpoints", "sample.", "wandb.",
                  "allow_config_change")


# --------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _config_dict(config) -> dict:
  """The config as JSON would give it back (tuples become lists)."""
  return json.loads(config.to_json())


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """``{dotted key: (old value, new value)}`` for every key that differs."""
  old, new = _flatten(old), _flatten(new)
  missing = object()
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k, missing) != new.get(k, missing)}


def _resumable(key: str) -> bool:
  return any(key.startswith(p) if p.endswith(".") else key == p for p in RESUMABLE_KEYS)


def check_config(config, workdir: str, write: bool) -> None:
  """Refuses a config that differs from ``workdir/config.json`` in a training key.

  Keys in `RESUMABLE_KEYS` may differ; any other difference raises ValueError
  naming the keys and both values unless ``config.allow_config_change``. With
  `write`, process 0 then (over)writes config.json with `config`.
  """
  path = os.path.join(workdir, "config.json")
  new = _config_dict(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    changed = {k: v for k, v in config_changes(old, new).items() if not _resumable(k)}
    if changed and not config.allow_config_change:
      lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
      raise ValueError(
          f"the config differs from {path} in keys that change what is trained:\n{lines}\n"
          "use a new --workdir, or pass --config.allow_config_change=True to resume anyway")
  if write and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(new, f, indent=2, sort_keys=True)


# --------------------------------------------------------------------------
# metrics.jsonl, wandb, progress
# --------------------------------------------------------------------------


def _to_python(value: Any) -> Any:
  value = np.asarray(value)
  if value.ndim == 0:
    value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value
  return value.tolist()


class MetricWriter:
  """Appends one JSON object per logged step to ``workdir/metrics.jsonl``.

  Rows look like ``{"step": 100, "loss": 0.05, "grad_norm": 0.3, ...}``;
  non-finite floats are written as null (JSON has no NaN). A run resumed at
  `start_step` first drops the rows of later steps (logged after the last
  checkpoint by an interrupted run), then appends.
  """

  def __init__(self, workdir: str, config=None, start_step: int = 0,
               enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._wandb = WandbHook(config.wandb if config is not None else None, self.enabled)
    if self.enabled and os.path.exists(self.path):
      rows = [r for r in read_metrics(workdir) if r["step"] <= start_step]
      with open(self.path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _to_python(v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    self._wandb.log(step, row)

  def write_image(self, step: int, name: str, path: str) -> None:
    """Reports an image already saved at `path` (for wandb; JSONL has none)."""
    if self.enabled:
      self._wandb.log_image(step, name, path)

  def close(self) -> None:
    self._wandb.close()


def read_metrics(workdir: str) -> list[dict]:
  """The rows of ``workdir/metrics.jsonl`` (empty if there is none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class WandbHook:
  """Placeholder for the wandb hookup: a no-op for ``mode="disabled"``.

  TODO: init a run from `config.wandb` (project, group, tags, name, the config
  dict), log scalars and images, resume the run id stored in the workdir.
  """

  def __init__(self, config, enabled: bool):
    mode = "disabled" if config is None else config.mode
    if mode not in WANDB_MODES:
      raise ValueError(f"config.wandb.mode={mode!r} is unknown; valid: {', '.join(WANDB_MODES)}")
    if mode != "disabled":
      raise NotImplementedError(
          f"config.wandb.mode={mode!r} is not implemented yet; use "
          "--config.wandb.mode=disabled (metrics are in workdir/metrics.jsonl)")
    del enabled  # Used once wandb is hooked up: only process 0 logs.

  def log(self, step: int, row: Mapping[str, Any]) -> None:
    del step, row

  def log_image(self, step: int, name: str, path: str) -> None:
    del step, name, path

  def close(self) -> None:
    pass


def echo(message: str) -> None:
  """Prints a line on process 0 (above a progress bar, if one is showing)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message, file=sys.stderr)


class ProgressBar:
  """A tqdm bar over the train steps showing loss and steps/s, on process 0."""

  def __init__(self, start: int, total: int, enabled: bool | None = None):
    enabled = jax.process_index() == 0 if enabled is None else enabled
    self._bar = tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                          disable=not enabled, desc="train")

  def update(self, steps: int, metrics: Mapping[str, Any] | None = None) -> None:
    self._bar.update(steps)
    if metrics:
      self._bar.set_postfix({k: f"{float(v):.4g}" for k, v in metrics.items() if v is not None},
                            refresh=False)

  def write(self, message: str) -> None:
    """Prints `message` above the bar."""
    self._bar.write(message)

  def close(self) -> None:
    self._bar.close()
