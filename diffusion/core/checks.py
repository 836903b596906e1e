"""Argument checks shared by the whole package: one message shape per kind of error.

- `choice`: a name that must be one of a list ("unknown sampler 'x'; valid: [...]");
- `setting`: a config-like ``key=value`` that must be one of a list;
- `check_t`: per-example times ``[B]`` for ``x [B, ...]``;
- `parse_value`: command-line text as a bool / int / float / str;
- `number`: a numeric config value in a range;
- the two error classes of the command line: `ConfigError` (a config key,
  value or file that cannot work: ``diffusion.main`` exits 2) and `RunError`
  (a run that was set up right failed: bad data, a busy workdir, damaged
  checkpoints: exit 1); `config_errors` turns the ValueError / TypeError /
  KeyError of a set-up phase into ConfigError.
"""
from __future__ import annotations

import contextlib
import math

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


class ConfigError(ValueError):
  """A config key, value or file that cannot work; the message names the key.

  A ValueError, so code that catches ValueError keeps working. ``diffusion.main``
  prints it as one line and exits 2.
  """


class RunError(RuntimeError):
  """A correctly configured run that cannot go on: unreadable data, a workdir held by
  another writer, no intact checkpoint. ``diffusion.main`` prints one line, exits 1."""


@contextlib.contextmanager
def config_errors():
  """Re-raises the ValueError / TypeError / KeyError of the block as `ConfigError`.

  For the set-up phase of a mode (config checks, building data and model,
  reading the workdir's config.json), where such an error means the config
  cannot work; so does a FileNotFoundError raised with a message only (a
  check naming the key of a missing file). `RunError` and the OS's errors
  pass unchanged. The original stays
  the ``__cause__`` (``--debug`` shows it).
  """
  try:
    yield
  except (ConfigError, RunError):
    raise
  except KeyError as e:  # str(KeyError) adds quotes around the message.
    raise ConfigError(e.args[0] if e.args else repr(e)) from e
  except FileNotFoundError as e:
    if e.errno is not None:  # The OS's own: a runtime failure, not a config check.
      raise
    raise ConfigError(str(e)) from e  # A check's message naming the config key.
  except (ValueError, TypeError) as e:
    raise ConfigError(str(e)) from e


def choice(value, valid, name: str) -> None:
  """ValueError ``unknown <name> <value>; valid: [...]`` unless ``value in valid``
  (the list in the order given: pass ``sorted(...)`` for an alphabetical one)."""
  if value not in valid:
    raise ValueError(f"unknown {name} {value!r}; valid: {list(valid)}")


def setting(value, valid, key: str) -> None:
  """ValueError ``<key>=<value> is not valid; valid: a, b`` unless ``value in valid``."""
  if value not in valid:
    raise ValueError(f"{key}={value!r} is not valid; valid: {', '.join(map(str, valid))}")


def check_t(x, t, what: str = "t") -> None:
  """Raises ValueError unless ``t`` is ``[B]`` for ``x`` ``[B, ...]``."""
  shape = getattr(t, "shape", None)
  if shape is None or len(shape) != 1 or shape[0] != x.shape[0]:
    raise ValueError(f"{what} must have shape [B] = [{x.shape[0]}] for x of shape {x.shape}; "
                     f"got {shape}")


def parse_value(text: str, kind: type):
  """`text` as `kind` (bool: true/1/yes or false/0/no; int; float; str).

  Raises ValueError(``"is not a <kind>: <why>"``): callers put the key in front.
  """
  try:
    if kind is bool:
      if text.lower() not in TRUE + FALSE:
        raise ValueError(f"expected one of {TRUE + FALSE}")
      return text.lower() in TRUE
    if kind in (int, float, str):
      return kind(text)
  except ValueError as e:
    raise ValueError(f"is not a {kind.__name__}: {e}") from None
  raise ValueError(f"has type {kind.__name__}, which cannot be given as text")


def why(error: BaseException, limit: int = 300) -> str:
  """One line for an exception inside a message: its type and the first line of its
  text (at most `limit` characters)."""
  text = str(error).strip().splitlines()
  first = text[0][:limit] if text else ""
  return f"{type(error).__name__}: {first}" if first else type(error).__name__


def number(value, key: str, *, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
           integer: bool = False) -> None:
  """`ConfigError` naming `key` unless `value` is a (finite) number in the range.

  ``lo`` / ``hi`` are the bounds (None: unbounded), closed unless ``lo_open`` /
  ``hi_open``; ``integer`` asks for an int (a bool is neither).
  """
  kind = "an int" if integer else "a number"
  ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
  if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
    raise ConfigError(f"{key}={value!r} must be {kind}")
  low_ok = lo is None or (value > lo if lo_open else value >= lo)
  high_ok = hi is None or (value < hi if hi_open else value <= hi)
  if not (low_ok and high_ok):
    if lo is not None and hi is not None:
      allowed = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
      allowed = f"{'>' if lo_open else '>='} {lo}"
    else:
      allowed = f"{'<' if hi_open else '<='} {hi}"
    raise ConfigError(f"{key}={value!r} must be {kind} {allowed}")
