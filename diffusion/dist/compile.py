"""Compiles the train step for data parallelism over the 'data' mesh.

`compile_step` takes the per-device ``step_fn(state, batch) -> (state,
metrics)`` of `diffusion.train.step.make_train_step` (which averages with
``lax.pmean(..., 'data')``) and compiles it either with ``jax.pmap`` (as
score_sde) or with ``jax.jit(jax.shard_map(...))`` over the mesh of
`diffusion.dist.placement.make_mesh`; both give the same numbers. The result,
a `CompiledStep`, carries the placement helpers of its mode (the layouts are
in `diffusion.dist.placement`).

Multi-host (jit mode only): ``lax.axis_index('data')`` is the global device
index, so the per-device keys of the step are distinct across processes and
the numbers equal those of one process with as many devices; every process
compiles ahead and meets the others at a `cluster.barrier` before a program's
first run. Metrics come back without a device axis in both modes: scalars
``[]``, or ``[k]`` (one value per step) when ``k > 1``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from diffusion.dist import cluster
from diffusion.dist import placement
from diffusion.train.step import StepFn


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
    return placement._num_devices(self.mesh)

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
        placement._check_divisible(x.shape[0 if k == 1 else 1], n)
      if k > 1 and x.shape[1 if self.mode == "pmap" else 0] != k:
        raise ValueError(f"batch leaf {x.shape} lacks the steps_per_call={k} axis")
    fn = self._synced(state, batch) if placement._num_processes(self.mesh) > 1 else self.fn
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
      cluster.barrier(f"diffusion_step_{len(self._executables)}")
    return self._executables[key]

  def replicate(self, state):
    return placement.replicate(state, self.mesh, self.mode)

  def unreplicate(self, state):
    return placement.unreplicate(state, self.mode)

  def shard_batch(self, batch):
    return placement.shard_batch(batch, self.mesh, self.mode, self.steps_per_call)


def compile_step(step_fn: StepFn, mode: str = "jit", mesh: Mesh | None = None,
                 steps_per_call: int = 1, donate: bool = True) -> CompiledStep:
  """Compiles a per-device `step_fn` for data parallelism over `mesh`.

  Args:
    step_fn: from `diffusion.train.step.make_train_step` (its default axis_name,
      ``lax.pmean`` over 'data').
    mode: "pmap" (``jax.pmap``, axis_name 'data') or "jit"
      (``jax.jit(jax.shard_map(...))``, state ``P()``, batch ``P('data')``).
    mesh: the 1-D 'data' mesh; `placement.make_mesh()` (all devices) by default.
    steps_per_call: k; runs k steps per dispatch with ``lax.scan`` (as
      score_sde's n_jitted_steps). The batch then has a k axis (see the module
      docstring) and every metric comes back as ``[k]``, one per step.
    donate: donate the input state's buffers.
  """
  placement._check_mode(mode)
  if steps_per_call < 1:
    raise ValueError(f"steps_per_call={steps_per_call} must be >= 1")
  mesh = placement.make_mesh() if mesh is None else mesh
  placement._check_multiprocess(mesh, mode)
  fn = step_fn
  if steps_per_call > 1:
    fn = lambda state, batches: lax.scan(step_fn, state, batches)
  donate_argnums = (0,) if donate else ()
  if mode == "pmap":
    compiled = jax.pmap(fn, axis_name=placement.AXIS, devices=list(mesh.devices.flat),
                        donate_argnums=donate_argnums)
  else:
    batch_spec = P(placement.AXIS) if steps_per_call == 1 else P(None, placement.AXIS)
    # check_vma=False: the state enters replicated (P()) yet every device must
    # take its *local* gradient (then pmean'd), exactly as under pmap. With
    # the check on, autodiff would psum the gradient of the replicated params.
    sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(), batch_spec),
                            out_specs=(P(), P()), check_vma=False)
    compiled = jax.jit(sharded, donate_argnums=donate_argnums)
  return CompiledStep(fn=compiled, mode=mode, mesh=mesh, steps_per_call=steps_per_call)
