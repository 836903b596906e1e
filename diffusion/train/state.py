"""Training state, optax optimizer and EMA of the parameters, all from the config.

`TrainState` is a plain pytree of arrays (``step``, ``params``, ``ema_params``,
``opt_state``, ``rng``): the model's ``apply_fn`` and the optax ``tx`` are kept
out of it and passed separately, so the whole state checkpoints with Orbax as
is. Use a raw ``jax.random.PRNGKey`` (``uint32[2]``) for ``rng`` so that it
checkpoints as an ordinary array.

Config keys read (``ml_collections.ConfigDict``)::

  config.optim.optimizer     "adam" | "adamw"
  config.optim.lr            peak learning rate
  config.optim.beta1, beta2, eps
  config.optim.weight_decay  adamw: decoupled decay; adam: coupled L2 added to
                             the gradient (as torch.optim.Adam); 0 = off
  config.optim.warmup_steps  linear warmup of the lr from 0 to `lr`
  config.optim.schedule      "constant" | "cosine"
  config.optim.decay_steps   cosine: the step (counted from 0, warmup included,
                             as optax) at which the lr reaches its end value
  config.optim.end_lr        optional, cosine end value (default 0.0)
  config.optim.grad_clip     global-norm clipping threshold; 0 or None = off

  config.ema.decay           the fixed EMA rate (e.g. 0.9999); also the cap
                             of the warmed-up rate
  config.ema.warmup          optional bool (default False): k-diffusion's EMA
                             warmup, see `ema_decay`
  config.ema.inv_gamma       optional (default 1.0), warmup only
  config.ema.power           optional (default 1.0; k-diffusion suggests 2/3
                             for long runs, 3/4 for short ones), warmup only
  config.ema.start_step      optional (default 0): before it the EMA copies
                             the params (decay 0)
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

PyTree = Any

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["step", "params", "ema_params", "opt_state", "rng"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class TrainState:
  """Everything that changes during training; a pytree of arrays.

  Attributes:
    step: int32 ``[]``, the number of step-function calls so far (a skipped,
      non-finite step counts too; see `diffusion.train.step.make_train_step`).
    params: the model parameters (float32 leaves).
    ema_params: exponential moving average of `params`, same structure.
    opt_state: the optax state of `tx` for `params`.
    rng: PRNG key ``uint32[2]``; constant, per-step keys are derived from it
      with ``fold_in(rng, step)``.
  """

  step: jax.Array
  params: PyTree
  ema_params: PyTree
  opt_state: PyTree
  rng: jax.Array

  def replace(self, **changes) -> "TrainState":
    return dataclasses.replace(self, **changes)


def create(rng: jax.Array, init_fn: Callable[[jax.Array], PyTree],
           tx: optax.GradientTransformation) -> TrainState:
  """Initialises a `TrainState`.

  Args:
    rng: PRNG key; split into the key given to `init_fn` and the state's key.
    init_fn: ``init_fn(rng) -> params``, e.g.
      ``lambda r: model.init(r, x_dummy, t_dummy)["params"]``. Callers that
      want to check shapes first can run ``jax.eval_shape(init_fn, rng)``.
    tx: the optax transformation whose state is initialised for the params.

  Returns:
    A state at ``step == 0`` whose ``ema_params`` are a copy (separate buffers,
    so the state can be donated) of ``params``.
  """
  init_rng, state_rng = jax.random.split(rng)
  params = init_fn(init_rng)
  ema_params = jax.tree.map(lambda p: jnp.array(p, copy=True), params)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      ema_params=ema_params,
      opt_state=tx.init(params),
      rng=state_rng,
  )


# --------------------------------------------------------------------------
# Optimizer.
# --------------------------------------------------------------------------


def lr_schedule(config) -> Callable[[jax.Array], jax.Array]:
  """The learning rate as a function of the optimizer step (int, from 0).

  ``lr(s) = lr * s / warmup_steps`` for ``s < warmup_steps`` (0 at step 0,
  `lr` at ``warmup_steps``), then constant `lr`, or a half cosine from `lr`
  at ``warmup_steps`` to ``end_lr`` at ``decay_steps`` (held after it).

  Raises:
    ValueError: unknown `config.optim.schedule` (the message lists the valid
      names) or ``decay_steps <= warmup_steps`` for the cosine schedule.
  """
  optim = config.optim
  peak = float(optim.lr)
  warmup = int(optim.warmup_steps or 0)
  name = optim.schedule
  if name not in SCHEDULES:
    raise ValueError(
        f"config.optim.schedule={name!r} is unknown; valid: {', '.join(SCHEDULES)}")
  end = float(optim.get("end_lr", 0.0) or 0.0)
  decay_steps = int(optim.get("decay_steps", 0) or 0)
  if name == "cosine" and decay_steps <= warmup:
    raise ValueError(
        f"config.optim.decay_steps={decay_steps} must exceed "
        f"config.optim.warmup_steps={warmup} for the cosine schedule")

  # optax's schedules (their step counts are the same: decay_steps includes the warmup).
  if name == "constant":
    if warmup == 0:
      return optax.constant_schedule(peak)
    return optax.warmup_constant_schedule(0.0, peak, warmup)
  if warmup == 0:
    return optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, decay_steps, end_value=end)


def make_optimizer(config) -> optax.GradientTransformation:
  """Builds the optax optimizer of `config.optim` (keys: module docstring).

  The chain is: global-norm clipping (if ``grad_clip``), then for "adam" an
  optional coupled L2 term, then Adam/AdamW driven by `lr_schedule`.

  Raises:
    ValueError: unknown `config.optim.optimizer` or schedule; the message
      lists the valid names.
  """
  optim = config.optim
  name = optim.optimizer
  if name not in OPTIMIZERS:
    raise ValueError(
        f"config.optim.optimizer={name!r} is unknown; valid: {', '.join(OPTIMIZERS)}")
  schedule = lr_schedule(config)
  weight_decay = float(optim.weight_decay or 0.0)
  parts = []
  if optim.grad_clip:
    parts.append(optax.clip_by_global_norm(float(optim.grad_clip)))
  if name == "adam":
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.adam(schedule, b1=optim.beta1, b2=optim.beta2, eps=optim.eps))
  else:
    parts.append(optax.adamw(schedule, b1=optim.beta1, b2=optim.beta2,
                             eps=optim.eps, weight_decay=weight_decay))
  return optax.chain(*parts) if len(parts) > 1 else parts[0]


# --------------------------------------------------------------------------
# EMA.
# --------------------------------------------------------------------------


def ema_update(ema_params: PyTree, params: PyTree, decay) -> PyTree:
  """``ema <- decay * ema + (1 - decay) * params``, leaf by leaf.

  Hand-written rather than `optax.ema`: the rate comes from `ema_decay` (a
  warmup and a start step that optax's EMA does not have), and the average
  lives in the `TrainState` beside the params, not in the optimizer state, so a
  checkpoint's EMA can be read (and exported) without the optimizer.

  Args:
    ema_params: the current average; its dtypes are kept.
    params: the new parameters, same structure.
    decay: scalar in ``[0, 1]`` (may be traced); 0 copies `params`.
  """
  def one(e, p):
    d = jnp.asarray(decay, jnp.float32)
    return (d * e + (1.0 - d) * p).astype(e.dtype)

  return jax.tree.map(one, ema_params, params)


def ema_decay(step, config) -> jax.Array:
  """The EMA rate to use for the update made at optimizer step `step`.

  With ``s = step - config.ema.start_step``: 0 while ``s < 0`` (the average
  copies the params); otherwise ``config.ema.decay``, or, when
  ``config.ema.warmup`` is set, k-diffusion's warmed-up rate

      decay(s) = min(max_decay, 1 - (1 + s / inv_gamma) ** -power)

  where ``max_decay = config.ema.decay``. The average then spans about
  ``1 / (1 - decay) = (1 + s / inv_gamma) ** power`` recent steps: `inv_gamma`
  (> 0) is the step scale of the warmup and `power` (> 0) how fast the window
  grows (``inv_gamma = power = 1`` averages all steps so far uniformly;
  k-diffusion suggests ``power`` 2/3 for long runs, 3/4 for short ones). At
  ``s = 0`` the rate is 0, so the first update copies the params.

  Args:
    step: int scalar (may be traced), the state's step before the update.
    config: a ConfigDict with `config.ema` (keys: module docstring).

  Returns:
    float32 ``[]``.
  """
  ema = config.ema
  max_decay = float(ema.decay)
  start = int(ema.get("start_step", 0) or 0)
  s = jnp.asarray(step, jnp.float32) - start
  if ema.get("warmup", False):
    inv_gamma = float(ema.get("inv_gamma", 1.0))
    power = float(ema.get("power", 1.0))
    if inv_gamma <= 0 or power <= 0:
      raise ValueError(
          f"config.ema.inv_gamma={inv_gamma} and config.ema.power={power} must be > 0")
    rate = 1.0 - (1.0 + jnp.maximum(s, 0.0) / inv_gamma) ** -power
    rate = jnp.minimum(max_decay, rate)
  else:
    rate = jnp.full((), max_decay, jnp.float32)
  return jnp.where(s < 0, 0.0, rate).astype(jnp.float32)


class StateFactory:
  """The restore target and the one-off initialisation of a `TrainState`, for an
  experiment record with ``create_state(rng)`` and ``state_key`` (a frozen dataclass:
  the trace is cached in its ``__dict__``)."""

  def abstract_state(self, sharding=None):
    """The state's ShapeDtypeStructs (a restore target) with `sharding`.

    Default: the first local device. With several processes, pass a replicated
    sharding of the global mesh (``NamedSharding(mesh, P())``): Orbax restores
    collectively, into arrays that span every process.
    """
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0]) if sharding is None else sharding
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        self._traced_create_state().out_info)

  def _traced_create_state(self):
    """`create_state` traced once per Experiment (a UNet trace takes ~1 s on CPU):
    its output shapes are `abstract_state`'s, its lowering `init_state`'s."""
    traced = self.__dict__.get("_create_state_traced")
    if traced is None:
      traced = jax.jit(self.create_state).trace(self.state_key)
      object.__setattr__(self, "_create_state_traced", traced)
    return traced

  def init_state(self) -> "TrainState":
    """Runs `create_state` once, jitted. On CPU XLA's -O0 compiles it ~4x faster (a
    one-off initialisation does not need optimised code)."""
    lowered = self._traced_create_state().lower()
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return lowered.compile(options)(self.state_key)
