"""Running the train step on many devices and processes, in three modules.

- `cluster`: multi-process start-up (`initialize_distributed`), `barrier`,
  and the host-side flag collectives `any_process` / `same_on_all_processes`.
- `placement`: the 1-D 'data' mesh (`make_mesh`) and where arrays live:
  `replicate` / `unreplicate` the state, `shard_batch` a host batch, and
  `to_host` / `local_rows` / `gather_rows` to bring results back.
- `compile`: `compile_step` compiles the step of `diffusion.train.step` with
  ``jax.pmap`` or ``jax.jit(jax.shard_map(...))`` into a `CompiledStep`.

The step itself (pure, callable without a mesh) is `diffusion.train.step`;
the precision a model computes in is `diffusion.models.compute_dtype`.
"""
