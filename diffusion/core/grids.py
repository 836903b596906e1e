"""Time grids, apart from the solvers that walk them.

- `ddim_timesteps`: the DDIM paper's uniform skip over integer steps;
- `uniform_times`: ``N + 1`` float times from 1 down to ``eps`` (the SDE / ODE samplers).

Next: the Karras rho grid and the log-SNR-uniform grid (issue 13) land here.
"""
from __future__ import annotations

import jax  # noqa: F401  (jax.Array in annotations)
import jax.numpy as jnp
import numpy as np


def check_steps(num_steps, name="num_steps", upper=None):
  """Raises ValueError unless ``1 <= num_steps (<= upper)`` is an int."""
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"{name} must be an int >= 1, got {num_steps!r}")
  if upper is not None and num_steps > upper:
    raise ValueError(f"{name}={num_steps} exceeds the schedule's T={upper}; choose 1 <= {name} <= {upper}")


def ddim_timesteps(T: int, num_steps: int) -> np.ndarray:
  """The DDIM paper's uniform skip ``tau_i = i T // S``, ascending, int32 ``[S]``."""
  check_steps(num_steps, upper=T)
  return (np.arange(num_steps, dtype=np.int64) * T // num_steps).astype(np.int32)



def uniform_times(num_steps: int, eps: float) -> jax.Array:
  """``[N+1]`` float32 times from 1 down to ``eps``, evenly spaced."""
  if not 0.0 < eps < 1.0:
    raise ValueError(f"eps (the final time) must lie in (0, 1), got {eps}")
  return jnp.linspace(1.0, eps, num_steps + 1, dtype=jnp.float32)
