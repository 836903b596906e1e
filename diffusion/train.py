"""Training and sampling, driven by the config (keys: configs/default.py).

`train_and_evaluate(config, workdir)` is linear: validate the config, save it
as ``workdir/config.json``, build data, model and state, resume from the
latest checkpoint, compile the step, then loop: log every ``log_every`` steps
to ``metrics.jsonl``, checkpoint every ``ckpt_every`` (and at the end), sample
a grid with the EMA parameters every ``sample_every`` (and at the end) to
``workdir/samples/step_XXXXXX.png``. `sample(config, workdir)` loads a
checkpoint's EMA parameters and writes ``samples/final_XXXXXX.{png,npz}``.

Workdir layout::

  config.json  metrics.jsonl  checkpoints/<step>/{state,data}  samples/*.png
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding
import numpy as np

from diffusion import checkpoint, data, losses, parallel, parameterization
from diffusion import samplers, schedules, sdes, visualize, writers
from diffusion import train_state as ts
from diffusion.models import get_model

DIFFUSION_TYPES = ("discrete", "continuous")
# Discrete schedules whose betas are a VP SDE's beta(t) on a uniform grid, so
# that the continuous samplers can run a discrete model (`sampler_process`).
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
  _choice(tc.parallel, parallel.MODES, "train.parallel")
  _choice(tc.precision, tuple(parallel.DTYPES), "train.precision")
  k = tc.steps_per_call
  if k < 1:
    raise ValueError(f"config.train.steps_per_call={k} must be >= 1")
  for key in ("num_steps", "log_every", "ckpt_every", "sample_every"):
    value = tc[key]
    if value < (0 if key == "sample_every" else 1) or value % k:
      raise ValueError(f"config.train.{key}={value} must be a positive multiple of "
                       f"config.train.steps_per_call={k}" + (" (or 0)" if key == "sample_every" else ""))
  n = jax.local_device_count()
  if config.data.batch_size % n:
    raise ValueError(f"config.data.batch_size={config.data.batch_size} is not divisible by "
                     f"the {n} local devices")
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
                   dtype=parallel.compute_dtype(config.train.precision))


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
  """``loss_fn(params, batch, rng) -> (loss, metrics)`` for `parallel.make_train_step`."""
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


def sampler_process(config, process):
  """The schedule or SDE the sampler of `config.sample.method` runs on.

  A discrete model (linear betas ``beta_i``, ``i = 1..T``) under a continuous
  sampler runs on ``VPSDE(beta_min=T beta_1, beta_max=T beta_T)``, whose
  ``beta(t) dt`` at ``t = i / T``, ``dt = 1 / T`` is ``beta_i``; its network is
  asked at the nearest discrete step (`parameterization.score_fn_from_eps_fn`).
  """
  if config.diffusion.type == "continuous" or config.sample.method in samplers.DISCRETE_SAMPLERS:
    return process
  betas = np.asarray(process.betas, np.float64)  # Validated: a VP_SCHEDULES schedule.
  T = process.num_steps
  return sdes.VPSDE(beta_min=float(T * betas[0]), beta_max=float(T * betas[-1]))


def make_sample_fn(config, apply_fn, process, *, num_samples: int | None = None,
                   return_trajectory: bool = False) -> Callable:
  """A jitted ``sample_fn(params, rng) -> x [N, H, W, C]`` (config.sample).

  ``N = num_samples`` (default ``config.sample.num_samples``). With
  `return_trajectory` it returns ``(x, traj)`` as the samplers do (``traj["x"]``
  ``[S, N, H, W, C]``; not with ``ode_method="rk45"``).
  """
  s, d = config.sample, config.diffusion
  n = s.num_samples if num_samples is None else num_samples
  shape = (n, config.data.image_size, config.data.image_size, config.data.channels)
  y = None
  if config.model.num_classes is not None:
    y = jnp.arange(n, dtype=jnp.int32) % config.model.num_classes
  clip = 1.0 if s.clip_denoised else None
  sde = sampler_process(config, process)
  traj = {"return_trajectory": True} if return_trajectory else {}

  def sample_fn(params, rng):
    net = lambda x, t: apply_fn(params, x, t, y)
    if d.type == "discrete":
      eps_fn = parameterization.eps_fn_from_model(net, d.prediction, process)
      if s.method == "ddpm":
        return samplers.ddpm(eps_fn, process, rng, shape, variance=s.variance,
                             clip_denoised=clip, **traj)
      if s.method == "ddim":
        return samplers.ddim(eps_fn, process, rng, shape, num_steps=s.num_steps, eta=s.eta,
                             clip_denoised=clip, **traj)
      score_fn = parameterization.score_fn_from_eps_fn(eps_fn, process)
    else:
      score_fn = parameterization.score_fn_from_model(net, d.prediction, process)
    if s.method == "euler_maruyama":
      return samplers.euler_maruyama(score_fn, sde, rng, shape, num_steps=s.num_steps,
                                     eps=s.eps, **traj)
    if s.method == "predictor_corrector":
      return samplers.predictor_corrector(
          score_fn, sde, rng, shape, num_steps=s.num_steps, predictor=s.predictor,
          corrector=s.corrector, snr=s.snr, corrector_steps=s.corrector_steps, eps=s.eps,
          **traj)
    return samplers.probability_flow(score_fn, sde, rng, shape, num_steps=s.num_steps,
                                     method=s.ode_method, eps=s.eps, **traj)

  return jax.jit(sample_fn)


def _state_fns(config, model):
  """``(create_fn, tx)``: ``create_fn(rng) -> TrainState`` and the optimizer."""
  c = config.data
  x = jnp.zeros((1, c.image_size, c.image_size, c.channels), jnp.float32)
  t = jnp.zeros((1,), jnp.float32 if config.diffusion.type == "continuous" else jnp.int32)
  y = None if config.model.num_classes is None else jnp.zeros((1,), jnp.int32)
  init_fn = lambda rng: model.init(rng, x, t, y, train=False)["params"]
  tx = ts.make_optimizer(config)
  return (lambda rng: ts.create(rng, init_fn, tx)), tx


def _keys(config):
  """``(state_key, sample_key)`` from the seed: one per purpose."""
  return jax.random.split(jax.random.PRNGKey(config.seed))


def _abstract_state(create_fn, key):
  """The state's ShapeDtypeStructs on the first local device (a restore target)."""
  sharding = SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      jax.eval_shape(create_fn, key))


