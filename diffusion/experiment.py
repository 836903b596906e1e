"""Everything an experiment builds from its config: checks, model, noise process,
network wrapper, loss and train state. Shared by `train`, `sampling` and
evaluation, so each builds the same objects the same way.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from diffusion.core import losses
from diffusion.dist import placement
from diffusion.core import parameterization
from diffusion.core import samplers
from diffusion.core import schedules
from diffusion.core import sdes
from diffusion.train import state as ts
from diffusion.models import PRECISIONS, compute_dtype, get_model

DIFFUSION_TYPES = ("discrete", "continuous")
# Discrete schedules whose betas are a VP SDE's beta(t) on a uniform grid, so
# that the continuous samplers can run a discrete model (`sampling.sampler_process`).
VP_SCHEDULES = ("linear",)


# --------------------------------------------------------------------------
# Config checks.
# --------------------------------------------------------------------------


def _choice(value, valid, key):
  if value not in valid:
    raise ValueError(f"config.{key}={value!r} is not valid; valid: {', '.join(valid)}")


def validate_config(config) -> None:
  """Raises ValueError naming the key for values that cannot work together.

  (Names checked by the library — schedule, sde, optimizer, model fields — fail
  there with the list of valid names.)
  """
  d, tc, s = config.diffusion, config.train, config.sample
  _choice(d.type, DIFFUSION_TYPES, "diffusion.type")
  continuous = tuple(m for m in samplers.SAMPLERS if m not in samplers.DISCRETE_SAMPLERS)
  if d.type == "discrete":
    _choice(d.prediction, losses.DISCRETE_PREDICTIONS, "diffusion.prediction")
    _choice(d.weighting, losses.DISCRETE_WEIGHTINGS, "diffusion.weighting")
    _choice(s.method, tuple(samplers.SAMPLERS), "sample.method")
    if s.method in continuous and d.schedule not in VP_SCHEDULES:
      raise ValueError(
          f"config.sample.method={s.method!r} (a continuous-time sampler) needs the VP SDE "
          f"of the discrete schedule, and only diffusion.schedule in {VP_SCHEDULES} has one "
          f"(VPSDE(beta_min=T beta_1, beta_max=T beta_T)); got "
          f"diffusion.schedule={d.schedule!r}. Sample it with: "
          f"{', '.join(samplers.DISCRETE_SAMPLERS)}")
  else:
    _choice(d.prediction, losses.CONTINUOUS_PREDICTIONS, "diffusion.prediction")
    _choice(d.weighting, losses.CONTINUOUS_WEIGHTINGS, "diffusion.weighting")
    if s.method in samplers.DISCRETE_SAMPLERS:
      raise ValueError(
          f"config.sample.method={s.method!r} is a discrete-time sampler; a "
          f"diffusion.type='continuous' model samples with: {', '.join(continuous)}")
    _choice(s.method, continuous, "sample.method (diffusion.type=continuous)")
  _choice(tc.parallel, placement.MODES, "train.parallel")
  _choice(tc.precision, tuple(PRECISIONS), "train.precision")
  k = tc.steps_per_call
  if k < 1:
    raise ValueError(f"config.train.steps_per_call={k} must be >= 1")
  for key in ("num_steps", "log_every", "ckpt_every", "sample_every"):
    value = tc[key]
    if value < (0 if key == "sample_every" else 1) or value % k:
      raise ValueError(f"config.train.{key}={value} must be a positive multiple of "
                       f"config.train.steps_per_call={k}" + (" (or 0)" if key == "sample_every" else ""))
  n = jax.device_count()
  if config.data.batch_size % n:
    raise ValueError(f"config.data.batch_size={config.data.batch_size} is not divisible by "
                     f"the {n} devices ({jax.process_count()} processes)")
  if jax.process_count() > 1 and tc.parallel != "jit":
    raise ValueError(f"config.train.parallel={tc.parallel!r} runs on one process; with "
                     f"{jax.process_count()} processes use 'jit'")
  for key in ("num_samples", "batch_size", "grid_size", "gif_frames"):
    if s[key] < 1:
      raise ValueError(f"config.sample.{key}={s[key]} must be >= 1")


# --------------------------------------------------------------------------
# Model, noise process, loss and sampler from the config.
# --------------------------------------------------------------------------


def build_model(config) -> nn.Module:
  """``MODELS[config.model.name]`` with every other config.model key as a field."""
  fields = {k: v for k, v in config.model.items() if k != "name"}
  return get_model(config.model.name, **fields, image_size=config.data.image_size,
                   in_channels=config.data.channels,
                   dtype=compute_dtype(config.train.precision))


def noise_process(config):
  """The discrete schedule or the SDE of `config.diffusion`."""
  d = config.diffusion
  if d.type == "discrete":
    return schedules.get(d.schedule, num_steps=d.num_steps)
  if d.sde == "ve":
    return sdes.get("ve", sigma_min=d.sigma_min, sigma_max=d.sigma_max)
  return sdes.get(d.sde, beta_min=d.beta_min, beta_max=d.beta_max)


def make_apply_fn(model: nn.Module, config, process) -> Callable:
  """``apply(params, x [B,H,W,C], t [B], y=None, rng=None) -> out``.

  With ``model.embedding == "fourier"`` the network is given the noise level
  sigma(t) instead of t. A `rng` turns on training mode (dropout).
  """
  def noise_level(t):
    if config.model.embedding != "fourier":
      return t
    if isinstance(process, schedules.DiscreteSchedule):
      return parameterization.discrete_coeffs(process, t)[1]
    return process.marginal_coeffs(t)[1]

  def apply(params, x, t, y=None, rng=None):
    train = rng is not None
    return model.apply({"params": params}, x, noise_level(t), y, train=train,
                       rngs={"dropout": rng} if train else None)

  return apply


def _labels(config, batch):
  return batch["label"] if config.model.num_classes is not None else None


def make_loss_fn(config, apply_fn, process) -> Callable:
  """``loss_fn(params, batch, rng) -> (loss, metrics)`` for `train.step.make_train_step`."""
  d = config.diffusion

  def loss_fn(params, batch, rng):
    y = _labels(config, batch)
    model_fn = lambda p, x_t, t, r: apply_fn(p, x_t, t, y, r)
    if d.type == "discrete":
      return losses.discrete_loss(params, batch, rng, model_fn=model_fn, sched=process,
                                  prediction=d.prediction, weighting=d.weighting,
                                  min_snr_gamma=d.min_snr_gamma)
    return losses.continuous_loss(params, batch, rng, model_fn=model_fn, sde=process,
                                  prediction=d.prediction, weighting=d.weighting, eps=d.eps,
                                  antithetic=d.antithetic)

  return loss_fn


def state_fns(config, model):
  """``(create_fn, tx)``: ``create_fn(rng) -> TrainState`` and the optimizer."""
  c = config.data
  x = jnp.zeros((1, c.image_size, c.image_size, c.channels), jnp.float32)
  t = jnp.zeros((1,), jnp.float32 if config.diffusion.type == "continuous" else jnp.int32)
  y = None if config.model.num_classes is None else jnp.zeros((1,), jnp.int32)
  init_fn = lambda rng: model.init(rng, x, t, y, train=False)["params"]
  tx = ts.make_optimizer(config)
  return (lambda rng: ts.create(rng, init_fn, tx)), tx


def keys(config):
  """``(state_key, sample_key)`` from the seed: one per purpose."""
  return jax.random.split(jax.random.PRNGKey(config.seed))


def abstract_state(create_fn, key, sharding=None):
  """The state's ShapeDtypeStructs (a restore target) with `sharding`.

  Default: the first local device. With several processes, pass a replicated
  sharding of the global mesh (``NamedSharding(mesh, P())``): Orbax restores
  collectively, into arrays that span every process.
  """
  sharding = SingleDeviceSharding(jax.local_devices()[0]) if sharding is None else sharding
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      jax.eval_shape(create_fn, key))


def init_state(create_fn, key) -> ts.TrainState:
  """Runs `create_fn` once, jitted. On CPU XLA's -O0 compiles it ~4x faster (a
  one-off initialisation does not need optimised code)."""
  lowered = jax.jit(create_fn).lower(key)
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return lowered.compile(options)(key)
