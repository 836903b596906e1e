"""Reliability: damaged checkpoints, one writer per workdir, bad input as one line.

The cases of the reliability issue, on configs/smoke.py (6 steps, a
checkpoint every 2):

  1-2  a corrupted or damaged newest checkpoint falls back to the previous one
       (moved aside, never deleted), and the run then finishes bit-identical to
       an uninterrupted one;
  3    train.keep_checkpoints=0 is refused;
  4    a second writer is refused at once (two trainers started together: one
       trains, the other exits 1 naming the holder); a dead holder's lock is
       taken over;
  5    a run that fails before its first step leaves the workdir as it was;
  6-7  every bad value fails before anything compiles, in one line naming the
       key (a table), exit code 2;
  8    bad data files are named;
  9    the command line prints one line per error (exit 2 for config errors, 1
       for runtime ones; --debug adds the traceback), a full disk included;
  10   (tests/test_writers.py: a secret given as the wandb run name, group,
       tags or notes is on no file under the workdir.)

and a fault-injection test: 10 runs killed with SIGKILL at seeded random
moments, each resumed to completion, all with bit-identical final states.

In-process cases call `main.run` and `main.report` (what `main` does between
absl's flag parsing and the exit), so they cost no interpreter start-up; the
command-line cases run `python -m diffusion.main`.
"""
import gzip
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image
import pytest

from configs import smoke
from diffusion import experiment
from diffusion import main
from diffusion.core import checks
from diffusion.data import iterator as data
from diffusion.data import sources
from diffusion.dist import compile as compile_lib
from diffusion.modes import train
from diffusion.run import checkpoint
from diffusion.run import lock as lock_lib
from diffusion.run import sinks
from diffusion.run.workdir import Workdir
import _kill_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A restore that fails part-way leaves tensorstore handles for the garbage
# collector; pytest reports each as an "unraisable" ResourceWarning.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _config(overrides=None):
  """smoke.py with ``{"a.b": value}`` overrides (as --config.a.b=value would set them)."""
  config = smoke.get_config()
  for key, value in (overrides or {}).items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def cli(capsys, config, workdir, mode="train"):
  """``(exit code, the "error:" lines, all of stderr)`` of one run, in process."""
  capsys.readouterr()
  try:
    main.run(config, str(workdir), mode)
    code = 0
  except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except
    code = main.report(e)  # Re-raises what is not the package's own: a test failure.
  err = capsys.readouterr().err
  return code, [line for line in err.splitlines() if line.startswith("error:")], err


@pytest.fixture
def no_compute(monkeypatch):
  """Fails the test if the train step compiles or a state is initialised."""
  def refuse(*args, **kwargs):
    raise AssertionError("compiled or initialised before the error")
  monkeypatch.setattr(compile_lib, "compile_step", refuse)
  monkeypatch.setattr(experiment.Experiment, "init_state", refuse)
  monkeypatch.setattr(train, "_PROGRAMS", {})  # No programs of earlier runs to reuse.


