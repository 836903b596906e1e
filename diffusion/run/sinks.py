"""Where a run's metrics go: ``metrics.jsonl`` and, if on, a wandb run.

- ``metrics.jsonl``: one JSON object per logged step (`MetricWriter`,
  read back by `read_metrics`).
- ``wandb_id.txt`` and ``wandb/``: with ``config.wandb.mode`` "offline" or
  "online", a wandb run (`WandbHook`) whose id is kept in ``wandb_id.txt`` so a
  resumed run continues the same wandb run; offline runs land in
  ``wandb/offline-run-*`` (upload later with ``wandb sync``). wandb writes its
  files itself, so a wandb run needs a local workdir.

Rows and the wandb config go through `redact.redact` first. Only process 0
writes; every other process gets sinks that do nothing, so the training loop
calls them unconditionally. Made in `train_and_evaluate` and passed down (no
module-level state). Paths: `workdir.Workdir`.
"""
from __future__ import annotations

import json
import math
import os
import secrets as secrets_lib
import sys
from typing import Any, Mapping

import jax
import numpy as np

from diffusion.run import redact as redact_lib
from diffusion.run.workdir import Workdir, is_local, write_text

WANDB_MODES = ("disabled", "offline", "online")


def _to_python(value: Any) -> Any:
  value = np.asarray(value)
  if value.ndim == 0:
    value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value
  return value.tolist()


class MetricWriter:
  """Appends one JSON object per logged step to ``workdir/metrics.jsonl``.

  Rows look like ``{"step": 100, "loss": 0.05, "grad_norm": 0.3, ...}``;
  non-finite floats are written as null (JSON has no NaN); rows are `redact`ed.
  With ``config.wandb.mode`` offline/online, rows and images also go to wandb
  (`WandbHook`). A run resumed at `start_step` first drops the rows of later
  steps (logged after the last checkpoint by an interrupted run; rewritten
  atomically), then appends.
  """

  def __init__(self, workdir, config=None, start_step: int = 0,
               enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = Workdir(workdir).metrics_file
    self._wandb = WandbHook(config, self.enabled, workdir=workdir)
    if self.enabled and self.path.exists():
      rows = [r for r in read_metrics(workdir) if r["step"] <= start_step]
      write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _to_python(v) for k, v in metrics.items()})
    row = redact_lib.redact(row)
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")
    self._wandb.log(step, row)

  def write_image(self, step: int, name: str, path) -> None:
    """Reports an image already saved at `path` (for wandb; JSONL has none)."""
    if self.enabled:
      self._wandb.log_image(step, name, path)

  def close(self) -> None:
    self._wandb.close()


def read_metrics(workdir) -> list[dict]:
  """The rows of ``workdir/metrics.jsonl`` (empty if there is none)."""
  path = Workdir(workdir).metrics_file
  if not path.exists():
    return []
  with path.open() as f:
    return [json.loads(line) for line in f if line.strip()]


def _wandb_section(config):
  """`config.wandb` of a full config; a bare wandb section is accepted too."""
  if config is None:
    return None
  return config.wandb if "wandb" in config else config


def check_wandb_config(config) -> str:
  """Returns ``config.wandb.mode``; ValueError naming the valid modes if unknown."""
  wb = _wandb_section(config)
  mode = "disabled" if wb is None else wb.mode
  if mode not in WANDB_MODES:
    raise ValueError(f"config.wandb.mode={mode!r} is unknown; valid: {', '.join(WANDB_MODES)}")
  return mode


JOB_TYPES = ("train", "eval")


def wandb_run_id(workdir, job_type: str = "train") -> str:
  """The wandb run id kept in ``workdir/wandb_id.txt`` (``wandb_id_eval.txt`` for the
  eval run), made and saved on first use. A training run started by a wandb sweep
  agent (``WANDB_SWEEP_ID`` and ``WANDB_RUN_ID`` set) takes the agent's id, so the
  agent's run is the one that trains."""
  path = Workdir(workdir).wandb_id_file
  if job_type != "train":
    path = path.parent / f"wandb_id_{job_type}.txt"
  agent_id = os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None
  if agent_id and job_type == "train":
    write_text(path, agent_id + "\n")
    return agent_id
  if path.exists():
    run_id = path.read_text().strip()
    if run_id:
      return run_id
  alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"  # wandb's own id alphabet.
  run_id = "".join(secrets_lib.choice(alphabet) for _ in range(8))
  write_text(path, run_id + "\n")
  return run_id


