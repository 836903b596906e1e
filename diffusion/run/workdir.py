"""The layout of a run's workdir: every path in it is built here.

Paths are `etils.epath.Path`s, so a ``gs://bucket/run`` workdir gives
``gs://bucket/run/...`` paths and works wherever Orbax's checkpoints do; the
helpers below read and write through ``epath`` (no local-filesystem call)::

  <workdir>/
    config.json                      the run's config, redacted (`resume.check_config`)
    metrics.jsonl                    one JSON row per logged step (`sinks.MetricWriter`)
    wandb_id.txt                     the wandb run id a resumed run continues (`sinks`)
    wandb/                           wandb's own files (offline-run-*/)
    .lock                            held by the one trainer (`lock.WorkdirLock`)
    checkpoints/<step>/{state,data}  Orbax (`checkpoint.Checkpointer`)
    checkpoints_damaged/<step>/      checkpoints that failed to verify, set aside
    samples/
      step_XXXXXX.png                a grid every train.sample_every steps
      final_XXXXXX_<tag>.{png,npz,gif}  --mode sample: grid, all samples, reverse process
      final_XXXXXX_<tag>.uint8.npz   the samples as uint8 "arr_0" [N, H, W, C] (ADM's format)
    export/ema_XXXXXX.npz            --mode export: the EMA parameters alone (+ config)
    eval/                            --mode eval
      .lock                          held by the one evaluator
      rounds/<stem>.json             one round (stem: `eval.entries.spec_filename`)
      rounds/<stem>_stats.npz        that round's sample feature statistics
      results.json  results.md       all rounds and bits/dim
      bpd.json                       bits/dim
      reference_<features>_<split>.npz  reference statistics (unless eval.reference_stats)

``XXXXXX`` is the step, zero-padded to 6 digits. Building a path touches
nothing; only the read/write helpers do.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

from etils import epath
import numpy as np

from diffusion.core import checks

FINAL_EXTENSIONS = ("png", "npz", "gif", "uint8.npz")
RESULTS_EXTENSIONS = ("json", "md")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
  checks.setting(value, allowed, name)
  return value


@dataclasses.dataclass(frozen=True)
class Workdir:
  """The paths of the workdir at `path` (str, os.PathLike or epath.Path; kept as given)."""

  path: epath.Path

  def __post_init__(self):
    object.__setattr__(self, "path", epath.Path(self.path))

  @property
  def config_file(self) -> epath.Path:
    return self.path / "config.json"

  @property
  def metrics_file(self) -> epath.Path:
    return self.path / "metrics.jsonl"

  @property
  def wandb_id_file(self) -> epath.Path:
    return self.path / "wandb_id.txt"

  @property
  def wandb_dir(self) -> epath.Path:
    return self.path / "wandb"

  @property
  def checkpoints_dir(self) -> epath.Path:
    return self.path / "checkpoints"

  @property
  def damaged_dir(self) -> epath.Path:
    """Where damaged checkpoints are moved (``checkpoints_damaged/<step>``), never deleted."""
    return self.path / "checkpoints_damaged"

  @property
  def samples_dir(self) -> epath.Path:
    return self.path / "samples"

  def sample_grid(self, step: int) -> epath.Path:
    """``samples/step_XXXXXX.png``: the grid sampled during training at `step`."""
    return self.samples_dir / f"step_{int(step):06d}.png"

  def final_samples(self, step: int, ext: str, tag: str = "") -> epath.Path:
    """``samples/final_XXXXXX[_<tag>].<ext>`` of --mode sample; `ext` one of png, npz,
    gif, uint8.npz; `tag` names the sampler settings (`modes.sample.output_tag`)."""
    stem = f"final_{int(step):06d}" + (f"_{tag}" if tag else "")
    return self.samples_dir / f"{stem}.{_choice('ext', ext, FINAL_EXTENSIONS)}"

  def export_file(self, step: int) -> epath.Path:
    """``export/ema_XXXXXX.npz``: --mode export's EMA parameters of `step`."""
    return self.path / "export" / f"ema_{int(step):06d}.npz"

  @property
  def eval_dir(self) -> epath.Path:
    return self.path / "eval"

  @property
  def rounds_dir(self) -> epath.Path:
    return self.eval_dir / "rounds"

  def round_file(self, stem: str) -> epath.Path:
    """``eval/rounds/<stem>.json``: one eval round (`stem` a spec_filename)."""
    return self.rounds_dir / f"{stem}.json"

  def round_stats(self, stem: str) -> epath.Path:
    """``eval/rounds/<stem>_stats.npz``: that round's feature statistics."""
    return self.rounds_dir / f"{stem}_stats.npz"

  def results(self, ext: str) -> epath.Path:
    """``eval/results.<ext>``; `ext` one of json, md."""
    return self.eval_dir / f"results.{_choice('ext', ext, RESULTS_EXTENSIONS)}"

  @property
  def bpd_file(self) -> epath.Path:
    return self.eval_dir / "bpd.json"

  def reference_stats(self, features: str, split: str) -> epath.Path:
    """``eval/reference_<features>_<split>.npz``: the default reference statistics."""
    return self.eval_dir / f"reference_{features}_{split}.npz"


# --------------------------------------------------------------------------
# Reading and writing through epath.
# --------------------------------------------------------------------------


def is_local(path) -> bool:
  """Whether `path` is on the local filesystem (no ``scheme://`` prefix)."""
  return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", os.fspath(path)) is None


def read_json(path) -> Any:
  return json.loads(epath.Path(path).read_text())


def write_text(path, text: str) -> None:
  """Writes `text` atomically: to ``<path>.tmp``, then renamed over `path`.

  The parent folder is made if missing; a killed writer never leaves half a file.
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def write_json(path, obj: Any, **dump_kwargs) -> None:
  """`write_text` of ``json.dumps(obj, **dump_kwargs)`` (atomic)."""
  write_text(path, json.dumps(obj, **dump_kwargs))


def load_npz(path) -> dict[str, np.ndarray]:
  """All arrays of an ``.npz`` file, read into memory."""
  with epath.Path(path).open("rb") as f, np.load(f) as data:
    return dict(data)


def save_npz(path, **arrays) -> None:
  """``np.savez`` to `path` exactly (no ``.npz`` appended); the parent folder is made."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    np.savez(f, **arrays)