def _init_state(create_fn, key) -> ts.TrainState:
  """Runs `create_fn` once, jitted. On CPU XLA's -O0 compiles it ~4x faster (a
  one-off initialisation does not need optimised code)."""
  lowered = jax.jit(create_fn).lower(key)
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return lowered.compile(options)(key)


def _save_grid(path: str, images) -> None:
  if jax.process_index() == 0:
    images = np.asarray(jax.device_get(images))
    visualize.save_png(path, visualize.image_grid(images))


# --------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------


def _next_batch(it, k: int):
  if k == 1:
    return next(it)
  batches = [next(it) for _ in range(k)]
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def _every(step: int, n: int) -> bool:
  return n > 0 and step % n == 0


def _host_metrics(pending) -> dict[str, np.ndarray]:
  """Fetches and checks ``[(first_step, metrics), ...]``; ``{name: [steps]}``."""
  out = {}
  for first_step, metrics in pending:
    metrics = jax.device_get(metrics)
    parallel.check_finite(metrics, first_step)
    for name, value in metrics.items():
      out.setdefault(name, []).append(np.atleast_1d(np.asarray(value, np.float64)))
  return {name: np.concatenate(v) for name, v in out.items()}


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _stop_requests():
  """Yields a dict that SIGTERM / SIGINT fill with ``{"signal": name}``.

  The loop checks it after each step, saves and stops (preemption). A second
  signal raises KeyboardInterrupt (a stuck run can still be interrupted). The
  previous handlers come back on exit. Off the main thread (where Python
  cannot install handlers) nothing is installed.

  TODO(multi-host): processes receive signals at different steps; they must
  agree on the stop step (an all-reduce of the flag each step, or Orbax's
  `reached_preemption`) before saving, or the collective save deadlocks.
  """
  stop: dict[str, str] = {}
  if threading.current_thread() is not threading.main_thread():
    yield stop
    return

  def handler(signum, frame):
    del frame
    if stop:
      raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
    stop["signal"] = signal.Signals(signum).name

  previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
  try:
    yield stop
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)


