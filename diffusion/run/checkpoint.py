"""A thin wrapper of Orbax's CheckpointManager for (train state, data state).

Each checkpoint step directory holds two items: ``state`` (the `TrainState`
pytree, Orbax StandardSave) and ``data`` (the data iterator's JSON state), so a
resumed run continues with the same parameters, optimizer, EMA, rng *and*
batches. Saves are asynchronous: `save` returns once the arrays are copied off
the devices; call `wait_until_finished` (or `close`) before reading the files.
All processes must call `save` and `restore` (Orbax coordinates them). The
directory is an `etils.epath.Path`: a ``gs://`` one works as Orbax's does.

A checkpoint is never trusted blindly. `save` records a CRC32 of every array
of the state (its host bytes) in the data item (`CHECKSUM_KEY`); `restore`
checks that the restored arrays have those checksums and are all finite, and
that the checkpoint's array tree fits the target's (else `checks.ConfigError`:
the config builds another model). Damage (an unreadable or missing file, a
flipped byte, a NaN) raises `CheckpointDamaged`; `restore_latest` then tries
the next older checkpoint, and in a writer's workdir moves the damaged step
folder aside to ``<set_aside>/<step>`` (renamed, never deleted), warning with
both steps. Checkpoints written before checksums existed are checked for
finiteness only.
"""
from __future__ import annotations

import contextlib
import os
import re
import zlib
from typing import Any, Callable

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from diffusion.core import checks
from diffusion.dist import cluster
from diffusion.run.workdir import is_local

PyTree = Any
# The key of the data item (a JSON dict) that holds the state's checksums.
CHECKSUM_KEY = "state_crc32"


class CheckpointWriteError(checks.RunError):
  """A checkpoint could not be written (a full disk, a lost mount); the message names
  the step, the file and the last checkpoint that was written whole."""


def _write_reason(e: BaseException) -> str:
  """tensorstore's long write errors shortened to ``<OS reason>: <file>``."""
  text = str(e)
  found = re.search(r'Failed writing: "([^"]+)": (?:Failed to write \d+ bytes to file \d+: )?'
                    r"([^\[]+?)\s*\[os_error_code", text)
  return f"{found.group(2)}: {found.group(1)}" if found else checks.why(e)


