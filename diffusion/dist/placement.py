"""Where a run's arrays live: the 1-D 'data' mesh and the host-side layouts.

`make_mesh` builds ``Mesh(devices, ('data',))`` over every device of every
process, process by process. The layouts of the two compile modes (``B`` =
global batch, ``n`` = devices, ``k`` = steps per call; see
`diffusion.dist.compile`):

  mode   state                          batch, k == 1          batch, k > 1
  pmap   every leaf ``[n, ...]``        ``[n, B/n, ...]``      ``[n, k, B/n, ...]``
  jit    global arrays, replicated      ``[B, ...]`` sharded   ``[k, B, ...]``

`replicate`, `shard_batch` and `unreplicate` convert to and from them;
`shard_batch` takes this process's host batch: with one process the global
``[B, ...]`` (or ``[k, B, ...]``) batch. Several processes (jit mode only):
each passes its own contiguous ``B / process_count`` slice of the global batch
(as `data.create` yields it), assembled into the global ``[B, ...]`` array
with ``jax.make_array_from_process_local_data``; the state is a global array
replicated on every device. `to_host`, `local_rows` and `gather_rows` bring
results back to the host.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from diffusion.train.step import AXIS  # The mesh axis is the one the step averages over.

# How the step is compiled (`diffusion.dist.compile.compile_step`), which fixes
# the layouts above.
MODES = ("pmap", "jit")

PyTree = Any


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over axis 'data', Auto axis type.

  By default all devices of all processes, ordered by (process, id), so that
  process ``p`` holds the ``p``-th contiguous slice of every global batch.
  """
  if devices is None:
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(list(devices)), (AXIS,))


def _num_devices(mesh: Mesh) -> int:
  return mesh.devices.size


def _check_divisible(batch_size: int, n: int) -> None:
  if batch_size % n:
    raise ValueError(
        f"global batch size {batch_size} is not divisible by the number of "
        f"devices {n}")


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of a value held whole by every device of `mesh`."""
  return NamedSharding(mesh, P())


def replicate(state: PyTree, mesh: Mesh, mode: str) -> PyTree:
  """Puts `state` on every device of `mesh` in the layout `mode` expects."""
  _check_mode(mode)
  _check_multiprocess(mesh, mode)
  if mode == "jit":
    sharding = NamedSharding(mesh, P())
    if sharding.is_fully_addressable:
      return jax.device_put(state, sharding)

    def global_copy(x):
      # Every process holds the same value; each fills its own devices.
      if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
      x = np.asarray(jax.device_get(x))
      return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(global_copy, state)
  devices = list(mesh.devices.flat)
  sharding = NamedSharding(mesh, P(AXIS))

  def one(x):
    x = jnp.asarray(x)
    shards = [jax.device_put(x[None], d) for d in devices]
    return jax.make_array_from_single_device_arrays(
        (len(devices),) + x.shape, sharding, shards)

  return jax.tree.map(one, state)


def to_host(tree: PyTree) -> PyTree:
  """numpy copies of `tree`'s arrays, on every process.

  A fully addressable array is fetched; a replicated global one (multi-host)
  gives this process's copy (no communication); any other global array is
  gathered from all processes (a collective: every process must call it).
  """
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def local_rows(x) -> np.ndarray:
  """This process's rows of `x`, an array split on axis 0 over the 'data' mesh.

  A fully addressable array comes back whole. Otherwise the rows held by this
  process's devices, in order: one contiguous block, the process's slice, since
  `make_mesh` orders the devices process by process. No communication.
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  blocks = {}
  for shard in x.addressable_shards:
    start = shard.index[0].start or 0
    blocks.setdefault(start, np.asarray(shard.data))  # Replicas of a block: one copy.
  return np.concatenate([blocks[k] for k in sorted(blocks)])


def gather_rows(local: np.ndarray) -> np.ndarray:
  """The concatenation, in process order, of every process's `local` ``[n, ...]``.

  A collective: every process calls it with the same shape and dtype. With one
  process, `local` itself. Any dtype travels exactly (float64 included, without
  jax_enable_x64): the bytes are sent as uint32 words.
  """
  local = np.ascontiguousarray(local)
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if local.dtype.itemsize % 4:
    raise TypeError(f"gather_rows sends 4-byte words; {local.dtype} has itemsize "
                    f"{local.dtype.itemsize}")
  words = local.reshape(local.shape[0], -1).view(np.uint32)
  out = np.asarray(multihost_utils.process_allgather(words, tiled=True))
  return out.view(local.dtype).reshape((-1,) + local.shape[1:])


def unreplicate(state: PyTree, mode: str) -> PyTree:
  """The inverse of `replicate`: one copy of every leaf."""
  _check_mode(mode)
  if mode == "jit":
    return state
  return jax.tree.map(lambda x: x[0], state)


def shard_batch(batch: PyTree, mesh: Mesh, mode: str, steps_per_call: int = 1) -> PyTree:
  """Splits a global host batch over the devices of `mesh`.

  Args:
    batch: leaves ``[B, ...]``, or ``[k, B, ...]`` when ``steps_per_call = k
      > 1``; numpy or jax arrays. With several processes (jit mode), this
      process's contiguous ``B / process_count`` slice of the global batch
      (`data.create` with its process index); the result is the global
      ``[B, ...]`` array.
    mesh: the 1-D 'data' mesh.
    mode: "pmap" (result ``[n, B/n, ...]`` / ``[n, k, B/n, ...]``) or "jit"
      (same shape as `batch`, sharded over 'data' on the ``B`` axis).
    steps_per_call: k.

  Raises:
    ValueError: ``B`` is not divisible by the device count (names both).
  """
  _check_mode(mode)
  _check_multiprocess(mesh, mode)
  n = _num_devices(mesh)
  baxis = 0 if steps_per_call == 1 else 1
  processes = _num_processes(mesh)
  for x in jax.tree.leaves(batch):
    _check_divisible(x.shape[baxis] * processes, n)
  if mode == "jit":
    spec = P(AXIS) if steps_per_call == 1 else P(None, AXIS)
    sharding = NamedSharding(mesh, spec)
    if processes == 1:
      return jax.device_put(batch, sharding)

    def global_batch(x):
      x = np.asarray(x)
      shape = x.shape[:baxis] + (x.shape[baxis] * processes,) + x.shape[baxis + 1:]
      return jax.make_array_from_process_local_data(sharding, x, shape)

    return jax.tree.map(global_batch, batch)

  def one(x):
    x = np.asarray(x)
    b = x.shape[baxis]
    x = x.reshape(x.shape[:baxis] + (n, b // n) + x.shape[baxis + 1:])
    x = np.moveaxis(x, baxis, 0)  # [n, (k,) B/n, ...]
    return jax.device_put(x, NamedSharding(mesh, P(AXIS)))

  return jax.tree.map(one, batch)


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is unknown; valid: {', '.join(MODES)}")


def _num_processes(mesh: Mesh) -> int:
  return len({d.process_index for d in mesh.devices.flat})


def _check_multiprocess(mesh: Mesh, mode: str) -> None:
  if mode == "pmap" and _num_processes(mesh) > 1:
    raise ValueError(
        f"train.parallel='pmap' runs on one process only; this mesh spans "
        f"{_num_processes(mesh)} processes: use train.parallel='jit' for multi-host")
