"""Secrets never land on disk: what is masked before a row or config is written.

config.json, metrics.jsonl rows and the wandb config all go through `redact`,
which masks string values under credential keys (`is_secret_key`, whole words),
any string holding the value of a credential-like environment variable
(`secret_values`) and strings in common credential formats (`SECRET_PATTERNS`).
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
# A key names a credential if one of its words (split at "_", "-", "." and
# camelCase, lower-cased) is one of these, or two adjacent words make one of
# `SECRET_WORD_PAIRS` ("hf_token", "db-password", "apiKey", "API-Key"). Whole
# words only: "tokenizer", "num_tokens" or "secretary" name no credential.
SECRET_WORDS = frozenset({"token", "tokens", "secret", "secrets", "password", "passwd",
                          "credential", "credentials", "apikey", "passphrase"})
SECRET_WORD_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key"),
                               ("secret", "key"), ("auth", "token")})
# Values in the formats of common credentials, masked under any key: OpenAI /
# Stripe style "sk-...", Hugging Face "hf_...", GitHub "ghp_..." and kin, Slack
# "xox?-...", AWS access key ids.
SECRET_PATTERNS = (
    re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),
    re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
)
# Environment variables whose value is a secret: WANDB_API_KEY and any whose
# name (upper-cased) contains one of these.
SECRET_ENV_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
_MIN_SECRET_LEN = 4  # Shorter env values ("1", "") are not treated as secrets.
_MIN_SUBSTRING_LEN = 8  # Secrets at least this long are also masked inside strings.


def _words(key) -> list[str]:
  text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key))  # camelCase -> camel_Case
  return [w for w in re.split(r"[^A-Za-z0-9]+", text.lower()) if w]


def is_secret_key(key: Any) -> bool:
  """Whether a mapping key names a credential (`SECRET_WORDS`, `SECRET_WORD_PAIRS`)."""
  words = _words(key)
  return (any(w in SECRET_WORDS for w in words)
          or any(pair in SECRET_WORD_PAIRS for pair in zip(words, words[1:])))


def secret_values(environ: Mapping[str, str] | None = None) -> frozenset[str]:
  """The values of WANDB_API_KEY and of env vars named like KEY/TOKEN/SECRET/PASSWORD."""
  environ = os.environ if environ is None else environ
  return frozenset(
      v for name, v in environ.items()
      if len(v) >= _MIN_SECRET_LEN
      and (name == "WANDB_API_KEY" or any(p in name.upper() for p in SECRET_ENV_PARTS)))


def _holds_secret(text: str, secrets: frozenset[str]) -> bool:
  return text in secrets or any(
      len(s) >= _MIN_SUBSTRING_LEN and s in text for s in secrets) or any(
          p.search(text) for p in SECRET_PATTERNS)


def redact(mapping: Mapping[str, Any], secrets: frozenset[str] | None = None) -> dict:
  """A copy of `mapping` (nested dicts/lists too) safe to write to disk.

  Secret *values* are masked, not keys that merely look like credentials:

  - a string under a key that names a credential (`is_secret_key`: ``api_key``,
    ``hf_token``, ``db_password``, ``credentials``...; at any nesting level,
    every string below such a key) becomes ``"<redacted>"`` unless empty;
    numbers and booleans stay (``token_dim=512`` is a hyper-parameter, and the
    resume check must see it change);
  - any string equal to a secret of `secret_values` (by default read from the
    environment now: WANDB_API_KEY and env vars whose name contains
    KEY/TOKEN/SECRET/PASSWORD), containing one of 8+ characters, or holding a
    value in a common credential format (`SECRET_PATTERNS`: ``sk-...``,
    ``hf_...``, ``ghp_...``), under any key, becomes ``"<redacted>"``.

  Keys are kept, so a redacted config still compares equal to itself on resume.
  Accepts ConfigDicts (anything with ``to_dict``) as well as mappings.
  """
  secrets = secret_values() if secrets is None else frozenset(secrets)

  def clean(value, under_secret: bool):
    if hasattr(value, "to_dict") and not isinstance(value, Mapping):
      value = value.to_dict()
    if isinstance(value, Mapping):
      return {k: clean(v, under_secret or is_secret_key(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      cleaned = [clean(v, under_secret) for v in value]
      return cleaned if isinstance(value, list) else tuple(cleaned)
    if isinstance(value, str) and value and (under_secret or _holds_secret(value, secrets)):
      return REDACTED
    return value

  return clean(mapping, False)


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
