"""Multi-process start-up and the host-side collectives of a run's control flow.

`initialize_distributed` starts ``jax.distributed`` when the arguments or the
environment name a multi-process job (otherwise one process: nothing);
`barrier` lines the processes up before a first collective; `any_process`
and `same_on_all_processes` share one boolean (a stop request, "this result
exists") between them. Each is a collective with several processes (every
process must call it, in the same order) and free with one.
"""
from __future__ import annotations

import os

import jax
import numpy as np

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


def _process_flags(flag: bool) -> np.ndarray:
  """int32 ``[process_count]``: every process's `flag`, in process order."""
  if jax.process_count() == 1:
    return np.array([flag], np.int32)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(np.int32(flag)))


def any_process(flag: bool) -> bool:
  """True if `flag` is set on any process (a collective with several processes)."""
  return bool(np.any(_process_flags(flag)))


def same_on_all_processes(flag: bool, what: str) -> bool:
  """`flag`, checked to be the same on every process (a collective with several).

  For a decision all processes must take alike (skip a step or run it: it has
  collectives). `what` names the flag's subject for the error, e.g. the path
  whose existence it is.

  Raises:
    RuntimeError: the processes disagree; names `what` and which processes
      hold True and which False.
  """
  flags = _process_flags(flag)
  if flags.min() != flags.max():
    raise RuntimeError(
        f"processes disagree on {what}: True on {np.flatnonzero(flags).tolist()}, False on "
        f"{np.flatnonzero(flags == 0).tolist()}; they must all see the same (for a path: "
        "one workdir on a shared filesystem)")
  return bool(flag)
