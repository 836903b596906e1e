"""Training, driven by the config (keys: configs/default.py).

`train_and_evaluate(config, workdir)` is linear: check everything (`prepare`:
config, data, model, sampler options, eval entries; nothing compiled or
written yet), lock the workdir (`run.lock`), build the state (`experiment`)
or resume from the newest intact checkpoint, compile the step, run it once,
write ``workdir/config.json``, then loop: log every
``log_every`` steps to ``metrics.jsonl``, checkpoint every ``ckpt_every`` (and
at the end), sample a grid with the EMA parameters every ``sample_every`` (and
at the end) to ``workdir/samples/step_XXXXXX.png`` (`Experiment.sample_fn`).

Several processes (multi-host, `cluster.initialize_distributed`): every
process runs this same loop on its slice of each global batch; the state is
replicated on the global mesh; checkpoints are saved and restored by all
processes together (Orbax); the sample grid is split over all devices of all
processes (in jit mode, when their number divides the grid), gathered, and
written by process 0, which alone writes config.json, metrics.jsonl, wandb and
images. The workdir's layout is `run.workdir.Workdir`'s.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time

import jax
import numpy as np

from diffusion import experiment
from diffusion.core import checks
from diffusion.eval import entries
from diffusion.run import checkpoint
from diffusion.run import lock as lock_lib
from diffusion.data import iterator as data
from diffusion.dist import cluster
from diffusion.dist import compile as compile_lib
from diffusion.dist import placement
from diffusion.train import step as train_step
from diffusion.viz import images as visualize
from diffusion.run import console
from diffusion.run import resume
from diffusion.run import sinks
from diffusion.run.redact import flatten
from diffusion.run.workdir import Workdir
from diffusion.train import state as ts


def _save_grid(path: str, images, nrow=None) -> None:
  images = placement.to_host(images)  # A collective when the grid is split over processes.
  if jax.process_index() == 0:
    visualize.save_png(path, visualize.image_grid(images, nrow))


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
    metrics = placement.to_host(metrics)
    train_step.check_finite(metrics, first_step)
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

  With several processes, signals arrive at different steps: the loop asks
  `cluster.any_process` each step, so that all stop (and save, collectively) at the
  same step.
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


class _Metrics:
  """The host side of the loop's metrics: the device metrics not fetched yet,
  their values since the last row, and the clock of steps/s (training time only)."""

  def __init__(self, step: int):
    self.pending, self.logged = [], {}
    self.restart(step)

  def restart(self, step: int) -> None:
    self.t_log, self.steps_log = time.time(), step

  def fetch(self) -> None:
    """Fetches the pending metrics; raises `NonFiniteError` if a step was not finite."""
    for name, values in _host_metrics(self.pending).items():
      self.logged.setdefault(name, []).append(values)
    self.pending = []

  def row(self, step: int) -> dict:
    """The row of `step`: means since the last row, the last lr, steps/s."""
    now = time.time()
    logged = self.logged
    row = {n: float(np.mean(np.concatenate(v))) for n, v in logged.items() if n != "finite"}
    row["lr"] = float(np.concatenate(logged["lr"])[-1]) if "lr" in logged else None
    # The first row after a (re)start times the steps after the compiling one.
    row["steps_per_sec"] = ((step - self.steps_log) / (now - self.t_log)
                            if step > self.steps_log else None)
    self.logged, self.t_log, self.steps_log = {}, now, step
    return row


def _restore_or_init(exp, wd, it, mesh):
  """``(checkpointer or None, state)``: the newest intact checkpoint's state (the data
  iterator set to its position; damaged newer ones moved aside,
  `Checkpointer.restore_latest`), or a fresh state when the workdir has no
  checkpoints (then no checkpointer yet: nothing is made in the workdir before
  the first step has run). In jit mode the restore target is replicated on the
  global mesh: with several processes Orbax restores (and saves) collectively."""
  tc = exp.config.train
  if not wd.checkpoints_dir.exists():
    return None, exp.init_state()
  ckpt = checkpoint.Checkpointer(wd.checkpoints_dir, tc.keep_checkpoints)
  try:
    sharding = placement.replicated(mesh) if tc.parallel == "jit" else None
    found = ckpt.restore_latest(exp.abstract_state(sharding), set_aside=wd.damaged_dir,
                                warn=console.echo)
    if found is None:
      return ckpt, exp.init_state()
    start, state, data_state = found
    if start % tc.steps_per_call:
      raise checks.ConfigError(f"checkpoint step {start} is not a multiple of "
                               f"config.train.steps_per_call={tc.steps_per_call}")
    it.set_state(data_state)
  except BaseException:
    ckpt.close()
    raise
  return ckpt, state


def check_labels(config, it, batch) -> None:
  """`checks.ConfigError` when a class-conditional model's labels do not fit
  ``config.model.num_classes`` (all the labels of an in-memory dataset, else the
  first batch's)."""
  k = config.model.num_classes
  if k is None:
    return
  labels = np.asarray(batch["label"] if it.labels is None else it.labels)
  lo, hi = int(labels.min()), int(labels.max())
  if lo < 0 or hi >= k:
    raise checks.ConfigError(
        f"config.model.num_classes={k} but the data ({config.data.source}"
        f"{':' + config.data.name if config.data.name else ''}) has labels {lo}..{hi}; "
        f"labels must lie in 0..{k - 1}: set config.model.num_classes={hi + 1}")


def prepare(config, workdir):
  """The checks of a train run, before anything is compiled or written: ``(exp, it)``.

  The config (`experiment.build`: every key's range, the sampler options, the
  model's shapes), the eval entries, the workdir's config.json (resume
  policy), the data (opened, one batch read and put back, labels against
  ``model.num_classes``). Raises `checks.ConfigError` (or a `checks.RunError`
  for unreadable data).
  """
  with checks.config_errors():
    exp = experiment.build(config)  # Validates the config first.
    entries.eval_samplers(config)
    exp.abstract_state()  # Traces the model: shape errors surface here.
    resume.check_config(config, workdir, write=False)
    it = data.create(config.data, seed=config.seed, process_index=jax.process_index(),
                     process_count=jax.process_count())
    if experiment.text_conditional(config):
      exp = _text_data(exp, it, workdir)
    position = it.get_state()
    check_labels(config, it, next(it))
    it.set_state(position)
  return exp, it


def _text_data(exp, it, workdir):
  """Captions every example (`data.text`), adds its tokens to the batches and returns
  `exp` with the tokenizer. A resumed run reuses its saved tokenizer and bins."""
  from diffusion.data import text  # pylint: disable=g-import-not-at-top
  config = exp.config
  saved = os.path.exists(os.path.join(os.fspath(workdir), text.TEXT_DIR, "prompts.json"))
  if saved:
    tok, bins, prompts = text.load(workdir, config.text)
    captions, _ = text.dataset_captions(it, config, bins)
  else:
    captions, bins = text.dataset_captions(it, config)
    tok = text.build_tokenizer(config.text, captions)
    prompts = text.default_prompts(config.text, captions)
  text.attach(it, tok, captions)
  console.echo(f"text: {len(captions)} captions (e.g. {captions[0]!r}), {tok.vocab_size} tokens")
  return dataclasses.replace(exp, tokenizer=tok, text_bins=bins, default_prompts=tuple(prompts))


# The compiled programs of this process's earlier runs, by the config and the
# mesh that made them (`_programs`); at most `_PROGRAMS_KEPT`, the oldest dropped.
_PROGRAMS: dict = {}
_PROGRAMS_KEPT = 4


def _program_keys(config) -> dict:
  """The keys that can change a compiled program: all but the resumable ones (run
  length, cadence, eval, wandb: `resume.is_resumable`), the sampler's kept (the
  grid's program reads them)."""
  return {k: v for k, v in flatten(json.loads(config.to_json())).items()
          if k.startswith("sample.") or not resume.is_resumable(k)}


def _programs(exp, mesh):
  """``(compiled train step, grid sample_fn)`` of `exp` on `mesh`.

  A second run of the same config in one process (tests, a notebook, a
  resumed run after a fallback) reuses the first one's programs instead of
  tracing the UNet again (~3 s on a CPU for the smoke UNet): they depend on
  nothing but the config (`_program_keys`: any change there is a new entry) and
  the mesh's devices.
  """
  tc = exp.config.train
  key = (json.dumps(_program_keys(exp.config), sort_keys=True),
         tuple(d.id for d in mesh.devices.flat), jax.process_count())
  if key not in _PROGRAMS:
    compiled = compile_lib.compile_step(
        train_step.make_train_step(exp.loss_fn, exp.tx, exp.config), tc.parallel, mesh,
        steps_per_call=tc.steps_per_call)
    # jit mode: each grid is split over all devices (where they divide it).
    sample_fn = exp.sample_fn(mesh=mesh if tc.parallel == "jit" else None)
    while len(_PROGRAMS) >= _PROGRAMS_KEPT:
      _PROGRAMS.pop(next(iter(_PROGRAMS)))
    _PROGRAMS[key] = (compiled, sample_fn)
  return _PROGRAMS[key]


def train_and_evaluate(config, workdir: str) -> ts.TrainState:
  """Trains (or resumes) the model of `config` in `workdir`; see the module doc.

  Order: every check (`prepare`); the workdir lock (a second writer gets
  `lock.WorkdirBusy` at once); the newest intact checkpoint (damaged ones are
  set aside, `_restore_or_init`); compile; the first step; only then is
  anything written (config.json, the checkpoints folder, metrics.jsonl,
  wandb), so a run that fails before its first step leaves the workdir as it
  was. SIGTERM / SIGINT (preemption) finish the current step, save a
  checkpoint (with the data iterator's state) and return: resuming continues
  bit-for-bit. One linear loop (flax / big_vision style): its ~90 lines read
  top to bottom, the host-side metrics in `_Metrics` and the restore in
  `_restore_or_init`.

  Returns:
    The final `TrainState` (one copy, not replicated).

  Raises:
    checks.ConfigError: a bad config value, data that does not fit it, a
      checkpoint of another model.
    lock.WorkdirBusy: another process trains in `workdir`.
    train_step.NonFiniteError: a step had a non-finite loss or gradient norm;
      training stopped, the checkpoints on disk are those of earlier steps.
  """
  exp, it = prepare(config, workdir)
  tc, wd = config.train, Workdir(workdir)
  k = tc.steps_per_call
  held = lock_lib.hold(workdir, "train", echo=console.echo)
  ckpt, writer, bar, started = None, None, None, False
  try:
    console.echo(f"model {config.model.name}: "
                 f"{sum(p.size for p in jax.tree.leaves(exp.abstract_state().params)):,} "
                 "parameters")
    mesh = placement.make_mesh()  # Every device of every process.
    write_latents = None
    if exp.codec is not None:  # A latent model: batches of the cached latents.
      from diffusion.data import latents  # pylint: disable=g-import-not-at-top
      it, write_latents = latents.cached_iterator(
          exp.codec, it, workdir, config.data, echo=console.echo,
          progress=lambda xs: console.progress(xs, "encode", unit="batch"))
    ckpt, state = _restore_or_init(exp, wd, it, mesh)
    step = int(placement.to_host(state.step))
    if step >= tc.num_steps:
      console.echo(f"nothing to do: checkpoint step {step} >= train.num_steps={tc.num_steps}")
      return state

    compiled, sample_fn = _programs(exp, mesh)
    state = compiled.replicate(state)
    bar = console.ProgressBar(step, tc.num_steps)
    console.echo(f"training from step {step} to {tc.num_steps} in {workdir}")

    clock = _Metrics(step)
    with _stop_requests() as stop:
      while step < tc.num_steps:
        state, metrics = compiled(state, compiled.shard_batch(_next_batch(it, k)))
        clock.pending.append((step, metrics))
        step += k
        bar.update(k)
        if not started:  # The first call compiled the step: time the rest, start the files.
          jax.block_until_ready(metrics)
          console.echo(f"compiled and ran the first train step in {time.time() - clock.t_log:.1f}s")
          resume.write_config(config, workdir)
          if write_latents is not None:
            write_latents()
          if experiment.text_conditional(config) and jax.process_index() == 0:
            from diffusion.data import text  # pylint: disable=g-import-not-at-top
            text.save(workdir, exp.tokenizer, exp.text_bins, exp.default_prompts)
          if ckpt is None:
            ckpt = checkpoint.Checkpointer(wd.checkpoints_dir, tc.keep_checkpoints)
          writer = sinks.MetricWriter(workdir, config, start_step=step - k)
          if jax.process_index() == 0:
            wd.samples_dir.mkdir(parents=True, exist_ok=True)
          started = True
          clock.restart(step)
        last = step == tc.num_steps
        log, save = _every(step, tc.log_every) or last, _every(step, tc.ckpt_every) or last
        grid = _every(step, tc.sample_every) or (last and tc.sample_every > 0)
        # Read the flag once: a signal arriving later in this iteration stops the next one.
        preempted = cluster.any_process(bool(stop)) and not last
        if preempted:  # Save this step, skip the rest, stop.
          save, grid = True, False
        if not (log or save or grid):
          continue
        clock.fetch()  # Raises if non-finite.
        if log:
          row = clock.row(step)
          writer.write(step, row)
          bar.update(0, {"loss": row["loss"], "steps/s": row["steps_per_sec"]})
          if held is not None:
            held.refresh()
        if save:
          ckpt.save(step, compiled.unreplicate(state), it.get_state())
          if hasattr(exp, "on_checkpoint"):  # The autoencoder: its params, scale and PSNR.
            ema = jax.tree.map(np.asarray, placement.to_host(compiled.unreplicate(state).ema_params))
            console.echo(exp.on_checkpoint(step, ema, workdir, it))
        if grid:
          t0, path = time.time(), wd.sample_grid(step)
          _save_grid(path, sample_fn(compiled.unreplicate(state).ema_params, exp.sample_key),
                     exp.grid_columns() if hasattr(exp, "grid_columns") else None)
          writer.write_image(step, "samples", path)
          console.echo(f"step {step}: wrote {path} ({time.time() - t0:.1f}s)")
          clock.t_log += time.time() - t0  # steps_per_sec counts training time only.
        if preempted:
          ckpt.wait_until_finished()
          # With several processes, only some may have received the signal.
          reason = stop.get("signal", "another process's stop signal")
          console.echo(f"{reason}: stopped at step {step} of {tc.num_steps} and saved "
                       f"its checkpoint in {ckpt.directory}; run the same command to resume.")
          break
  except train_step.NonFiniteError as e:
    ckpt.wait_until_finished()
    good = ckpt.latest_step()
    raise train_step.NonFiniteError(
        e.step, e.metric, f"training stopped: {e}. The last good checkpoint is "
        f"{'none yet' if good is None else f'step {good}'} in {ckpt.directory}.") from None
  except OSError as e:  # A full disk, a lost mount: say what was written last.
    if ckpt is not None:
      try:
        ckpt.wait_until_finished()
      except Exception:  # pylint: disable=broad-except  (the same OS error again)
        pass
    last_good = ckpt.all_steps() if ckpt is not None else []
    raise OSError(e.errno, f"{e.strerror or e}; the last good checkpoint is "
                  f"{'step ' + str(last_good[-1]) if last_good else 'none'} in "
                  f"{wd.checkpoints_dir}", e.filename) from e
  finally:
    for close in (bar and bar.close, writer and writer.close, ckpt and ckpt.close):
      if close:
        close()
    if held is not None:
      held.release(remove_empty_workdir=not started)
  return placement.to_host(compiled.unreplicate(state))
