"""ODE integrators in pure JAX, shared by the probability-flow sampler and likelihood.

``f(y, t) -> dy/dt`` where ``y`` is any pytree of arrays and ``t`` a float32
scalar. Fixed-step methods run in ``lax.scan``; the adaptive Dormand–Prince
5(4) method runs in ``lax.while_loop``. Integration may go backwards in time
(``t1 < t0``). No host round trips, no scipy.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Pytree = Any
OdeFn = Callable[[Pytree, jax.Array], Pytree]


def _axpy(a, x, y):
  """``y + a * x`` over pytrees."""
  return jax.tree.map(lambda xi, yi: yi + a * xi, x, y)


def _lincomb(y, h, coeffs, ks):
  """``y + h * sum_i c_i k_i`` over pytrees, skipping zero coefficients."""
  out = y
  for c, k in zip(coeffs, ks):
    if c != 0.0:
      out = _axpy(h * c, k, out)
  return out


def euler_step(f: OdeFn, y, t, h):
  return _axpy(h, f(y, t), y)


def heun_step(f: OdeFn, y, t, h):
  """Heun's method (explicit trapezoid): second order, two evaluations."""
  k1 = f(y, t)
  k2 = f(_axpy(h, k1, y), t + h)
  return jax.tree.map(lambda yi, a, b: yi + 0.5 * h * (a + b), y, k1, k2)


FIXED_STEP = {"euler": (euler_step, 1), "heun": (heun_step, 2)}
# Every method: the fixed-step ones (name -> (step, evaluations per step)) and adaptive "rk45".
METHODS = (*FIXED_STEP, "rk45")


def integrate_fixed(f: OdeFn, y0, ts: jax.Array, method: str = "heun", return_trajectory: bool = False):
  """Integrates over the grid ``ts`` (float32 ``[N+1]``, monotone) with a fixed-step method.

  Returns ``y(ts[-1])``, and, with ``return_trajectory``, also the stacked
  states at ``ts[1:]`` (a pytree with a leading ``[N]`` axis).
  """
  if method not in FIXED_STEP:
    raise ValueError(f"unknown fixed-step method {method!r}; valid: {sorted(FIXED_STEP)}")
  step, _ = FIXED_STEP[method]

  def body(y, t_pair):
    y = step(f, y, t_pair[0], t_pair[1] - t_pair[0])
    return y, (y if return_trajectory else None)

  y, traj = jax.lax.scan(body, y0, jnp.stack([ts[:-1], ts[1:]], axis=1))
  return (y, traj) if return_trajectory else y


# Dormand & Prince (1980) 5(4) tableau; the 5th-order solution is propagated
# and the last stage is reused as the next step's first (FSAL).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_DP_E = tuple(b5 - b4 for b5, b4 in zip(_DP_B5, _DP_B4))


def _rms_error(err, y, y_new, rtol, atol):
  sq, n = 0.0, 0
  for e, a, b in zip(jax.tree.leaves(err), jax.tree.leaves(y), jax.tree.leaves(y_new)):
    scale = atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))
    sq = sq + jnp.sum((e / scale) ** 2)
    n += e.size
  return jnp.sqrt(sq / n)


def integrate_adaptive(
    f: OdeFn,
    y0,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float | None = None,
    max_steps: int = 10_000,
):
  """Adaptive Dormand–Prince 5(4) from ``t0`` to ``t1`` with error control.

  The step is accepted when the RMS of ``err / (atol + rtol |y|)`` is <= 1
  and rescaled by ``0.9 err^{-1/5}`` (clipped to [0.2, 10]) after each try.
  Returns ``(y(t1), stats)`` with ``stats = {"nfe", "steps", "rejected"}``
  (int32 scalars). Reaching ``max_steps`` stops early; ``stats["reached_end"]``
  says whether ``t1`` was reached. (One function: the tableau step, the error
  control and the loop share the carry; ~60 lines with this docstring.)
  """
  t0 = jnp.asarray(t0, jnp.float32)
  t1 = jnp.asarray(t1, jnp.float32)
  direction = jnp.sign(t1 - t0)
  span = jnp.abs(t1 - t0)
  h0 = span * 0.01 if first_step is None else jnp.asarray(first_step, jnp.float32)

  def attempt(y, k1, t, h):
    ks = [k1]
    for i in range(1, 7):
      yi = _lincomb(y, h, _DP_A[i], ks)
      ks.append(f(yi, t + _DP_C[i] * h))
    y_new = _lincomb(y, h, _DP_A[6], ks[:6])  # equals the 5th-order solution
    err = _lincomb(jax.tree.map(jnp.zeros_like, y), h, _DP_E, ks)
    return y_new, ks[6], _rms_error(err, y, y_new, rtol, atol)

  def cond(carry):
    t, _, _, habs, steps, *_ = carry
    return (direction * (t1 - t) > 1e-7 * jnp.maximum(span, 1.0)) & (steps < max_steps) & (habs > 0)

  def body(carry):
    t, y, k1, habs, steps, nfe, rejected = carry
    habs = jnp.minimum(habs, jnp.abs(t1 - t))
    h = direction * habs
    y_new, k_last, err = attempt(y, k1, t, h)
    accept = err <= 1.0
    factor = jnp.clip(0.9 * jnp.where(err > 0, err, 1e-10) ** -0.2, 0.2, 10.0)
    pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(accept, u, v), a, b)
    return (
        jnp.where(accept, t + h, t),
        pick(y_new, y),
        pick(k_last, k1),
        habs * factor,
        steps + 1,
        nfe + 6,
        rejected + jnp.where(accept, 0, 1),
    )

  k1 = f(y0, t0)
  zero = jnp.zeros((), jnp.int32)
  carry = (t0, y0, k1, h0, zero, zero + 1, zero)
  t, y, _, _, steps, nfe, rejected = jax.lax.while_loop(cond, body, carry)
  reached = direction * (t1 - t) <= 1e-7 * jnp.maximum(span, 1.0)
  return y, {"nfe": nfe, "steps": steps, "rejected": rejected, "reached_end": reached}
