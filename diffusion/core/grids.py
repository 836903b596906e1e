"""Time grids, apart from the solvers that walk them.

- `ddim_timesteps`: the DDIM paper's uniform skip over integer steps;
- `uniform_times`: ``N + 1`` float times from 1 down to ``eps`` (the SDE / ODE samplers);
- sigma grids for the samplers of `samplers.sigma` (x = x0 + sigma z): descending
  float32 arrays of ``N + 1`` noise levels whose last entry is 0 (``N``
  steps): `karras_sigmas` (Karras et al. 2022, eq. 5, rho = 7), `log_snr_sigmas`
  (uniform in log sigma, i.e. in log-SNR) and `time_sigmas` (the process's own
  uniform time grid, read as noise levels by `processes.sigma_tilde`). `sigmas`
  picks one by name (`SIGMA_GRIDS`).
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



def uniform_times(num_steps: int, eps: float, t_start: float = 1.0) -> jax.Array:
  """``[N+1]`` float32 times from `t_start` (1: the prior; less: an edit that starts
  part-way, `core.edit.start_at_level`) down to ``eps``, evenly spaced."""
  if not 0.0 < eps < 1.0:
    raise ValueError(f"eps (the final time) must lie in (0, 1), got {eps}")
  if not eps < t_start <= 1.0:
    raise ValueError(f"t_start={t_start} must lie in (eps={eps}, 1]")
  return jnp.linspace(t_start, eps, num_steps + 1, dtype=jnp.float32)


SIGMA_GRIDS = ("karras", "log_snr", "time")


def _concrete(*values) -> bool:
  return not any(isinstance(v, jax.core.Tracer) for v in values)


def _check_range(sigma_min, sigma_max):
  if _concrete(sigma_min, sigma_max) and not 0.0 < float(sigma_min) < float(sigma_max):
    raise ValueError(f"a sigma grid needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                     f"sigma_max={sigma_max}")


def karras_sigmas(num_steps: int, sigma_min, sigma_max, rho: float = 7.0) -> jax.Array:
  """Karras et al. (2022, eq. 5): ``sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) -
  smax^(1/rho)))^rho`` for ``i = 0..N-1``, then 0; ``[N + 1]`` float32, descending.
  ``N = 1`` gives ``[sigma_max, 0]``. The ends may be traced (a learned schedule's)."""
  check_steps(num_steps)
  _check_range(sigma_min, sigma_max)
  if not rho > 0:
    raise ValueError(f"rho must be > 0, got {rho}")
  u = jnp.linspace(0.0, 1.0, num_steps) if num_steps > 1 else jnp.zeros(1)
  lo = jnp.asarray(sigma_min, jnp.float32) ** (1.0 / rho)
  hi = jnp.asarray(sigma_max, jnp.float32) ** (1.0 / rho)
  return jnp.append((hi + u * (lo - hi)) ** rho, 0.0).astype(jnp.float32)


def log_snr_sigmas(num_steps: int, sigma_min, sigma_max) -> jax.Array:
  """``N`` noise levels uniform in ``log sigma`` (= uniform in log-SNR ``-2 log sigma``) from
  ``sigma_max`` to ``sigma_min``, then 0; ``[N + 1]`` float32, descending."""
  check_steps(num_steps)
  _check_range(sigma_min, sigma_max)
  lo = jnp.log(jnp.asarray(sigma_min, jnp.float32))
  hi = jnp.log(jnp.asarray(sigma_max, jnp.float32))
  u = jnp.linspace(0.0, 1.0, num_steps) if num_steps > 1 else jnp.zeros(1)
  return jnp.append(jnp.exp(hi + u * (lo - hi)), 0.0).astype(jnp.float32)


def check_sigmas(sigmas) -> tuple[jax.Array, bool]:
  """``(sigmas as float32, whether the last is 0)``.

  A concrete grid must be 1-D with at least 2 entries, strictly descending and
  positive except possibly the last (ValueError otherwise). A traced grid (a
  learned schedule's, inside jit) cannot be checked: it must end at 0, as every
  grid built here does.
  """
  if isinstance(sigmas, jax.core.Tracer):
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
      raise ValueError(f"sigmas must be 1-D with at least 2 entries, got shape {sigmas.shape}")
    return sigmas.astype(jnp.float32), True
  s = np.asarray(sigmas, np.float64)
  if s.ndim != 1 or s.shape[0] < 2:
    raise ValueError(f"sigmas must be 1-D with at least 2 entries, got shape {s.shape}")
  if not np.all(np.diff(s) < 0):
    raise ValueError(f"sigmas must be strictly descending, got {s.tolist()[:6]}...")
  if not np.all(s[:-1] > 0) or s[-1] < 0:
    raise ValueError("sigmas must be positive except the last, which may be 0")
  return jnp.asarray(s, jnp.float32), bool(s[-1] == 0.0)
