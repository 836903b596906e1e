"""One command line for every entry point: absl flags + ml_collections' config file.

`python -m diffusion.main`, `python -m diffusion.classify` and `python -m
diffusion.figures` all take ``--config file.py[:variant]`` with ``--config.a.b=v``
overrides (`ml_collections.config_flags`, the config locked, so an unknown key
fails), and report a bad flag, config file, variant or override as one line
``error: ...`` with exit code 2 (`parse_error`). `parse` is the form for the
entry points other than main: its flags live in a `flags.FlagValues` of their
own, so it can run more than once in a process (the tests call it).
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable

from absl import flags
from ml_collections import config_flags

USAGE_EXIT = 2


def config_arg(argv) -> str | None:
  """The value of ``--config`` in `argv` (``--config=X`` or ``--config X``)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def override_of(argv, key: str) -> str:
  """``config.a.<key>``: the part of the ``--config.a.<key>...`` flag of `argv` up to
  the segment `key` (for messages)."""
  for arg in argv:
    parts = arg.split("=", 1)[0].lstrip("-").split(".")
    if parts[0] == "config" and key in parts[1:]:
      return ".".join(parts[:parts.index(key, 1) + 1])
  return f"config.{key}"


def parse_error(error: BaseException, argv) -> str:
  """The one line for an error raised while absl parsed `argv` (flags, the config
  file, its variant, the overrides)."""
  text = str(error)
  unknown = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  if unknown:
    return f"{override_of(argv, unknown.group(2))}: no such key; did you mean {unknown.group(1)}?"
  if isinstance(error, (KeyError, AttributeError)):
    key = re.sub(r"[\\'\"]", "", text).split()[0] if text.strip() else "?"
    return f"{override_of(argv, key)}: no such key"
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if "Traceback (most recent call last)" in text or "Failed loading config file" in text:
    # config_flags quotes the config file's own error last, after its traceback.
    last = lines[-1]
    return f"{config_arg(argv[1:])}: {re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', last)}"
  return " ".join(lines)


def check_config_file(argv) -> str | None:
  """The one line for a ``--config`` file that does not exist, or None."""
  arg = config_arg(argv[1:])
  if arg is None:
    return None
  path = arg.split(":", 1)[0]
  if os.path.isfile(path):
    return None
  return (f"--config={arg}: no such config file {path!r} (run from the repository root, or "
          "give a path to a configs/*.py file)")


def fail(message: str) -> None:
  print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT)


def parse_values(values: flags.FlagValues, argv, required=("config",),
                 debug: bool = False) -> list[str]:
  """Parses `argv` (its first item the program) into `values`, which hold a
  ``config`` flag of `config_flags`: the config file is loaded (variant and
  overrides applied) and every flag of `required` must be given. Every error,
  an extra argument included, is one line on stderr and exit 2 (with `debug`,
  after its traceback). Returns the remaining arguments (just the program)."""
  missing_file = check_config_file(argv)
  if missing_file:
    fail(missing_file)
  try:
    rest = values(argv)
    if len(rest) > 1:
      raise flags.Error(f"unexpected arguments: {' '.join(rest[1:])} (flags are --name=value)")
    for name in required:
      if values[name].value is None:
        raise flags.Error(f"--{name} is required")
    values.config  # pylint: disable=pointless-statement  (loads the file and its variant)
  except SystemExit:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if debug:
      import traceback  # pylint: disable=g-import-not-at-top
      traceback.print_exception(e)
    unknown = re.search(r"Unknown command line flag '(config\.[\w.]+)'", str(e))
    config = None
    if unknown:
      try:
        config = values["config"].value
      except Exception:  # pylint: disable=broad-except
        config = None
    fail(unknown_key(config, unknown.group(1)) if config is not None else parse_error(e, argv))
  return rest


def parse(argv, define: Callable[[flags.FlagValues], None], prog: str,
          required: tuple[str, ...] = ("config",)) -> flags.FlagValues:
  """Parses ``[prog] + argv`` into a new `flags.FlagValues` holding ``--config``
  (a locked config file with variant and overrides) and the flags `define` adds
  (`parse_values`: every error one line, exit 2). Returns the values
  (``values.config`` is the config). A FlagValues of its own, so it can run
  more than once in a process (the tests call it)."""
  argv = [prog] + list(argv)
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(  # sys_argv: the overrides are read from `argv`.
      "config", None, "experiment config file (file.py or file.py:variant)",
      flag_values=values, lock_config=True, sys_argv=argv)
  define(values)
  parse_values(values, argv, required)
  return values


def unknown_key(config, dotted: str) -> str:
  """``config.a.b: no such key; did you mean c?`` for the first segment of `dotted`
  (``config.a.b.c``) that `config` lacks."""
  import difflib  # pylint: disable=g-import-not-at-top
  node, parts = config, dotted.split(".")[1:]
  for i, part in enumerate(parts):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      close = difflib.get_close_matches(part, keys, n=1)
      hint = f"; did you mean {close[0]}?" if close else ""
      return f"config.{'.'.join(parts[:i + 1])}: no such key{hint}"
    node = node[part]
  return f"{dotted}: not a value that can be set"
