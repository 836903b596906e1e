"""Floating-point work of one train step, by XLA's cost analysis (no compile, no device).

    python benchmarks/flops.py configs/mnist_ddpm.py configs/cifar10_ddpm.py

Prints, per config, the FLOPs of the gradient of the loss over one global batch
(forward + backward; the optimizer and EMA add < 1%) as XLA's HLO cost analysis
counts them, and the total for `train.num_steps`. `README.md`'s GPU estimate
divides these by a sustained rate.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import diffusion  # noqa: E402,F401  (the package's XLA flags before jax starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffusion import experiment  # noqa: E402
from diffusion.viz.figures import load_config  # noqa: E402


def step_flops(config) -> float:
  """FLOPs of ``grad(loss)`` on one global batch of `config`."""
  exp = experiment.build(config)
  d = config.data
  batch = {"image": jax.ShapeDtypeStruct((d.batch_size, d.image_size, d.image_size, d.channels),
                                         jnp.float32),
           "label": jax.ShapeDtypeStruct((d.batch_size,), jnp.int32)}

  def loss(params, batch, rng):
    out = exp.loss_fn(params, batch, rng)
    return out[0] if isinstance(out, tuple) else out

  lowered = jax.jit(jax.grad(loss)).lower(exp.abstract_state().params, batch, jax.random.key(0))
  return float(lowered.cost_analysis()["flops"])


def main(paths):
  for path in paths or ["configs/mnist_ddpm.py"]:
    config = load_config(path)
    flops = step_flops(config)
    print(f"{path}: batch {config.data.batch_size}, {flops / 1e9:,.1f} GFLOP per step, "
          f"{flops * config.train.num_steps / 1e15:,.2f} PFLOP for {config.train.num_steps:,} steps")


if __name__ == "__main__":
  main(sys.argv[1:])
