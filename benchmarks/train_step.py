"""Train-step throughput benchmark: compile time, step time, images/s, memory, FLOPs, MFU.

    python benchmarks/train_step.py [--config tiny|cifar10|both] [--batch N] [--steps N]
                                    [--mode jit|pmap] [--precision float32|bfloat16]
                                    [--json out.json]

For each model config it builds the real train step of the package -- the
UNet, `losses.discrete_loss` (eps prediction, linear schedule, T=1000), Adam
from a ConfigDict through `train_state.make_optimizer` (DDPM's settings: lr
2e-4 with warmup, global-norm clipping at 1), the EMA, `train.step.make_train_step`
and `dist.compile.compile_step` over all local devices -- and times it on one fixed
random batch (no data loading):

- ``tiny``: a 28x28x1 (MNIST-sized) UNet, ch=32, channel_mult=(1, 2, 2), two
  ResBlocks per level, attention at 7x7 (~1.6M parameters), no dropout;
- ``cifar10``: ``UNet()`` defaults (DDPM's CIFAR-10 network, 35.7M
  parameters) at 32x32x3, dropout 0.1 (so the step draws a dropout rng).

Reported per config:

- ``first_call_s``: the first call, ``lower`` + XLA ``compile`` + one step,
  ended by ``block_until_ready`` (the compile time a training run pays once);
  ``lower_s`` and ``compile_s`` split it.
- ``step_ms``: the median over ``--steps`` timed steps (each ended by
  ``block_until_ready``) after ``--warmup`` untimed ones; ``step_ms_min`` and
  ``step_ms_max`` show the spread; ``images_per_s`` = global batch / median.
- ``peak_mem``: on GPU/TPU ``memory_stats()["peak_bytes_in_use"]`` of device 0;
  on CPU the process's ``ru_maxrss`` (resident-set high-water mark of the whole
  process: runtime, compiler and buffers; it never goes down, so with
  ``--config both`` the second figure is at least the first). ``mem_source``
  says which one is printed.
- ``gflops_per_image``: XLA's cost analysis of the compiled step (forward,
  backward, optimizer and EMA), ``flops`` of one device's program divided by
  that device's share of the batch; ``achieved_tflops`` = flops of one step on
  all devices / median step time; ``mfu`` = achieved / (peak of the device x
  device count) where the peak is known (`PEAK_FLOPS`, by ``device_kind``),
  else "n/a" (always on CPU).
- backend, device kind and count, jax/jaxlib version, parameter count, and
  whether the package's CPU flag (``--xla_cpu_experimental_ynn_fusion_type=``,
  see `diffusion/_xla_flags.py`) is in ``XLA_FLAGS``; set
  ``DIFFUSION_NO_XLA_DEFAULTS=1`` to measure without it.

Defaults are sized for a CPU (whole run a few minutes): batch 64 (tiny) and 8
(cifar10), 10 timed steps. On a GPU or TPU pass ``--batch 128`` (DDPM's batch)
and e.g. ``--steps 50``; the script runs unchanged there. The batch is global:
it must be divisible by the number of devices. Timings on a shared machine are
noisy: compare medians, and repeat runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import diffusion  # noqa: E402,F401  (applies the CPU XLA defaults before JAX starts)
from diffusion import _xla_flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from diffusion.core import losses  # noqa: E402
from diffusion import models  # noqa: E402
from diffusion.dist import compile as compile_lib  # noqa: E402
from diffusion.dist import placement  # noqa: E402
from diffusion.core import schedules  # noqa: E402
from diffusion.train import state as train_state  # noqa: E402
from diffusion.train import step as train_step  # noqa: E402
from diffusion.models import unet as unet_lib  # noqa: E402

# Model configs: image shape (H, W, C), UNet fields, default batch on CPU.
CONFIGS = {
    "tiny": {
        "shape": (28, 28, 1),
        "model": dict(ch=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                      attention_resolutions=(7,), dropout=0.0),
        "cpu_batch": 64,
    },
    "cifar10": {
        "shape": (32, 32, 3),
        "model": dict(dropout=0.1),  # = the UNet() defaults (DDPM CIFAR-10)
        "cpu_batch": 8,
    },
}

# Dense peak FLOP/s per device (no sparsity), keyed by a substring of
# `device.device_kind`, checked in order (more specific names first).
# "float32": on NVIDIA GPUs XLA runs float32 convs/matmuls on TF32 tensor cores
# by default, so the TF32 peak is used; on TPUs DEFAULT precision runs float32
# matmuls as bf16 passes, so the bf16 peak is used.
PEAK_FLOPS = (
    ("H100 PCIe", {"bfloat16": 756e12, "float32": 378e12}),
    ("H100", {"bfloat16": 989e12, "float32": 495e12}),  # SXM / HBM3
    ("H200", {"bfloat16": 989e12, "float32": 495e12}),
    ("A100", {"bfloat16": 312e12, "float32": 156e12}),
    ("TPU v4", {"bfloat16": 275e12, "float32": 275e12}),
    ("TPU v5 lite", {"bfloat16": 197e12, "float32": 197e12}),  # v5e
    ("TPU v5e", {"bfloat16": 197e12, "float32": 197e12}),
    ("TPU v5p", {"bfloat16": 459e12, "float32": 459e12}),
    ("TPU v5", {"bfloat16": 459e12, "float32": 459e12}),  # v5p reports "TPU v5"
    ("TPU v6 lite", {"bfloat16": 918e12, "float32": 918e12}),  # v6e
)


def peak_flops(device_kind: str, precision: str):
  """Peak FLOP/s of one device of this kind at `precision`, or None if unknown."""
  for key, peaks in PEAK_FLOPS:
    if key.lower() in device_kind.lower():
      return peaks[precision]
  return None


def optim_config() -> ml_collections.ConfigDict:
  """DDPM's optimizer and EMA settings (as configs/default.py)."""
  return ml_collections.ConfigDict({
      "optim": {"optimizer": "adam", "lr": 2e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                "weight_decay": 0.0, "warmup_steps": 5000, "schedule": "constant",
                "decay_steps": 0, "end_lr": 0.0, "grad_clip": 1.0},
      "ema": {"decay": 0.9999, "warmup": False, "start_step": 0},
  })


