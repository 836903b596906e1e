"""What a run prints on stderr: `echo`ed lines and a tqdm progress bar, on process 0."""
from __future__ import annotations

import sys
from typing import Any, Mapping

import jax
from tqdm import auto as tqdm


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


def progress(iterable, desc: str, unit: str = "it", total: int | None = None):
  """`iterable` with a tqdm bar (ETA) on process 0's stderr; plain elsewhere."""
  return tqdm.tqdm(iterable, desc=desc, unit=unit, total=total, dynamic_ncols=True,
                   file=sys.stderr, disable=jax.process_index() != 0)
