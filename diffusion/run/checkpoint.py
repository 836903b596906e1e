"""A thin wrapper of Orbax's CheckpointManager for (train state, data state).

Each checkpoint step directory holds two items: ``state`` (the `TrainState`
pytree, Orbax StandardSave) and ``data`` (the data iterator's JSON state), so a
resumed run continues with the same parameters, optimizer, EMA, rng *and*
batches. Saves are asynchronous: `save` returns once the arrays are copied off
the devices; call `wait_until_finished` (or `close`) before reading the files.
All processes must call `save` and `restore` (Orbax coordinates them). The
directory is an `etils.epath.Path`: a ``gs://`` one works as Orbax's does.
"""
from __future__ import annotations

import os
from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp

from diffusion.run.workdir import is_local

PyTree = Any


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
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()})

  def all_steps(self) -> list[int]:
    """The steps of the checkpoints on disk, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, data_state: dict | None = None) -> None:
    """Saves a checkpoint at `step` (a no-op if that step is already saved)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state or {})))

  def restore(self, step: int, target: PyTree | None = None) -> tuple[PyTree, dict]:
    """Restores checkpoint `step` into the structure, shapes and shardings of `target`.

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
    if target is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      metadata = self._manager.item_metadata(int(step))["state"]
      abstract = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
    else:
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["data"] or {})

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
