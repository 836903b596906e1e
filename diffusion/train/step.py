"""The train step: one pure function ``step_fn(state, batch) -> (state, metrics)``.

`make_train_step` builds it; it touches no mesh and no device. With
``axis_name="data"`` (the default) it averages the gradients, loss and
metrics with ``lax.pmean`` over that axis and folds the device index
``lax.axis_index`` into the step's key, so it must run under a compiler
that binds the axis (`diffusion.dist.compile.compile_step`: ``jax.pmap`` or
``jax.jit(jax.shard_map(...))``). With ``axis_name=None`` there is no
collective and the device index is 0: ``step_fn(state, batch)`` is a plain
function, callable eagerly or under ``jax.jit``, and equal to the step
compiled on a 1-device mesh.

Mixed precision: with ``precision="bfloat16"`` the parameters stay float32
and the activations are bf16 because the caller builds the model with
``dtype=models.compute_dtype(config.train.precision)`` (Flax casts params per
op). The batch is not cast here; the loss is cast to float32 and the
gradients have the params' dtype (float32), so the optimizer and the EMA run
in float32.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion.train import state as ts

# The data-parallel axis: the step's pmean and device index run over it, and
# `diffusion.dist.placement.make_mesh` gives its one mesh axis this name.
AXIS = "data"

PyTree = Any
StepFn = Callable[[ts.TrainState, PyTree], tuple[ts.TrainState, dict]]


class NonFiniteError(FloatingPointError):
  """A train step produced a non-finite loss or gradient norm."""

  def __init__(self, step: int, metric: str, message: str):
    super().__init__(message)
    self.step = step
    self.metric = metric


def _ema_and_lr(config, ema_decay_fn, lr_fn):
  """The ``step -> decay`` and ``step -> lr`` (or None) functions of the step."""
  if ema_decay_fn is None:
    if config is None:
      raise ValueError("make_train_step needs `config` (with config.ema) or ema_decay_fn")
    ema_decay_fn = lambda step: ts.ema_decay(step, config)
  elif not callable(ema_decay_fn):
    fixed = float(ema_decay_fn)
    ema_decay_fn = lambda step: jnp.float32(fixed)
  if lr_fn is None and config is not None:
    lr_fn = ts.lr_schedule(config)
  return ema_decay_fn, lr_fn


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation,
                    config=None, *, axis_name: str | None = AXIS,
                    ema_decay_fn=None, lr_fn=None) -> StepFn:
  """Builds the train step of one device (or of no device axis at all).

  (~65 lines, most of them this docstring: the step is one closure.)

  Args:
    loss_fn: ``loss_fn(params, batch, rng) -> (loss [], metrics dict of
      scalars)`` on this device's part of the batch. The loss must be a mean
      over the examples so that the pmean of per-device losses (and grads) is
      the global-batch mean. `rng` is ``fold_in(fold_in(state.rng, step),
      device_index)``: different on every step and every device.
    tx: the optax transformation (e.g. `train.state.make_optimizer(config)`).
    config: optional ConfigDict; gives the defaults ``ema_decay_fn =
      train.state.ema_decay(., config)`` and ``lr_fn = lr_schedule(config)``.
    axis_name: the mapped axis to average over (`AXIS`, "data", as the mesh
      of `diffusion.dist.placement`); the step then runs only under
      `compile_step`. None: no pmean and device index 0, so the step is a
      plain function of ``(state, batch)`` with the whole batch on one device.
    ema_decay_fn: ``step -> decay`` or a float; overrides `config`. One of
      `config` and `ema_decay_fn` is required (ValueError otherwise).
    lr_fn: ``step -> lr`` for the "lr" metric, evaluated at ``state.step``;
      optional. (optax counts only applied updates, so after a skipped
      non-finite step the logged lr runs one step ahead of the one used.)

  Returns:
    ``step_fn(state, batch) -> (state, metrics)``. `metrics` holds the pmean'd
    loss, ``grad_norm`` (global norm of the averaged, unclipped grads), ``lr``
    (if known), ``finite`` (1.0 if loss and grad_norm are finite, else 0.0)
    and the pmean'd metrics of `loss_fn`. When not finite, params, opt_state
    and ema_params stay the previous ones; `step` advances in any case.
  """
  ema_decay_fn, lr_fn = _ema_and_lr(config, ema_decay_fn, lr_fn)
  # A loss with a `step` parameter (the autoencoder's discriminator warm-up) is given it.
  try:
    takes_step = "step" in inspect.signature(loss_fn).parameters
  except (TypeError, ValueError):
    takes_step = False

  def step_fn(state: ts.TrainState, batch: PyTree):
    rng = jax.random.fold_in(state.rng, state.step)
    rng = jax.random.fold_in(rng, 0 if axis_name is None else lax.axis_index(axis_name))

    def float32_loss(params):
      loss, aux = (loss_fn(params, batch, rng, step=state.step) if takes_step
                   else loss_fn(params, batch, rng))
      return loss.astype(jnp.float32), aux

    (loss, aux), grads = jax.value_and_grad(float32_loss, has_aux=True)(state.params)
    # On one device the mean is the identity, but XLA:CPU still runs the all-reduce as a
    # copy of every gradient (~20 ms per step for the 35.7M-parameter UNet).
    if axis_name is not None and lax.axis_size(axis_name) > 1:
      grads, loss, aux = lax.pmean((grads, loss, aux), axis_name)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = ts.ema_update(state.ema_params, params, ema_decay_fn(state.step))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        ema_params=keep(ema_params, state.ema_params),
    )
    metrics = dict(aux)
    metrics.update(loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
    if lr_fn is not None:
      metrics["lr"] = jnp.asarray(lr_fn(state.step), jnp.float32)
    return new_state, metrics

  return step_fn


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
  """Raises `NonFiniteError` if any step in `metrics` was not finite.

  Args:
    metrics: the metrics of one compiled call (scalars, or ``[k]`` arrays for
      ``steps_per_call == k``); fetched to the host here (a sync point).
    step: the state's step *before* that call, i.e. the number of the first
      step in `metrics`; step ``i`` of the call is reported as ``step + i``.
  """
  finite = np.atleast_1d(np.asarray(jax.device_get(metrics["finite"])))
  bad = np.flatnonzero(finite == 0)
  if bad.size == 0:
    return
  i = int(bad[0])
  values = {}
  for name in ("loss", "grad_norm"):
    values[name] = float(np.atleast_1d(np.asarray(jax.device_get(metrics[name])))[i])
  which = [name for name, v in values.items() if not np.isfinite(v)] or ["loss"]
  at = int(step) + i
  raise NonFiniteError(
      at, which[0],
      f"non-finite {' and '.join(which)} at step {at} "
      f"(loss={values['loss']}, grad_norm={values['grad_norm']}); "
      "the update of that step was not applied")
