"""`mnist_ddpm_cond.py` at the CPU scale of `mnist_ddpm_cpu.py`: the README's guidance table.

    python -m diffusion.main --config configs/mnist_ddpm_cond_cpu.py --workdir /tmp/mnist_cond_cpu
    python -m diffusion.main --config configs/mnist_ddpm_cond_cpu.py --workdir /tmp/mnist_cond_cpu \\
        --mode eval --config.eval.features=classifier

The 1.1M-parameter network, run length and optimiser of `mnist_ddpm_cpu.py`
(reasons there) with ten classes, label dropout 0.1 and guidance
(`families.class_conditional`). `--mode eval` rows: DDIM-50 at w = 0, 1, 2, 4, 8
(`families.guidance_eval`) on 256 samples each (labels 0..9 cycled), scored by the
project's classifier: FID, IS and the accuracy of the samples against the labels
they were asked for, plus the 256 real test images' row.

Variants: `mnist_ddpm_cond_cpu.py:key=value,...` with the keys of `default.VARIANT_KEYS`.
"""
from configs import default
from configs import families
from configs import mnist_ddpm_cpu


def layers():
  """`mnist_ddpm_cpu.py`, then the labels with dropout and the guidance table."""
  return families.stack(mnist_ddpm_cpu.layers(), families.class_conditional(),
                        families.guidance_eval(), dict(eval=dict(bpd=False)))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="mnist_ddpm_cond_cpu.py")
