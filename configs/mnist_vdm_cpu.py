"""`mnist_vdm.py` at the CPU scale of `mnist_ddpm_cpu.py` (same network, length, optimiser).

    python -m diffusion.main --config configs/mnist_vdm_cpu.py --workdir /tmp/mnist_vdm_cpu

Everything that `mnist_ddpm_cpu.py` scales down (ch 32, one ResBlock per level,
attention at 7x7, 3,000 steps of batch 64, lr 1e-3 with cosine decay, EMA warmup) is
kept, so the DDPM / VDM / EDM comparison of the README trains each for the same
budget; the process, loss and sampler are VDM's (`families.vdm_process`), with the
grids drawn by 100 ancestral steps (DDIM eta = 1) to keep them cheap, and the eval
rows of `families.nfe_comparison_eval`.

Variants: `mnist_vdm_cpu.py:key=value,...` with the keys of `default.VARIANT_KEYS`
plus `gamma` (learned | linear | cosine).
"""
from configs import default
from configs import families
from configs import mnist_ddpm_cpu
from configs import mnist_vdm


def layers():
  """`mnist_ddpm_cpu.py`'s layers, VDM's process, 100-step grids and the NFE table."""
  return families.stack(mnist_ddpm_cpu.layers(), families.vdm_process(),
                        families.nfe_comparison_eval(), dict(sample=dict(eta=1.0, grid="time")))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, mnist_vdm.VARIANT_KEYS,
                               source="mnist_vdm_cpu.py")
