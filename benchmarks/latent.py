"""Train-step throughput, latent against pixel space (issue 16).

The text-conditioned pixel model (`configs/mnist_text_cpu.py`: 28x28x1, the
1.1M-parameter UNet with cross-attention, a trained text encoder) against its
latent twin (`configs/mnist_latent_text.py`: the 7x7x4 latents of
`configs/mnist_autoencoder.py`, a one-level ch-64 UNet, the same text encoder),
each built by `experiment.build` and compiled as `--mode train` compiles it
(`train.step.make_train_step` + `dist.compile.compile_step`, jit over the local
devices). Both take one fixed random batch of B images (or latents) with random
caption tokens, so no data loading or encoding is timed: the latent model trains
on cached latents (`data/latents.py`), so its step never calls the autoencoder.
That is why a stand-in codec of the latent shape (``--latent-shape``) replaces the
trained autoencoder here, and the benchmark needs no trained workdir.

Timed over ``--rounds`` interleaved rounds, each ``--steps`` steps of one model then
of the other (each ended by ``block_until_ready``): medians of the per-step times,
images/s, and the paired ratio pixel step / latent step (the latent model's
speed-up). Also the first call (compile + one step) of each and the other
processes' CPU share during the timed rounds (from /proc/stat, Linux).

    .venv/bin/python benchmarks/latent.py --json latent.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import diffusion  # noqa: E402,F401  (applies the CPU XLA defaults before JAX starts)
import cpu_load  # noqa: E402  (benchmarks/cpu_load.py)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from diffusion import experiment  # noqa: E402
from diffusion import latent  # noqa: E402
from diffusion.data import captions as caps  # noqa: E402
from diffusion.data import text as text_lib  # noqa: E402
from diffusion.dist import compile as compile_lib  # noqa: E402
from diffusion.dist import placement  # noqa: E402
from diffusion.train import step as train_step  # noqa: E402



def _config(spec: str):
  path, _, variant = spec.partition(":")
  module = importlib.import_module("configs." + os.path.basename(path)[:-3])
  return module.get_config(variant or None)


def stand_in_codec(image_shape, latent_shape) -> latent.Codec:
  """A `latent.Codec` of the given shapes whose maps are never called (the train step
  reads cached latents)."""
  def never(_):
    raise AssertionError("the train step must not call the codec")
  return latent.Codec(never, never, 1.0, tuple(latent_shape), tuple(image_shape),
                      {"benchmark": True})


def _program(config, codec, batch: int, seed: int):
  """(compiled step, replicated state, sharded batch, parameter count) of `config`."""
  rng = np.random.default_rng(seed)
  # Random captions of the training grammar ("a large thick 3 slanted to the left").
  words = [{a: rng.choice([None, *w]) for a, w in caps.WORDS.items()} for _ in range(batch)]
  captions = [caps.caption(int(rng.integers(10)), ws) for ws in words]
  tok = text_lib.build_tokenizer(config.text, captions)
  exp = experiment.build(config, codec=codec, tokenizer=tok)
  mesh = placement.make_mesh()
  step = compile_lib.compile_step(train_step.make_train_step(exp.loss_fn, exp.tx, config),
                                  "jit", mesh)
  state = exp.init_state()
  n_params = sum(int(p.size) for p in jax.tree.leaves(state.params))
  h, w, c = exp.data_shape
  ids, mask = tok.encode(captions)
  data = {"image": rng.standard_normal((batch, h, w, c)).astype(np.float32),
          "tokens": np.asarray(ids, np.int32), "mask": np.asarray(mask, bool)}
  return step, step.replicate(state), step.shard_batch(data), n_params, (h, w, c)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--pixel", default="configs/mnist_text_cpu.py")
  p.add_argument("--latent", default="configs/mnist_latent_text.py")
  p.add_argument("--latent-shape", default="7,7,4",
                 help="H,W,C of the latents (mnist_autoencoder.py's: 7,7,4)")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=5, help="steps per model per round")
  p.add_argument("--rounds", type=int, default=6)
  p.add_argument("--json", default="")
  a = p.parse_args(argv)
  shape = tuple(int(s) for s in a.latent_shape.split(","))
  pixel_cfg, latent_cfg = _config(a.pixel), _config(a.latent)
  for cfg in (pixel_cfg, latent_cfg):
    cfg.data.batch_size = a.batch
  d = latent_cfg.data
  codec = stand_in_codec((d.image_size, d.image_size, d.channels), shape)
  models = {"pixel": _program(pixel_cfg, None, a.batch, 0),
            "latent": _program(latent_cfg, codec, a.batch, 1)}
  states, first = {}, {}
  for name, (step, state, batch, _, _) in models.items():
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    first[name] = time.perf_counter() - t0
    states[name] = state

  load = cpu_load.LoadMeter()
  rows = []
  for _ in range(a.rounds):
    row = {}
    for name, (step, _, batch, _, _) in models.items():
      state = states[name]
      t0 = time.perf_counter()
      for _ in range(a.steps):
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
      row[f"{name}_step_s"] = (time.perf_counter() - t0) / a.steps
      states[name] = state
    row["speedup"] = row["pixel_step_s"] / row["latent_step_s"]
    rows.append(row)
  med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
  out = {"pixel": a.pixel, "latent": a.latent, "batch": a.batch, "steps": a.steps,
         "rounds": a.rounds, "backend": jax.default_backend(),
         "device": jax.devices()[0].device_kind, "device_count": jax.device_count(),
         "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "params": {k: m[3] for k, m in models.items()},
         "shapes": {k: list(m[4]) for k, m in models.items()},
         "first_call_s": first, "median": med,
         "images_per_s": {k: a.batch / med[f"{k}_step_s"] for k in models},
         "per_round": rows, **load.shares()}
  print(json.dumps({k: v for k, v in out.items() if k != "per_round"}, indent=1))
  print(f"batch {a.batch}: pixel {med['pixel_step_s'] * 1e3:.0f} ms/step "
        f"({out['images_per_s']['pixel']:.0f} img/s), latent {med['latent_step_s'] * 1e3:.0f} "
        f"ms/step ({out['images_per_s']['latent']:.0f} img/s): latent {med['speedup']:.2f}x "
        "faster (median of paired rounds)")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(out, f, indent=2)
  return out


if __name__ == "__main__":
  main()