def _tree(workdir):
  """``{relative path: bytes}`` of every file under `workdir` (its whole state)."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, workdir)] = pathlib.Path(path).read_bytes()
  return out


def _final_state(workdir, step):
  with checkpoint.Checkpointer(pathlib.Path(workdir) / "checkpoints", None) as ckpt:
    state, data_state = ckpt.restore(step)
  return checkpoint.named_leaves(state), data_state


def _assert_bit_identical(workdir_a, workdir_b, step):
  (a, data_a), (b, data_b) = _final_state(workdir_a, step), _final_state(workdir_b, step)
  assert data_a == data_b and sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


# --------------------------------------------------------------------------
# 6-7: every bad value fails before compute, in one line naming its key.
# --------------------------------------------------------------------------

# (overrides, the text the one line must hold: the full key and its value).
BAD_VALUES = [
    ({"sample.num_steps": 0}, "config.sample.num_steps=0"),
    ({"sample.num_steps": 101}, "config.sample.num_steps=101 exceeds the schedule's T=100"),
    ({"sample.variance": "foo"}, "config.sample.variance='foo'"),
    ({"sample.predictor": "foo"}, "config.sample.predictor='foo'"),
    ({"sample.ode_method": "foo"}, "config.sample.ode_method='foo'"),
    ({"sample.eta": 5.0}, "config.sample.eta=5.0"),
    ({"sample.method": "nope"}, "config.sample.method"),
    ({"sample.num_samples": 0}, "config.sample.num_samples=0"),
    ({"data.batch_size": -16}, "config.data.batch_size=-16"),
    ({"data.batch_size": 0}, "config.data.batch_size=0"),
    ({"data.image_size": 0}, "config.data.image_size=0"),
    ({"data.channels": 2}, "config.data.channels=2"),
    ({"data.split": "validation"}, "config.data.split='validation'"),
    ({"data.source": "files", "data.data_dir": "/nope"}, "config.data.data_dir='/nope'"),
    ({"diffusion.num_steps": 0}, "config.diffusion.num_steps=0"),
    ({"diffusion.schedule": "nope"}, "config.diffusion.schedule='nope'"),
    ({"diffusion.type": "nope"}, "config.diffusion.type='nope'"),
    ({"diffusion.eps": 0.0}, "config.diffusion.eps=0.0"),
    ({"model.num_classes": 5}, "config.model.num_classes=5"),
    ({"model.ch": 0}, "config.model.ch=0"),
    ({"model.num_heads": 0}, "config.model.num_heads=0"),
    ({"model.dropout": 1.5}, "config.model.dropout=1.5"),
    ({"model.channel_mult": (1, 0)}, "config.model.channel_mult"),
    ({"model.name": "vit"}, "config.model.name='vit'"),
    ({"ema.decay": 2.0}, "config.ema.decay=2.0"),
    ({"optim.lr": -1e-3}, "config.optim.lr=-0.001"),
    ({"optim.optimizer": "sgd"}, "config.optim.optimizer='sgd'"),
    ({"train.keep_checkpoints": 0}, "config.train.keep_checkpoints=0"),
    ({"train.log_every": 0}, "config.train.log_every=0"),
    ({"train.parallel": "tpu"}, "config.train.parallel='tpu'"),
    ({"train.precision": "fp8"}, "config.train.precision='fp8'"),
    ({"seed": -1}, "config.seed=-1"),
    ({"eval.specs": ("ddim:steps=0",)},
     "config.eval.specs entry 'ddim:steps=0': sampler spec 'ddim:steps=0' does not fit this model: num_steps=0"),
    ({"eval.features": "clip"}, "config.eval.features='clip'"),
    ({"wandb.mode": "cloud"}, "config.wandb.mode='cloud'"),
]


@pytest.mark.parametrize("overrides,expected", BAD_VALUES,
                         ids=[",".join(o) for o, _ in BAD_VALUES])
def test_bad_value_fails_before_compute_in_one_line(overrides, expected, tmp_path, capsys,
                                                    no_compute):
  workdir = tmp_path / "w"
  code, lines, err = cli(capsys, _config(overrides), workdir)
  assert code == main.USAGE_EXIT, err
  assert len(lines) == 1 and expected in lines[0], err
  assert "Traceback" not in err
  assert not workdir.exists()  # Nothing was written (not even the workdir).


def test_labels_out_of_range_name_the_fix(tmp_path, capsys, no_compute):
  code, lines, _ = cli(capsys, _config({"model.num_classes": 5}), tmp_path / "w")
  assert code == 2 and "has labels 0..9" in lines[0] and "num_classes=10" in lines[0]


# --------------------------------------------------------------------------
# 1-3, 5: damaged checkpoints, fallbacks and failed starts, on trained workdirs.
# --------------------------------------------------------------------------


def _run_config(num_steps=8, **overrides):
  """The runs here: smoke.py without sample grids (`_kill_worker.config`)."""
  config = _kill_worker.config(num_steps)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
  """An uninterrupted 8-step smoke run (checkpoints 2, 4, 6, 8, no sample grid):
  the reference of every run here (its checkpoint 6 is a 6-step run's too)."""
  workdir = tmp_path_factory.mktemp("rel") / "eight"
  main.run(_run_config(8), str(workdir), "train")
  return workdir


def _at_six(eight, tmp_path):
  """A copy of `eight` as a run that stopped at step 6 (its checkpoint 8 removed)."""
  workdir = tmp_path / "six"
  shutil.copytree(eight, workdir)
  shutil.rmtree(workdir / "checkpoints" / "8")
  return workdir


def _flip(path, n=64):
  raw = bytearray(path.read_bytes())
  mid = len(raw) // 2
  for i in range(mid, min(mid + n, len(raw))):
    raw[i] ^= 0xFF
  path.write_bytes(bytes(raw))


def _truncate(path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _array_files(step_dir):
  return sorted((step_dir / "state").glob("**/d/*"), key=lambda p: p.stat().st_size)


# The damage of the issue, each to checkpoint 6 (``step_dir``).
DAMAGE = {
    "flipped array bytes": lambda d: [_flip(p) for p in _array_files(d)],
    "_METADATA truncated": lambda d: _truncate(d / "state" / "_METADATA"),
    "_METADATA emptied": lambda d: (d / "state" / "_METADATA").write_bytes(b""),
    "_METADATA flipped": lambda d: _flip(d / "state" / "_METADATA"),
    "_METADATA deleted": lambda d: (d / "state" / "_METADATA").unlink(),
    "manifest.ocdbt deleted": lambda d: (d / "state" / "manifest.ocdbt").unlink(),
    "data/ deleted": lambda d: shutil.rmtree(d / "data"),
    "data/metadata deleted": lambda d: (d / "data" / "metadata").unlink(),
    "array file deleted": lambda d: _array_files(d)[-1].unlink(),
    "array file truncated": lambda d: [_truncate(p) for p in _array_files(d)],
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(damage, eight, tmp_path):
  workdir = _at_six(eight, tmp_path)
  DAMAGE[damage](workdir / "checkpoints" / "6")
  exp = experiment.build(_run_config())
  warnings = []
  wd = Workdir(workdir)
  with checkpoint.Checkpointer(wd.checkpoints_dir, 10) as ckpt:
    step, state, data_state = ckpt.restore_latest(exp.abstract_state(), set_aside=wd.damaged_dir,
                                                  warn=warnings.append)
    assert ckpt.all_steps() == [2, 4]
  assert step == 4 and data_state == {"epoch": 0, "position": 4}
  reference, _ = _final_state(eight, 4)
  for name, leaf in checkpoint.named_leaves(state).items():
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(reference[name]), err_msg=name)
  # Set aside whole (renamed, not deleted), and said so in one line naming both steps.
  assert sorted(os.listdir(wd.damaged_dir)) == ["6"]
  assert (wd.damaged_dir / "6" / "state").exists()
  (line,) = warnings
  assert line.startswith("warning: checkpoint 6 is damaged (") and "\n" not in line
  assert f"moved it to {wd.damaged_dir / '6'}" in line and "restored checkpoint 4" in line


def test_verify_names_a_changed_or_non_finite_array():
  state = {"params": {"w": np.arange(6, dtype=np.float32)}, "step": np.int32(3)}
  sums = checkpoint.checksums(state)
  assert checkpoint.verify(state, sums) is None
  changed = {"params": {"w": state["params"]["w"] + np.float32(1e-6)}, "step": np.int32(3)}
  assert "params/w does not match its checksum" in checkpoint.verify(changed, sums)
  nan = {"params": {"w": np.where(np.arange(6) == 2, np.nan, 1.0)}, "step": np.int32(3)}
  assert checkpoint.verify(nan, None) == "params/w holds 1 non-finite values of 6"


def test_flipped_bytes_resume_from_the_previous_and_finish_bit_identical(eight, tmp_path,
                                                                           capsys):
  # The reproduction: the newest checkpoint's arrays corrupted, then a
  # longer run. It restores 4, not the corrupted 6, and ends where "eight" did.
  workdir = _at_six(eight, tmp_path)
  DAMAGE["flipped array bytes"](workdir / "checkpoints" / "6")
  code, lines, err = cli(capsys, _run_config(8), workdir)
  assert code == 0 and not lines, err
  assert "warning: checkpoint 6 is damaged" in err and "training from step 4 to 8" in err
  _assert_bit_identical(workdir, eight, 8)
  assert [r["step"] for r in sinks.read_metrics(workdir)] == [2, 4, 6, 8]
  assert os.listdir(workdir / "checkpoints_damaged") == ["6"]


def test_every_checkpoint_damaged_is_one_line_and_nothing_moves(eight, tmp_path, capsys,
                                                                 no_compute):
  workdir = _at_six(eight, tmp_path)
  for step in (2, 4, 6):
    (workdir / "checkpoints" / str(step) / "state" / "_METADATA").write_bytes(b"")
  before = _tree(workdir)
  code, lines, err = cli(capsys, _run_config(8), workdir)
  assert code == main.RUNTIME_EXIT and len(lines) == 1, err
  assert "no checkpoint in" in lines[0] and all(f"{s}: " in lines[0] for s in (2, 4, 6))
  assert _tree(workdir) == before  # Nothing moved, nothing written.


def test_an_incompatible_model_is_refused_and_the_workdir_is_unchanged(eight, tmp_path,
                                                                         capsys, no_compute):
  workdir = tmp_path / "copy"
  shutil.copytree(eight, workdir)
  before = _tree(workdir)
  config = _run_config(10, **{"model.ch": 16, "allow_config_change": True})
  code, lines, err = cli(capsys, config, workdir)
  assert code == main.USAGE_EXIT and len(lines) == 1, err
  assert "checkpoint 8" in lines[0] and "holds another model" in lines[0]
  assert "ema_params/conv_in/bias is (8,) there, (16,) here (and 275 more)" in lines[0]
  assert _tree(workdir) == before  # config.json, checkpoints, metrics: as they were.


def test_a_failed_first_start_leaves_no_workdir(tmp_path, capsys, monkeypatch):
  # Past every check and the lock, the compile fails (e.g. out of memory).
  def out_of_memory(*args, **kwargs):
    raise checks.RunError("RESOURCE_EXHAUSTED while compiling (simulated)")
  monkeypatch.setattr(compile_lib, "compile_step", out_of_memory)
  monkeypatch.setattr(train, "_PROGRAMS", {})
  workdir = tmp_path / "w"
  code, lines, err = cli(capsys, _config(), workdir)
  assert code == main.RUNTIME_EXIT and "RESOURCE_EXHAUSTED" in lines[0], err
  assert not workdir.exists()


def test_nothing_to_do_writes_nothing(eight, tmp_path, capsys, no_compute):
  workdir = tmp_path / "copy"
  shutil.copytree(eight, workdir)
  before = _tree(workdir)
  code, _, err = cli(capsys, _run_config(8), workdir)
  assert code == 0 and "nothing to do: checkpoint step 8" in err
  assert _tree(workdir) == before


def test_keep_checkpoints_zero_is_refused_by_the_checkpointer_too(tmp_path):
  with pytest.raises(checks.ConfigError, match="max_to_keep=0 would keep no checkpoint"):
    checkpoint.Checkpointer(tmp_path / "c", 0)


# --------------------------------------------------------------------------
# 4: one writer per workdir.
# --------------------------------------------------------------------------


def _holder(workdir):
  """A separate process holding `workdir`'s train lock until killed."""
  code = ("import sys; from diffusion.run import lock; "
          "held = lock.WorkdirLock(sys.argv[1], 'train').acquire(); "
          "print('held', flush=True); sys.stdin.read()")
  proc = subprocess.Popen([sys.executable, "-c", code, str(workdir)], cwd=ROOT,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_second_writer_is_refused_at_once_and_a_dead_holders_lock_is_taken_over(
    tmp_path, capsys, no_compute):
  workdir = tmp_path / "w"
  holder = _holder(workdir)
  try:
    code, lines, err = cli(capsys, _config(), workdir)
    assert code == main.RUNTIME_EXIT and len(lines) == 1, err
    assert f"is in use: its train lock {workdir / '.lock'} is held by pid {holder.pid}" in lines[0]
    assert os.listdir(workdir) == [".lock"]  # Nothing else was written.
  finally:
    holder.kill()
    holder.wait()
  lock = lock_lib.WorkdirLock(workdir, "train").acquire()  # The dead holder's file is left.
  assert lock.took_over["pid"] == holder.pid
  lock.release()
  assert not (workdir / ".lock").exists()


def test_the_eval_lock_is_separate_from_the_train_lock(tmp_path):
  with lock_lib.WorkdirLock(tmp_path, "train"):
    with lock_lib.WorkdirLock(tmp_path, "eval"):  # An evaluator may read a training workdir.
      with pytest.raises(lock_lib.WorkdirBusy, match=f"held by pid {os.getpid()}"):
        lock_lib.WorkdirLock(tmp_path, "eval").acquire()  # A second evaluator may not.


def _cli_env():
  return dict(os.environ, JAX_PLATFORMS="cpu",
              PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _command(workdir, *flags):
  return [sys.executable, "-m", "diffusion.main", "--config", "configs/smoke.py",
          "--workdir", str(workdir), *flags]


def _children(target, *args_list):
  """Starts one forkserver child per args tuple at once; returns their exit codes."""
  procs = [_kill_worker.forkserver().Process(target=target, args=args) for args in args_list]
  for proc in procs:
    proc.start()
  for proc in procs:
    proc.join(600)
  return [proc.exitcode for proc in procs]


def _log(workdir):
  return pathlib.Path(str(workdir) + ".log").read_text()


def test_two_trainers_started_together(tmp_path):
  # Two processes run the command line's work on one workdir at the same time.
  workdir = tmp_path / "w"
  codes = _children(_kill_worker.cli, (str(workdir),), (str(workdir),))
  assert sorted(codes) == [0, 1], _log(workdir)[-3000:]
  errors = [line for line in _log(workdir).splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "is in use" in errors[0] and "held by pid" in errors[0]
  assert "Traceback" not in _log(workdir)
  # One run's rows and checkpoints, in order, once each.
  assert [r["step"] for r in sinks.read_metrics(workdir)] == [2, 4, 6]
  assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["2", "4", "6"]
  assert not (workdir / ".lock").exists()


# --------------------------------------------------------------------------
# 8: bad data names its file.
# --------------------------------------------------------------------------


def _png(path, value):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_image_folder_lists_every_unreadable_file(tmp_path):
  for i in range(6):
    _png(tmp_path / "imgs" / f"{i}.png", 10 * i)
  _truncate(tmp_path / "imgs" / "3.png")  # Not the first: found at load, not mid-training.
  (tmp_path / "imgs" / "5.png").write_bytes(b"not a png at all")
  config = smoke.get_config().data
  config.update(source="files", data_dir=str(tmp_path / "imgs"), batch_size=2)
  with pytest.raises(sources.DataError) as e:
    data.create(config, seed=0)
  message = str(e.value)
  assert message.startswith("2 of 6 image files cannot be read: ")
  assert str(tmp_path / "imgs" / "3.png") in message and str(tmp_path / "imgs" / "5.png") in message


def _mnist(directory, images=b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") * 3 + bytes(8)):
  directory.mkdir(parents=True, exist_ok=True)
  with gzip.open(directory / "train-images-idx3-ubyte.gz", "wb") as f:
    f.write(images)
  return directory / "train-images-idx3-ubyte.gz"


@pytest.mark.parametrize("kind", ["truncated gz", "not gzip", "garbage npz", "truncated npz"])
def test_damaged_data_files_are_named(kind, tmp_path, capsys, no_compute):
  if kind == "truncated gz":
    path = _mnist(tmp_path / "m")
    _truncate(path)
  elif kind == "not gzip":
    path = _mnist(tmp_path / "m")
    path.write_bytes(b"plain bytes, no gzip header")
  else:
    path = tmp_path / "x.npz"
    np.savez(path, image=np.zeros((4, 8, 8), np.uint8))
    if kind == "garbage npz":
      path.write_bytes(b"\x93NUMPY garbage" * 10)
    else:
      _truncate(path)
  data_dir = path.parent if path.suffix == ".gz" else path
  config = _config({"data.source": "files", "data.data_dir": str(data_dir),
                    "data.batch_size": 2})
  code, lines, err = cli(capsys, config, tmp_path / "w")
  assert code == main.RUNTIME_EXIT and len(lines) == 1, err
  assert str(path) in lines[0] and "cannot be read" in lines[0] and "Traceback" not in err
  assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------------
# 9: the command line: one line, exit codes, --debug, a full disk.
# --------------------------------------------------------------------------

# (flags, exit code, text of the one line).
CLI_ERRORS = [
    (["--config.train.num_stepz=5"], 2,
     "error: config.train.num_stepz: no such key; did you mean num_steps?"),
    (["--config.sample.eta=abc", "extra"], 2, "error: flag --config.sample.eta=abc:"),
]


def test_command_line_errors_are_one_line_with_exit_codes(tmp_path):
  for flags, code, text in CLI_ERRORS + [(None, 2, "error: --config=configs/nope.py: no such")]:
    if flags is None:  # A config file that does not exist.
      cmd = [sys.executable, "-m", "diffusion.main", "--config=configs/nope.py",
             f"--workdir={tmp_path / 'w'}"]
    else:
      cmd = _command(tmp_path / "w", *flags)
    proc = subprocess.run(cmd, cwd=ROOT, env=_cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == code, (flags, proc.stderr[-2000:])
    assert proc.stderr.splitlines() == [proc.stderr.strip()], (flags, proc.stderr[-2000:])
    assert proc.stderr.startswith(text), (flags, proc.stderr)
  assert not (tmp_path / "w").exists()
  # A value error raised after parsing: one line, and with --debug its traceback too.
  for debug in (False, True):
    proc = subprocess.run(
        _command(tmp_path / "w", "--config.data.batch_size=0", *(["--debug"] * debug)),
        cwd=ROOT, env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "error: config.data.batch_size=0 must be an int >= 1", proc.stderr
    assert ("Traceback (most recent call last)" in proc.stderr) == debug
    assert len(lines) > 1 if debug else len(lines) == 1
  assert not (tmp_path / "w").exists()


def test_a_full_disk_is_one_line_naming_the_file_and_the_last_good_checkpoint(tmp_path):
  # RLIMIT_FSIZE makes every write past 40 kB fail with EFBIG, as a full disk
  # fails with ENOSPC: config.json (3 kB) fits, a checkpoint's files do not.
  workdir = tmp_path / "w"
  (code,) = _children(_kill_worker.cli, (str(workdir), 6, 40_000))
  log = _log(workdir)
  assert code == main.RUNTIME_EXIT, log[-3000:]
  errors = [line for line in log.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in log, log[-3000:]
  assert errors[0].startswith(f"error: could not write checkpoint 2 in {workdir / 'checkpoints'}")
  assert "File too large: " in errors[0] and "the last good checkpoint is none" in errors[0]


# --------------------------------------------------------------------------
# Fault injection: SIGKILL at random moments.
# --------------------------------------------------------------------------

KILLED_RUNS = 10


def _wait_for_training(proc, workdir, start, timeout=300.0):
  """Seconds from `start` until the child's log says "training from step" (its start-up
  is over), or until the child ends; polled every 10 ms."""
  log = pathlib.Path(str(workdir) + ".log")
  while time.time() - start < timeout and proc.is_alive():
    if log.exists() and "training from step" in log.read_text(errors="replace"):
      break
    time.sleep(0.01)
  return time.time() - start


def test_sigkill_at_random_moments_resumes_bit_identical(eight, tmp_path):
  # Each run is a child process (of a forkserver that imported the package
  # once) running the real training loop, SIGKILLed at a seeded moment drawn
  # uniformly over the middle 80% of an uninterrupted child's length: in
  # start-up, a step, or a checkpoint's write. Each is then resumed to
  # completion by the same training call in this process (which reuses the
  # compiled step of the reference `eight`: `train._programs`), and must end
  # bit-identical to the uninterrupted run, with one metrics row per logged step.
  #
  # The moments are mapped onto each child's own clock in two pieces: a moment in
  # the measured child's start-up (before its "training from step" line) falls at
  # that time after this child started; a later one at the same time after this
  # child's own start-up ended. A child whose start-up is slowed by the other
  # tests sharing the cores is then still killed in the phase that was drawn.
  #
  # The phases are measured on a second uninterrupted child: the first one compiles
  # (the later children find its programs in the compilation cache), so its start-up
  # is longer than theirs, and moments drawn on its clock fell in every child's
  # start-up (seen: all 10 left nothing written).
  context = _kill_worker.forkserver()
  for name in ("warm", "child"):
    t0 = time.time()
    ref = context.Process(target=_kill_worker.run, args=(str(tmp_path / name),))
    ref.start()
    startup = _wait_for_training(ref, tmp_path / name, t0)
    ref.join()
    duration = time.time() - t0  # A child's whole run, start-up included.
    assert ref.exitcode == 0, _log(tmp_path / name)[-3000:]
  want, want_data = _final_state(eight, _kill_worker.NUM_STEPS)
  resume_config = _run_config(_kill_worker.NUM_STEPS)
  resume_config.train.ckpt_every = _kill_worker.NUM_STEPS  # Resumable: changes no number.

  def check(workdir):
    state, data_state = _final_state(workdir, _kill_worker.NUM_STEPS)
    assert data_state == want_data and sorted(state) == sorted(want)
    for name, leaf in state.items():
      np.testing.assert_array_equal(np.asarray(leaf), np.asarray(want[name]), err_msg=name)

  check(tmp_path / "child")
  rng = random.Random(11)  # Seeded: the same moments on every run of the suite.
  killed, left = 0, []
  for i in range(KILLED_RUNS):
    workdir = tmp_path / f"run{i}"
    proc = context.Process(target=_kill_worker.run, args=(str(workdir),))
    start = time.time()
    proc.start()
    moment = rng.uniform(0.1, 0.9) * duration
    if moment < startup:
      proc.join(moment)
    else:
      began = _wait_for_training(proc, workdir, start)
      proc.join(max(0.0, moment - startup - (time.time() - start - began)))
    if proc.is_alive():
      os.kill(proc.pid, signal.SIGKILL)
      proc.join()
      killed += 1
    assert proc.exitcode in (0, -signal.SIGKILL), _log(workdir)[-3000:]
    # What the kill left: checkpoints, an unfinished "<step>.orbax-checkpoint-tmp".
    left.append(sorted(os.listdir(workdir / "checkpoints"))
                if (workdir / "checkpoints").exists() else [])
    train.train_and_evaluate(resume_config, str(workdir))  # Resume to the end.
    check(workdir)
    assert [r["step"] for r in sinks.read_metrics(workdir)] == [2, 4, 6]
    assert not (workdir / ".lock").exists()
  # Most moments fall before the run's end (a run that ended first tests
  # nothing; a loaded machine can slow one child more than the measured one),
  # and in different phases (nothing written yet, some checkpoints, a partial one).
  assert killed >= KILLED_RUNS // 2, left
  assert len({tuple(x) for x in left}) >= 2, left