def _tags(tags) -> list[str]:
  if isinstance(tags, str):  # --config.wandb.tags=a,b
    return [t.strip() for t in tags.split(",") if t.strip()]
  return [str(t) for t in tags or ()]


class WandbHook:
  """Sends metric rows and images to a wandb run, or does nothing.

  With ``config.wandb.mode`` "offline" or "online", `enabled` and on process 0,
  starts ``wandb.init(project, group, job_type, tags, notes, name, mode, dir=workdir,
  config=<the flattened, redacted config>, id=<workdir/wandb_id.txt>,
  resume="allow")``: a resumed run continues the same wandb run. `name`
  defaults to the workdir's basename, an empty `group` to none; all of them
  are `redact`ed (a secret typed as the run name is masked too). Offline runs
  are written to ``workdir/wandb/offline-run-*`` (images under
  ``files/media/images/``); upload them with ``wandb sync``. With "disabled"
  (or elsewhere) it is a no-op and wandb is not imported. The workdir must be
  local (wandb writes there itself): ValueError for a ``gs://`` one.

  Resuming after a crash: steps logged after the last checkpoint are logged
  again; wandb (online) ignores steps below the run's last one, with a warning.
  """

  def __init__(self, config, enabled: bool, workdir=None, job_type: str = "train"):
    if job_type not in JOB_TYPES:
      raise ValueError(f"job_type={job_type!r} is not one of {', '.join(JOB_TYPES)}")
    mode = check_wandb_config(config)
    self._run = None
    self._wandb = None
    self.run_id = None
    self.job_type = job_type
    if mode == "disabled" or not enabled or jax.process_index() != 0:
      return
    if workdir is None or not is_local(workdir):
      raise ValueError(f"config.wandb.mode={mode!r} needs a local workdir for the wandb run, "
                       f"got {workdir!r}")
    wb = _wandb_section(config)
    if "wandb" in config:
      run_config = redact_lib.flatten(redact_lib.redacted_config(config))
    else:  # Only the wandb section was given.
      run_config = redact_lib.flatten({"wandb": redact_lib.redacted_config(config)})
    import wandb  # pylint: disable=g-import-not-at-top  (only when wandb is on)
    self._wandb = wandb
    self.run_id = wandb_run_id(workdir, job_type)  # Makes the workdir.
    # wandb's metadata records sys.argv: leave it out when that holds a secret.
    holds_secret = redact_lib.argv_holds_secret(sys.argv[1:])
    settings = wandb.Settings(x_disable_meta=True) if holds_secret else None
    workdir = os.fspath(workdir)
    # Every value that leaves the process is redacted, not only the config.
    clean = redact_lib.redact({
        "project": wb.project or None, "group": wb.group or None, "tags": _tags(wb.tags),
        "notes": wb.get("notes", "") or None,
        "name": wb.name or os.path.basename(os.path.normpath(os.path.abspath(workdir)))})
    self._run = wandb.init(
        project=clean["project"],
        group=clean["group"],
        job_type=job_type,
        tags=clean["tags"],
        notes=clean["notes"],
        name=clean["name"],
        mode=mode,
        dir=workdir,
        config=run_config,
        resume="allow",
        id=self.run_id,
        save_code=False,
        settings=settings,
    )
    if job_type == "eval":
      # Eval rows carry their checkpoint's step as "eval/step" and are plotted against
      # it; wandb's own step just counts rows, so an earlier checkpoint evaluated after
      # a later one is kept, not dropped as a step that went backwards.
      self._run.define_metric("eval/step")
      self._run.define_metric("eval/*", step_metric="eval/step")

  @property
  def active(self) -> bool:
    return self._run is not None

  def log(self, step: int, row: Mapping[str, Any]) -> None:
    if self._run is None:
      return
    data = {k: v for k, v in redact_lib.redact(row).items() if k != "step" and v is not None}
    if data and self.job_type == "eval":
      self._run.log({"eval/step": int(step), **data})
    elif data:
      self._run.log(data, step=int(step))

  def log_image(self, step: int, name: str, path) -> None:
    if self._run is not None:
      self._run.log({name: self._wandb.Image(os.fspath(path))}, step=int(step))

  def close(self) -> None:
    if self._run is not None:
      run, self._run = self._run, None
      run.finish()
