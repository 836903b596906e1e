"""diffusion: DDPM, DDIM and score-SDE models in JAX/Flax with numerics proven by tests.

Importing the package applies one CPU speed setting before JAX starts its
backend (see `diffusion/_xla_flags.py`).
"""
from diffusion import _xla_flags

_xla_flags.apply_cpu_defaults()
