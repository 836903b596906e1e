"""Secrets never land on disk: what is masked before a row or config is written.

config.json, metrics.jsonl rows and the wandb config all go through `redact`,
which masks values under credential-like keys (`is_secret_key`) and any string
holding the value of a credential-like environment variable (`secret_values`).
`redacted_config` is a config as it goes to disk (`flatten`: with dotted
keys); `argv_holds_secret` tells whether the command line holds a secret
(wandb records ``sys.argv``).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

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
  wandb records ``sys.argv`` in its run metadata, so `sinks.WandbHook` then
  turns wandb's metadata off.
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


def redacted_config(config) -> dict:
  """The config as JSON would give it back (tuples become lists), `redact`ed."""
  return redact(json.loads(config.to_json()))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (dotted keys; lists stay values)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out
