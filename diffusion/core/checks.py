"""Argument checks shared by the whole package: one message shape per kind of error.

- `choice`: a name that must be one of a list ("unknown sampler 'x'; valid: [...]");
- `setting`: a config-like ``key=value`` that must be one of a list;
- `check_t`: per-example times ``[B]`` for ``x [B, ...]``;
- `parse_value`: command-line text as a bool / int / float / str.
"""
from __future__ import annotations

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def choice(value, valid, name: str) -> None:
  """ValueError ``unknown <name> <value>; valid: [...]`` unless ``value in valid``
  (the list in the order given: pass ``sorted(...)`` for an alphabetical one)."""
  if value not in valid:
    raise ValueError(f"unknown {name} {value!r}; valid: {list(valid)}")


def setting(value, valid, key: str) -> None:
  """ValueError ``<key>=<value> is not valid; valid: a, b`` unless ``value in valid``."""
  if value not in valid:
    raise ValueError(f"{key}={value!r} is not valid; valid: {', '.join(valid)}")


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
