"""`mnist_edm.py` at the CPU scale of `mnist_ddpm_cpu.py` (same network, length, optimiser).

    python -m diffusion.main --config configs/mnist_edm_cpu.py --workdir /tmp/mnist_edm_cpu

Everything that `mnist_ddpm_cpu.py` scales down (ch 32, one ResBlock per level,
attention at 7x7, 3,000 steps of batch 64, lr 1e-3 with cosine decay, EMA warmup)
is kept, so the DDPM / VDM / EDM comparison of the README trains each for the same
budget; only the process, loss and default sampler are EDM's (`families.edm_process`).
Its eval table (`families.nfe_comparison_eval`): DDIM, EDM-Heun and DPM-Solver++(2M)
at ~10, 20 and 50 network evaluations and the probability-flow ODE, as for the DDPM
and VDM rows of the README's comparison.

Variants: `mnist_edm_cpu.py:key=value,...` with the keys of `default.VARIANT_KEYS`.
"""
from configs import default
from configs import families
from configs import mnist_ddpm_cpu


def layers():
  """`mnist_ddpm_cpu.py`'s layers, then EDM's process and sampler and the NFE table."""
  return families.stack(mnist_ddpm_cpu.layers(), families.edm_process(),
                        families.nfe_comparison_eval())


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="mnist_edm_cpu.py")
