"""Multi-device runs for tests/test_parallel.py, in their own process.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=4 python
tests/_parallel_worker.py OUT.npz`` (the fake-device flag must be set before
JAX starts, hence a subprocess). Writes the final params/EMA of every run, the
per-step metrics and the error messages to ``OUT.npz``; the test compares.

Also imported by the test for the tiny model, loss and config (importing it
changes no environment variable).
"""
from __future__ import annotations

import sys

import flax.linen as nn
import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion.dist import compile as compile_lib
from diffusion.dist import placement
from diffusion.train import state as ts
from diffusion.train import step as train_step

IN, OUT, HIDDEN = 4, 2, 8
GLOBAL_BATCH = 8
NUM_STEPS = 3


class TinyMLP(nn.Module):
  """``[B, 4] -> [B, 2]`` two-layer tanh MLP."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(OUT)(jnp.tanh(nn.Dense(HIDDEN)(x)))


def loss_fn(params, batch, rng):
  """Per-example-mean MSE; the rng only feeds the "u" metric, never the loss.

  So the loss (and every gradient) is independent of the per-device keys, and
  the pmean of per-device means equals the global-batch mean; "u" =
  uniform(rng) lets the test check how the keys are derived.
  """
  pred = TinyMLP().apply({"params": params}, batch["x"])
  loss = jnp.mean(jnp.sum((pred - batch["y"]) ** 2, axis=-1))
  return loss, {"u": jax.random.uniform(rng)}


def get_config():
  config = ml_collections.ConfigDict()
  config.optim = dict(optimizer="adamw", lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
                      weight_decay=1e-2, warmup_steps=0, schedule="cosine",
                      decay_steps=10, grad_clip=0.5)
  config.ema = dict(decay=0.99, warmup=True, inv_gamma=1.0, power=0.75)
  config.lock()
  return config


def init_state(tx):
  init_fn = lambda r: TinyMLP().init(r, jnp.zeros((1, IN)))["params"]
  return ts.create(jax.random.PRNGKey(0), init_fn, tx)


def batches(num_steps=NUM_STEPS, batch_size=GLOBAL_BATCH, seed=1):
  """``num_steps`` global batches: x ``[B, 4]``, y ``[B, 2]``, float32."""
  rs = np.random.RandomState(seed)
  return [{"x": rs.randn(batch_size, IN).astype(np.float32),
           "y": rs.randn(batch_size, OUT).astype(np.float32)}
          for _ in range(num_steps)]


def flat(tree) -> np.ndarray:
  return np.asarray(ravel_pytree(jax.device_get(tree))[0])


def run(mode, mesh, data, steps_per_call=1, compiled=None):
  """Trains from the same initial state; returns (final state, metrics, compiled)."""
  config = get_config()
  tx = ts.make_optimizer(config)
  if compiled is None:
    step_fn = train_step.make_train_step(loss_fn, tx, config)
    compiled = compile_lib.compile_step(step_fn, mode, mesh, steps_per_call=steps_per_call)
  state = compiled.replicate(init_state(tx))
  metrics = []
  if steps_per_call == 1:
    for b in data:
      state, m = compiled(state, compiled.shard_batch(b))
      metrics.append(jax.device_get(m))
    metrics = {k: np.stack([m[k] for m in metrics]) for k in metrics[0]}
  else:
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *data)
    state, metrics = compiled(state, compiled.shard_batch(stacked))
    metrics = jax.device_get(metrics)
  return compiled.unreplicate(state), metrics, compiled


def main(out_path):
  assert jax.device_count() == 4, jax.devices()
  devices = jax.devices()
  mesh4 = placement.make_mesh(devices)
  mesh1 = placement.make_mesh(devices[:1])
  data = batches()
  out = {}
  compiled = {}
  for name, mode, mesh, k in [("pmap", "pmap", mesh4, 1), ("jit", "jit", mesh4, 1),
                              ("one", "jit", mesh1, 1), ("pmap_k", "pmap", mesh4, 3),
                              ("jit_k", "jit", mesh4, 3)]:
    state, metrics, compiled[name] = run(mode, mesh, data, steps_per_call=k)
    out[f"{name}_params"] = flat(state.params)
    out[f"{name}_ema"] = flat(state.ema_params)
    out[f"{name}_step"] = np.asarray(jax.device_get(state.step))
    for key, value in metrics.items():
      out[f"{name}_m_{key}"] = np.asarray(value)

  # Expected "u" metric: mean over devices d of uniform(fold_in(fold_in(rng, s), d)).
  rng = init_state(ts.make_optimizer(get_config())).rng
  u = lambda s, d: float(jax.random.uniform(
      jax.random.fold_in(jax.random.fold_in(rng, s), d)))
  out["u_expected4"] = np.array([np.mean([u(s, d) for d in range(4)])
                                 for s in range(NUM_STEPS)], np.float32)
  out["u_expected1"] = np.array([u(s, 0) for s in range(NUM_STEPS)], np.float32)

  # A NaN in ONE example of step 1 (on device 2's shard only) must stop the
  # update on every device: rerun the jit and pmap runs with that batch.
  bad = [dict(b) for b in data]
  bad[1]["x"] = bad[1]["x"].copy()
  bad[1]["x"][5, 0] = np.nan  # rows 4..5 go to device 2 of 4
  for name in ("pmap", "jit"):
    state, metrics, _ = run(name, mesh4, bad[:2], compiled=compiled[name])
    one_step, _, _ = run(name, mesh4, data[:1], compiled=compiled[name])
    out[f"nan_{name}_finite"] = metrics["finite"]
    out[f"nan_{name}_params"] = flat(state.params)
    out[f"nan_{name}_params_after_step0"] = flat(one_step.params)
    out[f"nan_{name}_opt"] = flat(state.opt_state)
    out[f"nan_{name}_opt_after_step0"] = flat(one_step.opt_state)

  # Global batch 6 on 4 devices: host-side errors, before any compile.
  odd = batches(1, batch_size=6)[0]
  for name in ("pmap", "jit"):
    try:
      compiled[name].shard_batch(odd)
      out[f"err_shard_{name}"] = np.array("no error")
    except ValueError as e:
      out[f"err_shard_{name}"] = np.array(str(e))
  state = compiled["jit"].replicate(init_state(ts.make_optimizer(get_config())))
  try:
    compiled["jit"](state, odd)
    out["err_call_jit"] = np.array("no error")
  except ValueError as e:
    out["err_call_jit"] = np.array(str(e))
  np.savez(out_path, **out)


if __name__ == "__main__":
  main(sys.argv[1])