def flops_of(compiled) -> float | None:
  """The 'flops' of an XLA cost analysis, whose format differs across JAX versions
  (a dict, a list with one dict per program, or None)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if analysis is None:
    return None
  if isinstance(analysis, dict):
    analysis = [analysis]
  total = sum(float(a.get("flops", 0.0)) for a in analysis if a)
  return total if total > 0 else None


def peak_memory(device) -> tuple[int | None, str]:
  """(bytes, what they are): the device's peak allocation, else the process's max RSS."""
  stats = None
  if device.platform != "cpu":
    try:
      stats = device.memory_stats()
    except Exception:
      stats = None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  rss *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
  return int(rss), "process ru_maxrss (host RSS)"


def bench_one(name: str, batch_size: int, steps: int, warmup: int, mode: str,
              precision: str) -> dict:
  spec = CONFIGS[name]
  h, w, c = spec["shape"]
  devices = jax.local_devices()
  n = len(devices)
  if batch_size % n:
    raise SystemExit(f"--batch {batch_size} is not divisible by the {n} local devices")

  model = unet_lib.UNet(**spec["model"], image_size=h, in_channels=c,
                        dtype=models.compute_dtype(precision))
  sched = schedules.get("linear", num_steps=1000)

  def model_fn(params, x, t, rng):
    return model.apply({"params": params}, x, t, train=True, rngs={"dropout": rng})

  def loss_fn(params, batch, rng):
    return losses.discrete_loss(params, batch, rng, model_fn=model_fn, sched=sched,
                                prediction="eps")

  config = optim_config()
  tx = train_state.make_optimizer(config)
  init = lambda rng: model.init(rng, jnp.zeros((1, h, w, c)), jnp.zeros((1,), jnp.int32),
                                train=False)["params"]
  state = train_state.create(jax.random.PRNGKey(0), init, tx)
  num_params = unet_lib.param_count(state.params)

  step = compile_lib.compile_step(train_step.make_train_step(loss_fn, tx, config), mode=mode,
                                  mesh=placement.make_mesh(devices))
  images = np.random.default_rng(0).uniform(-1.0, 1.0, (batch_size, h, w, c))
  batch = step.shard_batch({"image": images.astype(np.float32)})
  state = step.replicate(state)

  # First call: lower + compile (ahead of time, so the cost analysis and the
  # timed steps use the one executable) + one step.
  t0 = time.perf_counter()
  lowered = step.fn.lower(state, batch)
  t1 = time.perf_counter()
  executable = lowered.compile()
  t2 = time.perf_counter()
  step = dataclasses.replace(step, fn=executable)
  state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  t3 = time.perf_counter()
  train_step.check_finite(metrics, 0)

  for _ in range(warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(steps):
    s0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - s0)
  train_step.check_finite(metrics, 1 + warmup + steps - 1)
  step_s = statistics.median(times)

  flops_device = flops_of(executable)  # one device's program
  per_device_batch = batch_size // n
  result = {
      "config": name,
      "image_shape": [h, w, c],
      "params": num_params,
      "batch": batch_size,
      "mode": mode,
      "precision": precision,
      "lower_s": t1 - t0,
      "compile_s": t2 - t1,
      "first_call_s": t3 - t0,
      "steps_timed": steps,
      "step_ms": 1e3 * step_s,
      "step_ms_min": 1e3 * min(times),
      "step_ms_max": 1e3 * max(times),
      "images_per_s": batch_size / step_s,
      "loss": float(np.asarray(metrics["loss"])),
  }
  mem, mem_source = peak_memory(devices[0])
  result.update(peak_mem_bytes=mem, mem_source=mem_source)
  if flops_device is not None:
    flops_step = flops_device * n
    achieved = flops_step / step_s
    peak = peak_flops(devices[0].device_kind, precision)
    result.update(
        gflops_per_image=flops_device / per_device_batch / 1e9,
        gflops_per_step=flops_step / 1e9,
        achieved_tflops=achieved / 1e12,
        peak_tflops_per_device=None if peak is None else peak / 1e12,
        mfu=None if peak is None else achieved / (peak * n))
  else:
    result.update(gflops_per_image=None, gflops_per_step=None, achieved_tflops=None,
                  peak_tflops_per_device=None, mfu=None)
  return result


def environment() -> dict:
  d = jax.devices()[0]
  return {
      "backend": jax.default_backend(),
      "device_kind": d.device_kind,
      "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "python": platform.python_version(),
      "host": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "ynn_flag_in_xla_flags": _xla_flags.YNN_FLAG in os.environ.get("XLA_FLAGS", "").split(),
      "DIFFUSION_NO_XLA_DEFAULTS": os.environ.get("DIFFUSION_NO_XLA_DEFAULTS", ""),
      "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
  }


def _fmt(v, spec):
  if v is None:
    return "n/a"
  return format(v, spec)


ROWS = (
    ("image shape", lambda r: "x".join(map(str, r["image_shape"]))),
    ("parameters", lambda r: f"{r['params']:,}"),
    ("global batch", lambda r: str(r["batch"])),
    ("mode / precision", lambda r: f"{r['mode']} / {r['precision']}"),
    ("first call (s)", lambda r: f"{r['first_call_s']:.1f}"),
    ("  lower (s)", lambda r: f"{r['lower_s']:.1f}"),
    ("  compile (s)", lambda r: f"{r['compile_s']:.1f}"),
    ("step, median (ms)", lambda r: f"{r['step_ms']:.1f}"),
    ("step, min..max (ms)", lambda r: f"{r['step_ms_min']:.1f}..{r['step_ms_max']:.1f}"),
    ("images/s", lambda r: f"{r['images_per_s']:.1f}"),
    ("peak memory (MiB)", lambda r: f"{r['peak_mem_bytes'] / 2**20:.0f}"),
    ("GFLOPs / image (XLA)", lambda r: _fmt(r["gflops_per_image"], ".3f")),
    ("GFLOPs / step", lambda r: _fmt(r["gflops_per_step"], ".1f")),
    ("achieved TFLOP/s", lambda r: _fmt(r["achieved_tflops"], ".4f")),
    ("MFU", lambda r: _fmt(r["mfu"], ".1%")),
)


def print_table(env: dict, results: list[dict]) -> None:
  print(f"backend={env['backend']}  device_kind={env['device_kind']!r}  "
        f"devices={env['device_count']} (local {env['local_device_count']})  "
        f"jax={env['jax']} jaxlib={env['jaxlib']}  cpus={env['cpu_count']}")
  print(f"YNN-fusion-off flag in XLA_FLAGS: {env['ynn_flag_in_xla_flags']}  "
        f"(XLA_FLAGS={env['XLA_FLAGS']!r})")
  if results:
    print(f"peak memory = {results[0]['mem_source']}; step times are medians of "
          f"{results[0]['steps_timed']} timed steps")
  width = max(len(k) for k, _ in ROWS)
  cols = [r["config"] for r in results]
  cells = [[fn(r) for r in results] for _, fn in ROWS]
  cw = [max(len(cols[j]), *(len(row[j]) for row in cells)) for j in range(len(cols))]
  print(f"| {'':<{width}} | " + " | ".join(f"{c:>{cw[j]}}" for j, c in enumerate(cols)) + " |")
  print(f"|{'-' * (width + 2)}|" + "|".join("-" * (w + 2) for w in cw) + "|")
  for (label, _), row in zip(ROWS, cells):
    print(f"| {label:<{width}} | " + " | ".join(f"{v:>{cw[j]}}" for j, v in enumerate(row))
          + " |")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", choices=("tiny", "cifar10", "both"), default="both")
  p.add_argument("--batch", type=int, default=None,
                 help="global batch (default on CPU: 64 tiny, 8 cifar10; "
                      "on a GPU/TPU pass 128, DDPM's batch)")
  p.add_argument("--steps", type=int, default=None,
                 help="timed steps (default 10 on CPU, 50 on an accelerator)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first call")
  p.add_argument("--mode", choices=placement.MODES, default="jit")
  p.add_argument("--precision", choices=tuple(models.PRECISIONS), default="float32")
  p.add_argument("--json", default="", help="write the results to this JSON file")
  args = p.parse_args(argv)

  on_cpu = jax.default_backend() == "cpu"
  steps = args.steps if args.steps is not None else (10 if on_cpu else 50)
  if steps < 1:
    p.error("--steps must be >= 1")
  names = ["tiny", "cifar10"] if args.config == "both" else [args.config]
  env = environment()
  results = []
  for name in names:
    batch = args.batch if args.batch is not None else (
        CONFIGS[name]["cpu_batch"] if on_cpu else 128)
    print(f"[{name}] batch={batch} steps={steps} ...", flush=True)
    results.append(bench_one(name, batch, steps, args.warmup, args.mode, args.precision))
  print_table(env, results)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"environment": env, "results": results}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