class CheckpointDamaged(checks.RunError):
  """A checkpoint that cannot be read or does not verify; `reason` says why."""

  def __init__(self, step: int, directory, reason: str):
    super().__init__(f"checkpoint {step} in {directory} is damaged: {reason}")
    self.step, self.reason = step, reason


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def named_leaves(tree) -> dict[str, Any]:
  """``{"params/conv_in/kernel": leaf, ...}``: the same names for a TrainState and
  for the nested dicts Orbax's metadata gives back."""
  return {"/".join(_key_name(k) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _host(leaf) -> np.ndarray | None:
  """A leaf's full value on this host (a replicated array's local copy); None
  when this process does not hold all of it (a sharded array)."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    shard = leaf.addressable_shards[0]
    return np.asarray(shard.data) if shard.data.shape == leaf.shape else None
  return np.asarray(leaf)


def _crc(array: np.ndarray) -> str:
  return f"{zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1)):08x}"


def checksums(state: PyTree) -> dict[str, str]:
  """``{leaf name: CRC32 hex of its bytes}`` over the leaves this host holds whole."""
  out = {}
  for name, leaf in named_leaves(state).items():
    value = _host(leaf)
    if value is not None:
      out[name] = _crc(value)
  return out


def verify(state: PyTree, expected: dict[str, str] | None) -> str | None:
  """Why `state` is damaged (a non-finite value, a checksum mismatch), or None."""
  for name, leaf in named_leaves(state).items():
    value = _host(leaf)
    if value is None:
      continue
    if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
      bad = int(np.size(value) - np.isfinite(value).sum())
      return f"{name} holds {bad} non-finite values of {value.size}"
    if expected is not None and name in expected and _crc(value) != expected[name]:
      return f"{name} does not match its checksum (its bytes changed after saving)"
  return None


class Checkpointer:
  """Saves and restores ``(state, data_state)`` under `directory`.

  Args:
    directory: where the step directories go (created if missing): a str,
      os.PathLike or epath.Path (``gs://...`` too); a local one is made absolute.
    max_to_keep: the number of most recent checkpoints kept; None keeps all.
  """

  def __init__(self, directory, max_to_keep: int | None = 3):
    local = is_local(directory)
    self.directory = epath.Path(os.path.abspath(directory) if local else directory)
    if max_to_keep is not None and max_to_keep < 1:
      raise checks.ConfigError(f"max_to_keep={max_to_keep} would keep no checkpoint; "
                               "it must be >= 1 (or None: all)")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()})
    _quiet_late_callbacks()

  def all_steps(self) -> list[int]:
    """The steps of the checkpoints on disk, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, data_state: dict | None = None) -> None:
    """Saves a checkpoint at `step` (a no-op if that step is already saved)."""
    if step in self._manager.all_steps():
      return
    data = dict(data_state or {})
    data[CHECKSUM_KEY] = checksums(state)
    with self._writing(step):
      self._manager.save(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)))

  @contextlib.contextmanager
  def _writing(self, step: int | None):
    """Turns a failed (possibly earlier, asynchronous) save into `CheckpointWriteError`."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  (tensorstore / Orbax / OS errors)
      try:
        good = self._manager.all_steps()
      except Exception:  # pylint: disable=broad-except
        good = []
      reason = _write_reason(e)
      failed = re.search(r"/(\d+)\.orbax-checkpoint-tmp", reason)  # An earlier async save.
      step = int(failed.group(1)) if failed else step
      which = "a checkpoint" if step is None else f"checkpoint {step}"
      last = f"step {max(good)}" if good else "none"
      raise CheckpointWriteError(
          f"could not write {which} in {self.directory} ({reason}); the last good "
          f"checkpoint is {last}: free space (or fix the mount) and run the same command to "
          "resume") from e

  def check_fits(self, step: int, target: PyTree) -> None:
    """`checks.ConfigError` if checkpoint `step`'s arrays differ from `target`'s in
    names or shapes (the config builds another model); `CheckpointDamaged` if its
    metadata cannot be read."""
    try:
      saved = named_leaves(self._manager.item_metadata(int(step))["state"])
    except Exception as e:  # pylint: disable=broad-except  (any unreadable metadata)
      raise CheckpointDamaged(step, self.directory, checks.why(e)) from e
    if not saved:  # Orbax reads a deleted or empty _METADATA as an empty tree.
      raise CheckpointDamaged(step, self.directory, "its array metadata (_METADATA) is missing")
    wanted = named_leaves(target)
    diffs = [f"{n} is missing" for n in sorted(set(wanted) - set(saved))]
    diffs += [f"{n} is not in this model" for n in sorted(set(saved) - set(wanted))]
    diffs += [f"{n} is {tuple(saved[n].shape)} there, {tuple(wanted[n].shape)} here"
              for n in sorted(set(saved) & set(wanted))
              if tuple(saved[n].shape) != tuple(wanted[n].shape)]
    if diffs:
      more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
      raise checks.ConfigError(
          f"checkpoint {step} in {self.directory} holds another model than this config "
          f"builds: {diffs[0]}{more}; train a changed model in a new --workdir")

  def restore(self, step: int, target: PyTree | None = None) -> tuple[PyTree, dict]:
    """Restores checkpoint `step` into the structure, shapes and shardings of `target`,
    and verifies it (module doc): `CheckpointDamaged` if it cannot be read or
    verified, `checks.ConfigError` if it holds another model than `target`.

    Args:
      step: a step from `all_steps()`.
      target: a state of the checkpointed structure (arrays or
        ShapeDtypeStructs with shardings); only its metadata is used. With
        several processes, its shardings must span all of them (e.g.
        replicated on the global mesh). None restores the saved tree as nested
        dicts on the first local device (for inspection; whatever the devices
        and processes that saved it).

    Returns:
      ``(state, data_state)``.
    """
    if step not in self._manager.all_steps():
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}")
    try:
      if target is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        metadata = self._manager.item_metadata(int(step))["state"]
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
      else:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointDamaged(step, self.directory, checks.why(e)) from e
    if target is not None:
      self.check_fits(step, abstract)
    try:
      restored = self._manager.restore(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (Orbax / tensorstore / JSON errors)
      raise CheckpointDamaged(step, self.directory, checks.why(e)) from e
    data = dict(restored["data"] or {})
    expected = data.pop(CHECKSUM_KEY, None)
    reason = verify(restored["state"], expected if isinstance(expected, dict) else None)
    if reason is not None:
      raise CheckpointDamaged(step, self.directory, reason)
    return restored["state"], data

  def restore_latest(self, target: PyTree | None = None, *, set_aside=None,
                     warn: Callable[[str], None] = print) -> tuple[int, PyTree, dict] | None:
    """``(step, state, data_state)`` of the newest checkpoint that restores and
    verifies; None when there is no checkpoint.

    A damaged one is reported through `warn` and skipped; with `set_aside` (a
    folder: a writer's workdir) its step folder is first moved to
    ``<set_aside>/<step>`` (``<step>.1``, ... if taken), by process 0, so the
    run continues from the older one and later saves do not collide. When
    every checkpoint is damaged: `checks.RunError` naming each and why, with
    nothing moved. A checkpoint of another model (`check_fits`) is not damage:
    its `checks.ConfigError` propagates.
    """
    damaged = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, data = self.restore(step, target)
      except CheckpointDamaged as e:
        cluster.any_process(True)  # Every process asks once per step, in the same order.
        damaged.append(e)
        continue
      if cluster.any_process(False):  # Another process could not restore it.
        damaged.append(CheckpointDamaged(step, self.directory, "another process failed"))
        continue
      for bad in damaged:
        moved = self._set_aside(bad.step, set_aside) if set_aside is not None else None
        where = f"moved it to {moved}" if moved else "left it in place"
        warn(f"warning: checkpoint {bad.step} is damaged ({bad.reason}); {where} and "
             f"restored checkpoint {step} instead")
      if damaged and set_aside is not None:
        self._manager.reload()
      return step, state, data
    if damaged:
      reasons = "; ".join(f"{e.step}: {e.reason}" for e in damaged)
      raise checks.RunError(
          f"no checkpoint in {self.directory} restores intact ({reasons}); move them away to "
          "train from step 0, or use another --workdir")
    return None

  def _set_aside(self, step: int, folder) -> epath.Path:
    folder = epath.Path(folder)
    target = folder / str(step)
    n = 0
    while target.exists():
      n += 1
      target = folder / f"{step}.{n}"
    if jax.process_index() == 0:
      folder.mkdir(parents=True, exist_ok=True)
      (self.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      cluster.barrier(f"set_aside_{step}")
    return target

  def wait_until_finished(self) -> None:
    with self._writing(None):
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    with self._writing(None):
      self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _quiet_late_callbacks() -> None:
  """Silences the reads and writes a failed restore or save leaves running.

  When an Orbax restore or save fails part-way, tensorstore still completes
  its other operations and hands each result to an asyncio loop that Orbax has
  closed; each prints "RuntimeError: Event loop is closed" (through
  `sys.excepthook` for reads, `sys.unraisablehook` for writes: hundreds of
  tracebacks for one damaged or unwritable file). This wraps both hooks once
  to drop exactly that error and pass every other one on; the failure itself
  still raises (`CheckpointDamaged`, `CheckpointWriteError`).
  """
  import sys  # pylint: disable=g-import-not-at-top
  if getattr(sys.excepthook, "_drops_closed_loop", False):
    return
  closed = lambda kind, value: kind is RuntimeError and str(value) == "Event loop is closed"
  hook, unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(kind, value, tb):
    if not closed(kind, value):
      hook(kind, value, tb)

  def unraisablehook(record):
    if not closed(record.exc_type, record.exc_value):
      unraisable(record)

  excepthook._drops_closed_loop = True  # pylint: disable=protected-access
  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