def train_and_evaluate(config, workdir: str) -> ts.TrainState:
  """Trains (or resumes) the model of `config` in `workdir`; see the module doc.

  SIGTERM / SIGINT (preemption) finish the current step, save a checkpoint
  (with the data iterator's state) and return: resuming continues bit-for-bit.

  Returns:
    The final `TrainState` (one copy, not replicated).

  Raises:
    parallel.NonFiniteError: a step had a non-finite loss or gradient norm;
      training stopped, the checkpoints on disk are those of earlier steps.
  """
  validate_config(config)
  writers.check_config(config, workdir, write=True)
  tc = config.train
  k = tc.steps_per_call

  it = data.create(config.data, seed=config.seed, process_index=jax.process_index(),
                   process_count=jax.process_count())
  model = build_model(config)
  process = noise_process(config)
  apply_fn = make_apply_fn(model, config, process)
  create_fn, tx = _state_fns(config, model)
  state_key, sample_key = _keys(config)
  abstract = _abstract_state(create_fn, state_key)
  writers.echo(f"model {config.model.name}: "
               f"{sum(p.size for p in jax.tree.leaves(abstract.params)):,} parameters")

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), tc.keep_checkpoints)
  start = ckpt.latest_step()
  if start is None:
    state = _init_state(create_fn, state_key)
  else:
    state, data_state = ckpt.restore(start, abstract)
    it.set_state(data_state)
    if start % k:
      raise ValueError(f"checkpoint step {start} is not a multiple of "
                       f"config.train.steps_per_call={k}")
  step = int(state.step)
  if step >= tc.num_steps:
    writers.echo(f"nothing to do: checkpoint step {step} >= train.num_steps={tc.num_steps}")
    ckpt.close()
    return state

  mesh = parallel.make_mesh(jax.local_devices())
  compiled = parallel.compile_step(
      parallel.make_train_step(make_loss_fn(config, apply_fn, process), tx, config),
      tc.parallel, mesh, steps_per_call=k)
  sample_fn = make_sample_fn(config, apply_fn, process)
  state = compiled.replicate(state)
  writer = writers.MetricWriter(workdir, config, start_step=step)
  bar = writers.ProgressBar(step, tc.num_steps)
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  writers.echo(f"training from step {step} to {tc.num_steps} in {workdir}")

  pending, logged, t_log, steps_log, compiling = [], {}, time.time(), step, True
  try:
    with _stop_requests() as stop:
      while step < tc.num_steps:
        batch = compiled.shard_batch(_next_batch(it, k))
        state, metrics = compiled(state, batch)
        pending.append((step, metrics))
        step += k
        bar.update(k)
        if compiling:  # The first call compiled the step: time the rest.
          compiling = False
          jax.block_until_ready(metrics)
          writers.echo(f"compiled and ran the first train step in {time.time() - t_log:.1f}s")
          t_log, steps_log = time.time(), step
        last = step == tc.num_steps
        log, save = _every(step, tc.log_every) or last, _every(step, tc.ckpt_every) or last
        grid = _every(step, tc.sample_every) or (last and tc.sample_every > 0)
        # Read the flag once: a signal arriving later in this iteration stops the next one.
        preempted = bool(stop) and not last
        if preempted:  # Save this step, skip the rest, stop.
          save, grid = True, False
        if not (log or save or grid):
          continue
        for name, values in _host_metrics(pending).items():  # Raises if non-finite.
          logged.setdefault(name, []).append(values)
        pending = []
        if log:
          now = time.time()
          row = {n: float(np.mean(np.concatenate(v))) for n, v in logged.items() if n != "finite"}
          row["lr"] = float(np.concatenate(logged["lr"])[-1]) if "lr" in logged else None
          # The first row after a (re)start times the steps after the compiling one.
          row["steps_per_sec"] = (step - steps_log) / (now - t_log) if step > steps_log else None
          writer.write(step, row)
          bar.update(0, {"loss": row["loss"], "steps/s": row["steps_per_sec"]})
          logged, t_log, steps_log = {}, now, step
        if save:
          ckpt.save(step, compiled.unreplicate(state), it.get_state())
        if grid:
          t0, path = time.time(), os.path.join(workdir, "samples", f"step_{step:06d}.png")
          _save_grid(path, sample_fn(compiled.unreplicate(state).ema_params, sample_key))
          writer.write_image(step, "samples", path)
          writers.echo(f"step {step}: wrote {path} ({time.time() - t0:.1f}s)")
          t_log += time.time() - t0  # steps_per_sec counts training time only.
        if preempted:
          ckpt.wait_until_finished()
          writers.echo(f"{stop['signal']}: stopped at step {step} of {tc.num_steps} and saved "
                       f"its checkpoint in {ckpt.directory}; run the same command to resume.")
          break
  except parallel.NonFiniteError as e:
    ckpt.wait_until_finished()
    message = (f"training stopped: {e}. The last good checkpoint is step "
               f"{ckpt.latest_step()} in {ckpt.directory}.")
    writers.echo(message)
    raise parallel.NonFiniteError(e.step, e.metric, message) from e
  finally:
    bar.close()
    writer.close()
    ckpt.close()
  return jax.device_get(compiled.unreplicate(state))


