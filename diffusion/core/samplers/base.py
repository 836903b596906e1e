"""Plumbing shared by the sampler families: start state, step noise, checks."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.core import checks, parameterization

def start(rng, shape, x_init, prior: Callable[[jax.Array, tuple], jax.Array]):
  """Validates ``shape`` / ``x_init``; returns ``(x_T, loop_key)``."""
  shape = tuple(shape)
  if len(shape) < 1 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
    raise ValueError(f"shape must be a tuple of positive ints [B, ...], got {shape}")
  init_key, loop_key = jax.random.split(rng)
  if x_init is None:
    return prior(init_key, shape), loop_key
  if tuple(x_init.shape) != shape:
    raise ValueError(f"x_init has shape {tuple(x_init.shape)} but shape is {shape}")
  return jnp.asarray(x_init, jnp.float32), loop_key


def normal(loop_key, step, x):
  return jax.random.normal(jax.random.fold_in(loop_key, step), x.shape, x.dtype)


def std_normal(key, shape):
  return jax.random.normal(key, shape, jnp.float32)


def finish(x, traj, return_trajectory):
  return (x, traj) if return_trajectory else x


def check_choice(value, valid, name):
  """`checks.choice` with the valid names sorted."""
  checks.choice(value, sorted(valid), name)



def x0_from_eps(x, eps, alpha, sigma, clip):
  """``x0_hat`` from an eps prediction (`parameterization`), clipped to ``[-clip, clip]``."""
  x0 = parameterization.from_eps("x0", eps, x, alpha, sigma)
  return x0 if clip is None else jnp.clip(x0, -clip, clip)

