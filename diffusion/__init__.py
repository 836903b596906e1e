"""diffusion: DDPM, DDIM, score-SDE, VDM and EDM models in JAX/Flax with numerics proven by tests.

Importing the package applies one CPU speed setting before JAX starts its
backend (see `diffusion/_xla_flags.py`). The numerical API of the README,
``from diffusion import schedules, sdes, samplers, likelihood``, names modules
of `diffusion.core` (loaded on first use, so ``import diffusion`` stays cheap).
Layers: docs/architecture.md.
"""
import importlib

from diffusion import _xla_flags

_xla_flags.apply_cpu_defaults()

_CORE = ("schedules", "sdes", "samplers", "likelihood", "parameterization", "ode", "losses",
         "grids", "processes", "denoiser", "edm", "vdm")


def __getattr__(name):
  if name in _CORE:
    return importlib.import_module(f"diffusion.core.{name}")
  raise AttributeError(f"module 'diffusion' has no attribute {name!r}")
