"""Data parallelism: a device mesh, one per-device train step, two compilers.

`make_train_step` builds ONE per-device function ``step_fn(state, batch) ->
(state, metrics)`` that averages gradients with ``lax.pmean(..., 'data')``.
`compile_step` compiles it either with ``jax.pmap`` (as score_sde) or with
``jax.jit(jax.shard_map(...))`` over ``Mesh(devices, ('data',))``; both give
the same numbers. Host-side layouts (``B`` = global batch, ``n`` = devices,
``k`` = steps per call):

  mode   state                          batch, k == 1          batch, k > 1
  pmap   every leaf ``[n, ...]``        ``[n, B/n, ...]``      ``[n, k, B/n, ...]``
  jit    global arrays, replicated      ``[B, ...]`` sharded   ``[k, B, ...]``

`CompiledStep.replicate`, `.shard_batch` and `.unreplicate` convert to and
from these layouts; `shard_batch` takes this process's host batch: with one
process the global ``[B, ...]`` (or ``[k, B, ...]``) batch.

Multi-host (jit mode only): `initialize_distributed` starts
``jax.distributed``; the mesh spans ``jax.devices()`` (every device of every
process, process by process), each process passes its own contiguous
``B / process_count`` slice of the global batch to `shard_batch` (as
`data.create` yields it), which assembles the global ``[B, ...]`` array with
``jax.make_array_from_process_local_data``; the state is a global array
replicated on every device. ``lax.axis_index('data')`` is the global device
index, so the per-device keys of the step are distinct across processes and
the numbers equal those of one process with as many devices. Metrics come back without a device axis in both
modes: scalars ``[]``, or ``[k]`` (one value per step) when ``k > 1``.

Mixed precision: with ``precision="bfloat16"`` the parameters stay float32
and the activations are bf16 because the caller builds the model with
``dtype=compute_dtype(config.precision)`` (Flax casts params per op). The
batch is not cast here; the loss is cast to float32 and the gradients have the
params' dtype (float32), so the optimizer and the EMA run in float32.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax

from diffusion.train import state as ts

AXIS = "data"
MODES = ("pmap", "jit")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

PyTree = Any
StepFn = Callable[[ts.TrainState, PyTree], tuple[ts.TrainState, dict]]


class NonFiniteError(FloatingPointError):
  """A train step produced a non-finite loss or gradient norm."""

  def __init__(self, step: int, metric: str, message: str):
    super().__init__(message)
    self.step = step
    self.metric = metric


def compute_dtype(name: str):
  """Maps a precision name ("float32" | "bfloat16") to the activations' dtype."""
  if name not in DTYPES:
    raise ValueError(f"precision={name!r} is unknown; valid: {', '.join(DTYPES)}")
  return DTYPES[name]


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over axis 'data', Auto axis type.

  By default all devices of all processes, ordered by (process, id), so that
  process ``p`` holds the ``p``-th contiguous slice of every global batch.
  """
  if devices is None:
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(list(devices)), (AXIS,))


# Environment variables that say "this is one worker of a multi-process job".
DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "DIFFUSION_DISTRIBUTED")


def _cluster_detected(environ) -> str | None:
  """The reason to auto-initialize `jax.distributed`, or None (one process)."""
  for name in DISTRIBUTED_ENV:
    if environ.get(name) not in (None, "", "0"):
      return name
  if int(environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in environ:
    return "SLURM_NTASKS"
  for name in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):
    if len([h for h in environ.get(name, "").split(",") if h]) > 1:
      return name
  return None


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, *,
                           heartbeat_timeout_seconds: int = 30,
                           initialization_timeout: int = 300,
                           environ=None) -> bool:
  """Starts ``jax.distributed`` when this is one process of several.

  Call it before anything else touches JAX's devices. It initializes when

  - any argument is given (explicit: all three are then required, e.g.
    ``launch.sh multiprocess`` on one machine); or
  - the environment names a cluster, and then calls
    ``jax.distributed.initialize()`` without arguments so that JAX detects
    the rest: ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``), a SLURM job with ``SLURM_NTASKS > 1``, a TPU pod
    whose ``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES`` lists several
    workers, or ``DIFFUSION_DISTRIBUTED=1`` (any environment JAX
    auto-detects, e.g. a TPU VM pod through its metadata server: `launch.sh
    tpu` sets it).

  Otherwise it does nothing (a single process). CPU collectives use gloo.

  A process that dies is noticed by the others within about
  `heartbeat_timeout_seconds` (JAX's coordination service then terminates
  them with an error) or at once, when a collective loses its peer.

  Returns:
    True if ``jax.distributed`` was initialized here.
  """
  environ = os.environ if environ is None else environ
  explicit = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(explicit) and not all(explicit):
    raise ValueError(
        "multi-process needs all of coordinator_address, num_processes and process_id "
        f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r}); give none "
        "of them to detect a cluster from the environment")
  if not any(explicit) and _cluster_detected(environ) is None:
    return False
  if all(explicit) and not 0 <= process_id < num_processes:
    raise ValueError(f"process_id={process_id} is not in [0, num_processes={num_processes})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             initialization_timeout=initialization_timeout,
                             heartbeat_timeout_seconds=heartbeat_timeout_seconds)
  barrier("diffusion_initialized", initialization_timeout)
  return True


def barrier(name: str, timeout_s: float = 300.0) -> None:
  """Waits until every process reaches `name`, then runs one collective.

  On CPU the first collective over a set of devices sets up gloo, which waits
  only 30 s for the other processes (not configurable). A process still
  importing or compiling (a loaded machine, a compile-cache miss) then fails
  it. JAX's coordination-service barrier waits `timeout_s` instead; the
  collective that follows sets gloo up while the processes are in step. One
  process: nothing.
  """
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  client = distributed.global_state.client
  if client is None or jax.process_count() == 1:
    return
  client.wait_at_barrier(name, int(timeout_s * 1000))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  multihost_utils.sync_global_devices(name)


# --------------------------------------------------------------------------
# The per-device step.
# --------------------------------------------------------------------------


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation,
                    config=None, *, ema_decay_fn=None, lr_fn=None) -> StepFn:
  """Builds the per-device train step; call it only under `compile_step`.

  Args:
    loss_fn: ``loss_fn(params, batch, rng) -> (loss [], metrics dict of
      scalars)`` on this device's part of the batch. The loss must be a mean
      over the examples so that the pmean of per-device losses (and grads) is
      the global-batch mean. `rng` is ``fold_in(fold_in(state.rng, step),
      device_index)``: different on every step and every device.
    tx: the optax transformation (e.g. `train_state.make_optimizer(config)`).
    config: optional ConfigDict; gives the defaults ``ema_decay_fn =
      train_state.ema_decay(., config)`` and ``lr_fn = lr_schedule(config)``.
    ema_decay_fn: ``step -> decay`` or a float; overrides `config`. One of
      `config` and `ema_decay_fn` is required (ValueError otherwise).
    lr_fn: ``step -> lr`` for the "lr" metric, evaluated at ``state.step``;
      optional. (optax counts only applied updates, so after a skipped
      non-finite step the logged lr runs one step ahead of the one used.)

  Returns:
    ``step_fn(state, batch) -> (state, metrics)``. `metrics` holds the pmean'd
    loss, ``grad_norm`` (global norm of the averaged, unclipped grads), ``lr``
    (if known), ``finite`` (1.0 if loss and grad_norm are finite, else 0.0)
    and the pmean'd metrics of `loss_fn`. When not finite, params, opt_state
    and ema_params stay the previous ones; `step` advances in any case.
  """
  if ema_decay_fn is None:
    if config is None:
      raise ValueError("make_train_step needs `config` (with config.ema) or ema_decay_fn")
    ema_decay_fn = lambda step: ts.ema_decay(step, config)
  elif not callable(ema_decay_fn):
    fixed = float(ema_decay_fn)
    ema_decay_fn = lambda step: jnp.float32(fixed)
  if lr_fn is None and config is not None:
    lr_fn = ts.lr_schedule(config)

  def step_fn(state: ts.TrainState, batch: PyTree):
    rng = jax.random.fold_in(state.rng, state.step)
    rng = jax.random.fold_in(rng, lax.axis_index(AXIS))

    def float32_loss(params):
      loss, aux = loss_fn(params, batch, rng)
      return loss.astype(jnp.float32), aux

    (loss, aux), grads = jax.value_and_grad(float32_loss, has_aux=True)(state.params)
    grads, loss, aux = lax.pmean((grads, loss, aux), AXIS)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = ts.ema_update(state.ema_params, params, ema_decay_fn(state.step))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        ema_params=keep(ema_params, state.ema_params),
    )
    metrics = dict(aux)
    metrics.update(loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
    if lr_fn is not None:
      metrics["lr"] = jnp.asarray(lr_fn(state.step), jnp.float32)
    return new_state, metrics

  return step_fn


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
  """Raises `NonFiniteError` if any step in `metrics` was not finite.

  Args:
    metrics: the metrics of one compiled call (scalars, or ``[k]`` arrays for
      ``steps_per_call == k``); fetched to the host here (a sync point).
    step: the state's step *before* that call, i.e. the number of the first
      step in `metrics`; step ``i`` of the call is reported as ``step + i``.
  """
  finite = np.atleast_1d(np.asarray(jax.device_get(metrics["finite"])))
  bad = np.flatnonzero(finite == 0)
  if bad.size == 0:
    return
  i = int(bad[0])
  values = {}
  for name in ("loss", "grad_norm"):
    values[name] = float(np.atleast_1d(np.asarray(jax.device_get(metrics[name])))[i])
  which = [name for name, v in values.items() if not np.isfinite(v)] or ["loss"]
  at = int(step) + i
  raise NonFiniteError(
      at, which[0],
      f"non-finite {' and '.join(which)} at step {at} "
      f"(loss={values['loss']}, grad_norm={values['grad_norm']}); "
      "the update of that step was not applied")


# --------------------------------------------------------------------------
# Placement helpers.
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Compilation.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """A compiled train step plus the placement helpers of its mode.

  Call it as ``state, metrics = compiled(state, batch)`` with `state` from
  `replicate` and `batch` from `shard_batch`; `state` is donated if
  ``donate`` was set (do not reuse the passed-in state).
  """

  fn: Callable
  mode: str
  mesh: Mesh
  steps_per_call: int
  # Several processes: executables compiled ahead, by input shapes (`_synced`).
  _executables: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  @property
  def num_devices(self) -> int:
    return _num_devices(self.mesh)

  def __call__(self, state, batch):
    n = self.num_devices
    k = self.steps_per_call
    for x in jax.tree.leaves(batch):
      if self.mode == "pmap":
        if x.shape[0] != n:
          raise ValueError(
              f"pmap batch leaf has leading axis {x.shape[0]}, expected the number "
              f"of devices {n}; use shard_batch to split a global batch")
      else:
        _check_divisible(x.shape[0 if k == 1 else 1], n)
      if k > 1 and x.shape[1 if self.mode == "pmap" else 0] != k:
        raise ValueError(f"batch leaf {x.shape} lacks the steps_per_call={k} axis")
    fn = self._synced(state, batch) if _num_processes(self.mesh) > 1 else self.fn
    state, metrics = fn(state, batch)
    if self.mode == "pmap":
      metrics = jax.tree.map(lambda m: m[0], metrics)
    return state, metrics

  def _synced(self, state, batch):
    """The step compiled ahead for these shapes, every process past a `barrier`
    before its first run: one process compiling while another loads the step
    from its compile cache must not meet the step's first collective > 30 s
    late (see `barrier`)."""
    # The state's shapes never change; the batch's few leaves name the program.
    key = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(batch))
    if key not in self._executables:
      self._executables[key] = self.fn.lower(state, batch).compile()
      barrier(f"diffusion_step_{len(self._executables)}")
    return self._executables[key]

  def replicate(self, state):
    return replicate(state, self.mesh, self.mode)

  def unreplicate(self, state):
    return unreplicate(state, self.mode)

  def shard_batch(self, batch):
    return shard_batch(batch, self.mesh, self.mode, self.steps_per_call)


def compile_step(step_fn: StepFn, mode: str = "jit", mesh: Mesh | None = None,
                 steps_per_call: int = 1, donate: bool = True) -> CompiledStep:
  """Compiles a per-device `step_fn` for data parallelism over `mesh`.

  Args:
    step_fn: from `make_train_step` (uses ``lax.pmean`` over 'data').
    mode: "pmap" (``jax.pmap``, axis_name 'data') or "jit"
      (``jax.jit(jax.shard_map(...))``, state ``P()``, batch ``P('data')``).
    mesh: the 1-D 'data' mesh; `make_mesh()` (all devices) by default.
    steps_per_call: k; runs k steps per dispatch with ``lax.scan`` (as
      score_sde's n_jitted_steps). The batch then has a k axis (see the module
      docstring) and every metric comes back as ``[k]``, one per step.
    donate: donate the input state's buffers.
  """
  _check_mode(mode)
  if steps_per_call < 1:
    raise ValueError(f"steps_per_call={steps_per_call} must be >= 1")
  mesh = make_mesh() if mesh is None else mesh
  _check_multiprocess(mesh, mode)
  fn = step_fn
  if steps_per_call > 1:
    fn = lambda state, batches: lax.scan(step_fn, state, batches)
  donate_argnums = (0,) if donate else ()
  if mode == "pmap":
    compiled = jax.pmap(fn, axis_name=AXIS, devices=list(mesh.devices.flat),
                        donate_argnums=donate_argnums)
  else:
    batch_spec = P(AXIS) if steps_per_call == 1 else P(None, AXIS)
    # check_vma=False: the state enters replicated (P()) yet every device must
    # take its *local* gradient (then pmean'd), exactly as under pmap. With
    # the check on, autodiff would psum the gradient of the replicated params.
    sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(), batch_spec),
                            out_specs=(P(), P()), check_vma=False)
    compiled = jax.jit(sharded, donate_argnums=donate_argnums)
  return CompiledStep(fn=compiled, mode=mode, mesh=mesh, steps_per_call=steps_per_call)
