"""Resumable results of `--mode eval`: one JSON file per finished piece of work.

A piece (a sampler round, bits/dim) is done when its file exists and holds the
identity it was asked for (checkpoint step, N, extractor, ...). Every process
must agree (they all skip it or all run it: it has collectives), so the check
goes through `cluster.same_on_all_processes`; process 0 writes.
"""
from __future__ import annotations

import jax

from diffusion.dist import cluster
from diffusion.run.workdir import read_json, write_json


def load_done(path, ident: dict):
  """The saved result at `path` if it matches every item of `ident`, else None;
  the same answer on every process (RuntimeError naming `path` otherwise)."""
  row = read_json(path) if path.exists() else None
  done = row is not None and all(row.get(k) == v for k, v in ident.items())
  return row if cluster.same_on_all_processes(done, path) else None


def save(path, row: dict) -> None:
  """Writes `row` to `path` atomically on process 0."""
  if jax.process_index() == 0:
    write_json(path, row, indent=2)