# --------------------------------------------------------------------------
# Sampling from a trained workdir.
# --------------------------------------------------------------------------


def sample(config, workdir: str) -> str:
  """Samples with the EMA params of a checkpoint of `workdir` (--mode sample).

  Uses ``config.sample.checkpoint_step`` (None: the latest) and any sampler of
  `config.sample` (a discrete linear-schedule model also takes the continuous
  ones). Writes, under ``samples/``:

  - ``final_XXXXXX.npz``: key "images", float32 ``[N, H, W, C]`` clipped to
    [-1, 1], ``N = sample.num_samples``, drawn in calls of ``sample.batch_size``;
  - ``final_XXXXXX.png``: a grid of the first ``G = min(N, sample.grid_size)``;
  - ``final_XXXXXX.gif``: the reverse process of those G images, from noise
    to the grid, in ``<= sample.gif_frames`` frames.

  The first G images come from one sampler call with the trajectory, key
  ``fold_in(sample_key, 0)``; the rest from calls ``c = 1, 2, ...`` with keys
  ``fold_in(sample_key, c)`` (the last one padded to the batch size and cut):
  deterministic given the seed, the checkpoint and config.sample.

  Returns:
    The PNG path.
  """
  validate_config(config)
  s = config.sample
  if s.method == "probability_flow" and s.ode_method == "rk45":
    raise ValueError("--mode sample writes a reverse-process GIF, which needs a trajectory; "
                     "sample.ode_method='rk45' has none: use 'euler' or 'heun'")
  if not os.path.exists(os.path.join(workdir, "config.json")):
    raise FileNotFoundError(f"{workdir} has no config.json: train there first")
  writers.check_config(config, workdir, write=False)
  model = build_model(config)
  process = noise_process(config)
  create_fn, _ = _state_fns(config, model)
  state_key, sample_key = _keys(config)
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), None) as ckpt:
    step = s.checkpoint_step
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first")
    state, _ = ckpt.restore(step, _abstract_state(create_fn, state_key))
  apply_fn = make_apply_fn(model, config, process)
  n, grid_n = s.num_samples, min(s.num_samples, s.grid_size)
  batch = min(s.batch_size, n - grid_n) if n > grid_n else 0

  t0 = time.time()
  traj_fn = make_sample_fn(config, apply_fn, process, num_samples=grid_n, return_trajectory=True)
  first, traj = traj_fn(state.ema_params, jax.random.fold_in(sample_key, 0))
  first, traj_x = np.asarray(jax.device_get(first)), np.asarray(jax.device_get(traj["x"]))
  chunks = [first]
  if batch:
    chunk_fn = make_sample_fn(config, apply_fn, process, num_samples=batch)
    for c in range(1, 1 + -(-(n - grid_n) // batch)):
      chunks.append(np.asarray(jax.device_get(
          chunk_fn(state.ema_params, jax.random.fold_in(sample_key, c)))))
  images = np.clip(np.concatenate(chunks)[:n], -1.0, 1.0).astype(np.float32)

  stem = os.path.join(workdir, "samples", f"final_{step:06d}")
  if jax.process_index() == 0:
    visualize.save_png(stem + ".png", visualize.image_grid(images[:grid_n]))
    np.savez(stem + ".npz", images=images)
    visualize.save_gif(stem + ".gif", visualize.reverse_process_frames(
        traj_x, first, s.gif_frames))
  writers.echo(f"wrote {n} samples to {stem}.npz, a grid of {grid_n} to {stem}.png and its "
               f"reverse process to {stem}.gif ({s.method}, EMA params of step {step}, "
               f"{time.time() - t0:.1f}s)")
  return stem + ".png"
