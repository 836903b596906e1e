"""Guided sampling costs one batched network call per step (issue 15).

For the UNet of a config (default `configs/mnist_ddpm_cond_cpu.py`, 1.1M parameters,
28x28x1, ten classes) at batch B, it times, interleaved over rounds:

- **guided DDIM step**: one step of DDIM (50-step grid) inside the compiled sampler
  with classifier-free guidance w = 3, i.e. (guided DDIM-50 run) / 50;
- **one call on 2B**: one jitted network call on the doubled batch ``[x; x]`` with
  ``[labels; null]`` (what a guided step must pay for at least);
- **unguided DDIM step** (w = 1, one call on B) for reference.

Reported: medians over rounds and the paired ratio guided step / call on 2B (goal
<= 1.1: the guidance adds only its elementwise combination). Also the other
processes' CPU share during the run (from /proc/stat, Linux).

    .venv/bin/python benchmarks/guidance.py --json guidance.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cpu_load  # noqa: E402  (benchmarks/cpu_load.py)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffusion import experiment  # noqa: E402



def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/mnist_ddpm_cond_cpu.py")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--json", default="")
  a = p.parse_args(argv)
  path, _, variant = a.config.partition(":")
  config = importlib.import_module("configs." + os.path.basename(path)[:-3]).get_config(
      variant or None)
  config.sample.update(method="ddim", num_steps=a.steps, eta=0.0)
  b = a.batch
  exp = experiment.build(config)
  params = exp.init_state().ema_params
  labels = jnp.arange(b, dtype=jnp.int32) % config.model.num_classes

  def sampler(w):
    s = config.sample.copy_and_resolve_references()
    s.guidance = w
    return exp.sample_fn(s, num_samples=b, cond_inputs=labels)

  guided, plain = sampler(3.0), sampler(1.0)
  c = config.data
  x2 = jnp.zeros((2 * b, c.image_size, c.image_size, c.channels))
  y2 = jnp.concatenate([labels, jnp.full((b,), config.model.num_classes, jnp.int32)])
  t2 = jnp.full((2 * b,), 500, jnp.int32)
  call = jax.jit(lambda p, x, t, y: exp.apply(p, x, t, y))
  key = jax.random.PRNGKey(0)
  t0 = time.perf_counter()
  for f in (lambda: guided(params, key), lambda: plain(params, key),
            lambda: call(params, x2, t2, y2)):
    jax.block_until_ready(f())
  compile_s = time.perf_counter() - t0

  def timed(f, n=1):
    t = time.perf_counter()
    for _ in range(n):
      jax.block_until_ready(f())
    return (time.perf_counter() - t) / n

  load = cpu_load.LoadMeter()
  rows = []
  for _ in range(a.rounds):
    g = timed(lambda: guided(params, key)) / a.steps
    one = timed(lambda: call(params, x2, t2, y2), n=10)
    u = timed(lambda: plain(params, key)) / a.steps
    rows.append({"guided_step_s": g, "call_2b_s": one, "plain_step_s": u, "ratio": g / one})
  med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
  out = {"config": a.config, "batch": b, "steps": a.steps, "backend": jax.default_backend(),
         "device": jax.devices()[0].device_kind, "jax": jax.__version__,
         "xla_flags": os.environ.get("XLA_FLAGS", ""), "compile_s": compile_s,
         "median": med, "rounds": rows,
         **load.shares()}
  print(json.dumps({k: v for k, v in out.items() if k != "rounds"}, indent=1))
  print(f"guided DDIM step {med['guided_step_s'] * 1e3:.1f} ms vs one call on 2B "
        f"{med['call_2b_s'] * 1e3:.1f} ms: ratio {med['ratio']:.3f} (goal <= 1.1); "
        f"unguided step {med['plain_step_s'] * 1e3:.1f} ms")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(out, f, indent=2)
  return out


if __name__ == "__main__":
  main()
