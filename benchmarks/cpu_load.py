"""What the benchmarks share: the machine's CPU use, to record the other processes' load."""
from __future__ import annotations

import os
import time


def cpu_busy() -> tuple[int, int]:
  """``(busy, total)`` jiffies of all cores so far (/proc/stat, Linux)."""
  with open("/proc/stat") as f:
    v = [int(x) for x in f.readline().split()[1:]]
  return sum(v) - v[3] - v[4], sum(v)


class LoadMeter:
  """The machine's busy share and this process's share of all cores between `__init__`
  and `shares()`; the difference is the other processes' load."""

  def __init__(self):
    self.busy0, self.total0 = cpu_busy()
    self.own0, self.wall0 = time.process_time(), time.perf_counter()

  def shares(self) -> dict:
    busy1, total1 = cpu_busy()
    all_busy = (busy1 - self.busy0) / max(total1 - self.total0, 1)
    own = (time.process_time() - self.own0) / ((time.perf_counter() - self.wall0)
                                               * os.cpu_count())
    return {"machine_busy_share": all_busy, "own_share": own,
            "other_load_share": max(0.0, all_busy - own)}
