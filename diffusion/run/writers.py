"""What a run writes into its workdir besides checkpoints and images.

- ``config.json``: the run's config; `check_config` refuses to resume under a
  config that changes what is trained.
- ``metrics.jsonl``: one JSON object per logged step (`MetricWriter`).
- ``wandb_id.txt`` and ``wandb/``: with ``config.wandb.mode`` "offline" or
  "online", a wandb run (`WandbHook`) whose id is kept in ``wandb_id.txt`` so a
  resumed run continues the same wandb run; offline runs land in
  ``wandb/offline-run-*`` (upload later with ``wandb sync``).
- a tqdm progress bar and `echo`ed messages on stderr.

Secrets never land on disk: config.json, metrics.jsonl rows and the wandb
config all go through `redact`, which masks values under credential-like keys
and any string holding the value of a credential-like environment variable.

Only process 0 writes; every other process gets writers that do nothing, so
the training loop calls them unconditionally. Made in `train_and_evaluate`
and passed down (no module-level state).
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets as secrets_lib
import sys
from typing import Any, Mapping

import jax
import numpy as np
from tqdm import auto as tqdm

WANDB_MODES = ("disabled", "offline", "online")
WANDB_ID_FILE = "wandb_id.txt"

# Keys that may differ from the workdir's config.json without
# --config.allow_config_change: they change how long or how verbosely a run
# trains, or how it samples, not what it trains. A trailing "." is a prefix.
RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.ckpt_every",
                  "train.sample_every", "train.keep_checkpoints", "sample.", "eval.", "wandb.",
                  "allow_config_change")


# --------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------

REDACTED = "<redacted>"
# A key is a credential if, lower-cased with "_" / "-" / "." removed, it
# contains one of these ("api_key", "wandbApiKey", "hf_token", "db-password").
SECRET_KEY_PARTS = ("apikey", "token", "secret", "password", "passwd", "credential")
# Environment variables whose value is a secret: WANDB_API_KEY and any whose
# name (upper-cased) contains one of these.
SECRET_ENV_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
_MIN_SECRET_LEN = 4  # Shorter env values ("1", "") are not treated as secrets.
_MIN_SUBSTRING_LEN = 8  # Secrets at least this long are also masked inside strings.


def is_secret_key(key: Any) -> bool:
  """Whether a mapping key names a credential (see `SECRET_KEY_PARTS`)."""
  return any(p in re.sub(r"[^a-z0-9]", "", str(key).lower()) for p in SECRET_KEY_PARTS)


def secret_values(environ: Mapping[str, str] | None = None) -> frozenset[str]:
  """The values of WANDB_API_KEY and of env vars named like KEY/TOKEN/SECRET/PASSWORD."""
  environ = os.environ if environ is None else environ
  return frozenset(
      v for name, v in environ.items()
      if len(v) >= _MIN_SECRET_LEN
      and (name == "WANDB_API_KEY" or any(p in name.upper() for p in SECRET_ENV_PARTS)))


def _holds_secret(text: str, secrets: frozenset[str]) -> bool:
  return text in secrets or any(
      len(s) >= _MIN_SUBSTRING_LEN and s in text for s in secrets)


def redact(mapping: Mapping[str, Any], secrets: frozenset[str] | None = None) -> dict:
  """A copy of `mapping` (nested dicts/lists too) safe to write to disk.

  - the value under any key that looks like a credential (`is_secret_key`:
    api_key, apikey, token, secret, password, credential; case-insensitive, at
    any nesting level) becomes ``"<redacted>"`` unless it is empty/None;
  - any string value equal to a secret of `secret_values` (by default read
    from the environment now: WANDB_API_KEY and env vars whose name contains
    KEY/TOKEN/SECRET/PASSWORD), or containing one of 8+ characters, becomes
    ``"<redacted>"``.

  Keys are kept, so a redacted config still compares equal to itself on resume.
  Accepts ConfigDicts (anything with ``to_dict``) as well as mappings. Key
  matching is deliberately broad ("num_tokens" is masked too): a masked
  harmless value costs less than a leaked credential.
  """
  secrets = secret_values() if secrets is None else frozenset(secrets)

  def clean(value):
    if hasattr(value, "to_dict") and not isinstance(value, Mapping):
      value = value.to_dict()
    if isinstance(value, Mapping):
      return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else clean(v))
              for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      cleaned = [clean(v) for v in value]
      return cleaned if isinstance(value, list) else tuple(cleaned)
    if isinstance(value, str) and _holds_secret(value, secrets):
      return REDACTED
    return value

  return clean(mapping)

def argv_holds_secret(argv: list[str], secrets: frozenset[str] | None = None) -> bool:
  """Whether command-line args hold a secret value or a credential-keyed flag.

  ``--config.wandb.api_key=...`` (or ``--config.wandb.api_key ...``) counts;
  wandb records ``sys.argv`` in its run metadata, so `WandbHook` then turns
  wandb's metadata off.
  """
  secrets = secret_values() if secrets is None else frozenset(secrets)
  for i, arg in enumerate(argv):
    if _holds_secret(arg, secrets):
      return True
    if arg.startswith("-"):
      flag, eq, value = arg.lstrip("-").partition("=")
      if is_secret_key(flag.rsplit(".", 1)[-1]) and (value or not eq and i + 1 < len(argv)):
        return True
  return False


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
  """The config as JSON would give it back (tuples become lists), redacted."""
  return redact(json.loads(config.to_json()))


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
  `write`, process 0 then (over)writes config.json with `config` (`redact`ed).
  Also checks ``config.wandb`` (`check_wandb_config`) first.
  """
  check_wandb_config(config)
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
  non-finite floats are written as null (JSON has no NaN); rows are `redact`ed.
  With ``config.wandb.mode`` offline/online, rows and images also go to wandb
  (`WandbHook`). A run resumed at
  `start_step` first drops the rows of later steps (logged after the last
  checkpoint by an interrupted run), then appends.
  """

  def __init__(self, workdir: str, config=None, start_step: int = 0,
               enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._wandb = WandbHook(config, self.enabled, workdir=workdir)
    if self.enabled and os.path.exists(self.path):
      rows = [r for r in read_metrics(workdir) if r["step"] <= start_step]
      with open(self.path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _to_python(v) for k, v in metrics.items()})
    row = redact(row)
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


def wandb_run_id(workdir: str) -> str:
  """The wandb run id kept in ``workdir/wandb_id.txt`` (made and saved on first use)."""
  path = os.path.join(workdir, WANDB_ID_FILE)
  if os.path.exists(path):
    with open(path) as f:
      run_id = f.read().strip()
    if run_id:
      return run_id
  alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"  # wandb's own id alphabet.
  run_id = "".join(secrets_lib.choice(alphabet) for _ in range(8))
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w") as f:
    f.write(run_id + "\n")
  return run_id


def _tags(tags) -> list[str]:
  if isinstance(tags, str):  # --config.wandb.tags=a,b
    return [t.strip() for t in tags.split(",") if t.strip()]
  return [str(t) for t in tags or ()]


class WandbHook:
  """Sends metric rows and images to a wandb run, or does nothing.

  With ``config.wandb.mode`` "offline" or "online", `enabled` and on process 0,
  starts ``wandb.init(project, group, tags, name, mode, dir=workdir,
  config=<the flattened, redacted config>, id=<workdir/wandb_id.txt>,
  resume="allow")``: a resumed run continues the same wandb run. `name`
  defaults to the workdir's basename, an empty `group` to none. Offline runs
  are written to ``workdir/wandb/offline-run-*`` (images under
  ``files/media/images/``); upload them with ``wandb sync``. With "disabled"
  (or elsewhere) it is a no-op and wandb is not imported.

  Resuming after a crash: steps logged after the last checkpoint are logged
  again; wandb (online) ignores steps below the run's last one, with a warning.
  """

  def __init__(self, config, enabled: bool, workdir: str | None = None):
    mode = check_wandb_config(config)
    self._run = None
    self._wandb = None
    self.run_id = None
    if mode == "disabled" or not enabled or jax.process_index() != 0:
      return
    if workdir is None:
      raise ValueError(f"config.wandb.mode={mode!r} needs a workdir for the wandb run")
    wb = _wandb_section(config)
    if "wandb" in config:
      run_config = _flatten(_config_dict(config))
    else:  # Only the wandb section was given.
      run_config = _flatten({"wandb": _config_dict(config)})
    import wandb  # pylint: disable=g-import-not-at-top  (only when wandb is on)
    self._wandb = wandb
    os.makedirs(workdir, exist_ok=True)
    self.run_id = wandb_run_id(workdir)
    # wandb's metadata records sys.argv: leave it out when that holds a secret.
    settings = wandb.Settings(x_disable_meta=True) if argv_holds_secret(sys.argv[1:]) else None
    self._run = wandb.init(
        project=wb.project or None,
        group=wb.group or None,
        tags=_tags(wb.tags),
        name=wb.name or os.path.basename(os.path.normpath(os.path.abspath(workdir))),
        mode=mode,
        dir=workdir,
        config=run_config,
        resume="allow",
        id=self.run_id,
        save_code=False,
        settings=settings,
    )

  @property
  def active(self) -> bool:
    return self._run is not None

  def log(self, step: int, row: Mapping[str, Any]) -> None:
    if self._run is None:
      return
    data = {k: v for k, v in redact(row).items() if k != "step" and v is not None}
    if data:
      self._run.log(data, step=int(step))

  def log_image(self, step: int, name: str, path: str) -> None:
    if self._run is not None:
      self._run.log({name: self._wandb.Image(path)}, step=int(step))

  def close(self) -> None:
    if self._run is not None:
      run, self._run = self._run, None
      run.finish()


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
