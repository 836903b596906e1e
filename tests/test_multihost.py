"""Multi-host on one machine: N CPU processes x M fake devices stand in for a pod.

Runs of `python -m diffusion.main` on configs/smoke.py (batch 16, ckpt every 2)
at XLA -O0, sharing an XLA compile cache (JAX writes it from process 0 only,
and the other processes' cache keys differ, so process 1 compiles in every
2-process run). The 2-process runs are fresh interpreters (`launch.sh` or
started directly); the 1-process runs (sp, mp->sp, the 1-device eval) are the
same command line run by a forkserver child that imported the package once
(`_kill_worker.command_line`). Runs that do not need each other's output
overlap: sp (and the tiny classifier of the evals, trained in this process)
beside mp; mp->sp and the 1-device eval beside sp->mp, resume and rerun, which
leave a core idle while process 0 waits for process 1's compile:

  mp:      `launch.sh multiprocess 2` (2 processes x 2 devices), 4 steps,
           samples at 4                                         -> "mp"
  sp:      1 process x 4 devices, 6 steps                         -> "sp"
  mp->sp:  "mp"'s checkpoint 4 continued to 6 by 1 process x 4    -> "mp_sp"
  eval:    `--mode eval` of "mp"'s checkpoint 4 by `launch.sh multiprocess
           2` and by 1 process x 1 device on a copy              -> "mp_eval1"
  sp->mp:  "sp"'s checkpoint 2 continued by 2 processes (started
           directly, no launch.sh) to checkpoint 4 and beyond; then
           process 1 gets SIGTERM: both must save one step and
           exit 0 within 60 s                                     -> "killed"
  resume:  the same 2-process command resumes there; after its next
           checkpoint process 1 is SIGKILLed: process 0 must exit
           non-zero within 60 s, naming the dead task
  rerun:   `launch.sh multiprocess 2` in "killed": resumes from its
           last checkpoint

Global batch, per-device keys (global device index) and data slices are those
of one process with 4 devices, so the parameters agree to float rounding (the
all-reduce sums in another order).
"""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from configs import smoke
from diffusion.run import checkpoint
from diffusion.dist import cluster
from diffusion.dist import placement
from diffusion.run import sinks
import _kill_worker
import tiny_classifier

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOL = 1e-6
KILL_DEADLINE_S = 60
EVAL_BATCH = 8  # 20 samples: calls of 8, 8, 8 (the last cut to 4); divisible by 4 devices.
EVAL_RTOL = 1e-5  # Derived in test_eval_split_over_processes_equals_one_device.


def _env(cache_dir, devices=None):
  # XLA -O0 halves the compile time of the step, which dominates (process 1
  # compiles in every run); every run here uses it, so they stay comparable.
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
  if devices is not None:
    flags += f" --xla_force_host_platform_device_count={devices}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", XLA_FLAGS=flags.strip(),
             PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
  env.pop("DEVICES_PER_PROCESS", None)
  return env


def _main_cmd(workdir, *flags):
  return [sys.executable, "-m", "diffusion.main", "--config", "configs/smoke.py",
          "--workdir", str(workdir), *flags]


class _Single:
  """One process with `devices` fake devices, started: the command line in a
  forkserver child (module doc); `join` returns its output (stdout and stderr)."""

  def __init__(self, workdir, *flags, cache_dir, devices=4):
    self.log = pathlib.Path(str(workdir) + ".log")
    argv = _main_cmd(workdir, *flags)[3:]  # After `python -m diffusion.main`.
    self.proc = _kill_worker.forkserver().Process(
        target=_kill_worker.command_line,
        args=(argv, _env(cache_dir, devices), str(ROOT), str(self.log)))
    self.proc.start()

  def join(self):
    self.proc.join(600)
    output = self.log.read_text() if self.log.exists() else ""
    assert self.proc.exitcode == 0, (self.proc.exitcode, output[-4000:])
    return output


def _single(workdir, *flags, cache_dir, devices=4):
  return _Single(workdir, *flags, cache_dir=cache_dir, devices=devices).join()


def _launch_cmd(n, workdir, *flags, cache_dir):
  """`launch.sh multiprocess n` (2 devices per process): (argv, env)."""
  env = _env(cache_dir)
  env["PYTHON"] = sys.executable
  return ["bash", str(ROOT / "launch.sh"), "multiprocess", str(n), "configs/smoke.py",
          str(workdir), *flags], env


def _launch(n, workdir, *flags, cache_dir, check=True):
  cmd, env = _launch_cmd(n, workdir, *flags, cache_dir=cache_dir)
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  return proc


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _copy_checkpoints(src, dst, steps):
  """A workdir with config.json and checkpoints `steps` of `src`."""
  (dst / "checkpoints").mkdir(parents=True)
  shutil.copy(src / "config.json", dst / "config.json")
  for step in steps:
    shutil.copytree(src / "checkpoints" / str(step), dst / "checkpoints" / str(step))


def _restore(workdir, step):
  with checkpoint.Checkpointer(pathlib.Path(workdir) / "checkpoints") as ckpt:
    return ckpt.restore(step)


def _steps(workdir):
  with checkpoint.Checkpointer(pathlib.Path(workdir) / "checkpoints") as ckpt:
    return ckpt.all_steps()


def _max_diff(workdir_a, workdir_b, step):
  """Largest |a - b| over the whole train state of checkpoint `step`."""
  state_a, data_a = _restore(workdir_a, step)
  state_b, data_b = _restore(workdir_b, step)
  assert data_a == data_b
  assert int(state_a["step"]) == int(state_b["step"]) == step
  assert jax.tree.structure(state_a) == jax.tree.structure(state_b)
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64)
                                                        - np.asarray(b, np.float64)))),
                       state_a, state_b)
  return max(jax.tree.leaves(diffs))


def _wait_for(path, procs, timeout=240.0):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if path.exists():
      return
    if any(p.poll() is not None for p in procs):
      raise AssertionError(f"a process exited before {path} appeared: "
                           f"{[p.poll() for p in procs]}")
    time.sleep(0.05)
  raise AssertionError(f"no {path} after {timeout:.0f}s")


def _start_two(workdir, flags, cache):
  """Two processes x 2 devices started directly (no launch.sh), output piped."""
  port, env = _free_port(), _env(cache, devices=2)
  flags = [*flags, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  return [subprocess.Popen(_main_cmd(workdir, *flags, f"--process_id={i}"), cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for i in range(2)]


def _kill(procs):
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.communicate()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  cache = pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"])  # conftest: one per run
  out = {"root": root, "cache": cache}
  # mp and sp (independent) together, and the classifier for the evals
  # meanwhile (a tiny one gives the features).
  cmd, env = _launch_cmd(2, root / "mp", "--config.train.num_steps=4",
                         "--config.train.sample_every=4", cache_dir=cache)
  with open(root / "mp.stdout", "w") as stdout, open(root / "mp.stderr", "w") as stderr:
    mp = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
  try:
    sp = _Single(root / "sp", "--config.train.sample_every=0", cache_dir=cache)
    clf = root / "classifier"
    tiny_classifier.train_and_save(clf, "test_multihost")
    out["sp_output"] = sp.join()
    mp.wait(timeout=600)
  finally:
    if mp.poll() is None:
      mp.kill()
  out["mp_stdout"] = (root / "mp.stdout").read_text()
  assert mp.returncode == 0, out["mp_stdout"][-4000:] + (root / "mp.stderr").read_text()[-4000:]

  # Beside the 2-process runs below: mp -> sp, and the eval of "mp"'s
  # checkpoint 4 by 1 process with 1 device on a copy.
  _copy_checkpoints(root / "mp", root / "mp_sp", [2, 4])
  _copy_checkpoints(root / "mp", root / "mp_eval1", [4])
  eval_flags = ["--mode=eval", "--config.train.num_steps=4", "--config.train.sample_every=4",
                f"--config.eval.classifier_path={clf}", f"--config.eval.batch_size={EVAL_BATCH}"]

  def one_process_runs():
    out["mp_sp_output"] = _single(root / "mp_sp", "--config.train.sample_every=0",
                                  cache_dir=cache)
    out["sp_eval_output"] = _single(root / "mp_eval1", *eval_flags, cache_dir=cache, devices=1)

  errors = []
  beside = threading.Thread(target=lambda: _record_error(one_process_runs, errors))
  beside.start()
  try:
    _two_process_runs(root, cache, out)
  finally:
    beside.join()
  if errors:
    raise errors[0]
  # The eval of "mp"'s checkpoint 4 by 2 processes x 2 devices.
  out["mp_eval_proc"] = _launch(2, root / "mp", *eval_flags, cache_dir=cache)
  return out


def _record_error(fn, errors):
  try:
    fn()
  except BaseException as e:  # pylint: disable=broad-except  (re-raised by the fixture)
    errors.append(e)


def _two_process_runs(root, cache, out):
  """sp -> mp and SIGTERM, the resume and SIGKILL, the rerun (module doc)."""
  # sp -> mp; process 1 gets SIGTERM (a preemption notice): both stop at the
  # same step, save it and exit 0.
  killed = root / "killed"
  _copy_checkpoints(root / "sp", killed, [2])
  flags = ["--config.train.num_steps=100000", "--config.train.log_every=1",
           "--config.train.ckpt_every=2", "--config.train.sample_every=0",
           "--heartbeat_timeout=5"]
  procs = _start_two(killed, flags, cache)
  try:
    _wait_for(killed / "checkpoints" / "4", procs)
    procs[1].send_signal(signal.SIGTERM)
    t0 = time.time()
    outputs = [p.communicate(timeout=KILL_DEADLINE_S + 60)[0] for p in procs]
    out["term_s"], out["term_outputs"] = time.time() - t0, outputs
    out["term_rcs"] = [p.returncode for p in procs]
  finally:
    _kill(procs)
  out["term_last"] = _steps(killed)[-1]

  # Resume the preempted run, then SIGKILL process 1 after its next checkpoint.
  nxt = out["term_last"] + 2 - out["term_last"] % 2
  procs = _start_two(killed, flags, cache)
  try:
    _wait_for(killed / "checkpoints" / str(nxt), procs)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    try:
      output, _ = procs[0].communicate(timeout=KILL_DEADLINE_S + 60)
    except subprocess.TimeoutExpired:
      output = "(still running)"
    out["survivor_s"] = time.time() - t0
    out["survivor_rc"], out["survivor_output"] = procs[0].returncode, output
  finally:
    _kill(procs)
  out["killed_last"] = _steps(killed)[-1]
  out["rerun_proc"] = _launch(2, killed, f"--config.train.num_steps={out['killed_last'] + 2}",
                              "--config.train.sample_every=0", cache_dir=cache)


def test_two_processes_train_as_one_process_with_four_devices(runs):
  root = runs["root"]
  assert _steps(root / "mp") == [2, 4]
  for step in (2, 4):
    assert _max_diff(root / "mp", root / "sp", step) < TOL
  # Process 0 alone wrote the metrics (one row per log step) and the samples.
  mp_rows, sp_rows = sinks.read_metrics(root / "mp"), sinks.read_metrics(root / "sp")
  assert [r["step"] for r in mp_rows] == [2, 4]
  np.testing.assert_allclose([r["loss"] for r in mp_rows],
                             [r["loss"] for r in sp_rows[:2]], rtol=1e-5)
  assert os.listdir(root / "mp" / "samples") == ["step_000004.png"]
  stdout = runs["mp_stdout"]
  assert "training from step 0 to 4" in stdout and stdout.count("training from step") == 1
  assert "[0] model unet" in stdout and "[1] " in stdout  # Process 1 echoes nothing itself.


def test_checkpoints_move_between_process_counts(runs):
  root = runs["root"]
  # 2 processes -> 1: resumes at 4 and ends where the 1-process run did.
  assert "training from step 4 to 6" in runs["mp_sp_output"]
  assert _max_diff(root / "mp_sp", root / "sp", 6) < TOL
  # 1 process -> 2: resumed at 2, its checkpoint 4 is the 1-process one.
  assert "training from step 2 to 100000" in runs["term_outputs"][0]
  assert _max_diff(root / "killed", root / "sp", 4) < TOL


def test_sigterm_to_one_process_stops_all_at_one_saved_step(runs):
  """A preemption notice reaching one process: the step's collective stop flag
  makes both save the same step and exit 0; the next run resumes there."""
  assert runs["term_rcs"] == [0, 0], runs["term_outputs"][0][-3000:]
  assert runs["term_s"] < KILL_DEADLINE_S
  last = runs["term_last"]
  assert last >= 4
  assert (f"another process's stop signal: stopped at step {last} of 100000"
          in runs["term_outputs"][0])  # Process 0 never got the signal itself.
  assert f"training from step {last} to 100000" in runs["survivor_output"]


def test_killed_process_stops_the_survivor_and_the_rerun_resumes(runs):
  assert runs["survivor_rc"] not in (0, None), runs["survivor_output"][-3000:]
  assert runs["survivor_s"] < KILL_DEADLINE_S
  assert "another task died" in runs["survivor_output"]
  last = runs["killed_last"]
  assert last > runs["term_last"] and last % 2 == 0
  assert f"training from step {last} to {last + 2}" in runs["rerun_proc"].stdout
  assert _steps(runs["root"] / "killed")[-1] == last + 2


def test_eval_split_over_processes_equals_one_device(runs):
  """`--mode eval` by 2 processes x 2 devices (every sampler call, bits/dim
  batch and reference batch split four ways, features gathered) gives the
  numbers of 1 process with 1 device. The per-image arithmetic is the same,
  only on other batch shapes, so images agree to float32 rounding
  (Experiment.sample_fn on 4 devices vs 1: max |diff| 1.2e-7 at |x| <= 1,
  one ulp) and so do the statistics; EVAL_RTOL allows 100x that."""
  root = runs["root"]
  assert "[0] eval: wrote" in runs["mp_eval_proc"].stdout
  a = json.loads((root / "mp" / "eval" / "results.json").read_text())
  b = json.loads((root / "mp_eval1" / "eval" / "results.json").read_text())
  assert [r["spec"] for r in a["rounds"]] == [r["spec"] for r in b["rounds"]] == list(
      smoke.get_config().eval.specs)
  for ra, rb in zip(a["rounds"], b["rounds"]):
    assert ra["num_samples"] == rb["num_samples"] == 20
    for key in ("fid", "kid", "inception_score", "precision", "recall"):
      assert ra[key] == pytest.approx(rb[key], rel=EVAL_RTOL, abs=1e-9), (ra["spec"], key)
  assert a["bpd"]["num_images"] == b["bpd"]["num_images"] == 8
  assert a["bpd"]["bits_per_dim"] == pytest.approx(b["bpd"]["bits_per_dim"], rel=EVAL_RTOL)
  ref_a = np.load(root / "mp" / "eval" / "reference_classifier_train.npz")
  ref_b = np.load(root / "mp_eval1" / "eval" / "reference_classifier_train.npz")
  np.testing.assert_allclose(ref_a["features"], ref_b["features"], rtol=EVAL_RTOL, atol=1e-6)
  # Only process 0 wrote: one results file, no stray temporary files.
  assert sorted(os.listdir(root / "mp" / "eval" / "rounds")) == sorted(
      os.listdir(root / "mp_eval1" / "eval" / "rounds"))


def test_launch_kills_the_others_when_one_fails(tmp_path):
  """launch.sh's watchdog, with a stand-in for python: process 1 fails at once,
  process 0 would sleep for 10 minutes."""
  fake = tmp_path / "python"
  fake.write_text("#!/bin/bash\n"
                  "[ \"$1\" = -c ] && exec python3 \"$@\"\n"  # launch.sh's free-port finder.
                  "case \" $* \" in *' --process_id 1 '*) echo boom; exit 3 ;; esac\n"
                  "echo \"started $*\"; exec sleep 600\n")
  fake.chmod(0o755)
  env = dict(os.environ, PYTHON=str(fake), DEVICES_PER_PROCESS="3")
  t0 = time.time()
  proc = subprocess.run(["bash", str(ROOT / "launch.sh"), "multiprocess", "2", "c.py", "w",
                         "--config.x=1"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 3 and time.time() - t0 < 30
  assert "[1] boom" in proc.stdout and "[0] started" in proc.stdout
  assert "--num_processes 2 --process_id 0 --config.x=1" in proc.stdout
  assert "process 1 exited with status 3; killing the others" in proc.stderr


def test_initialize_distributed_only_when_asked(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(a))
  assert not cluster.initialize_distributed(environ={})
  assert not cluster.initialize_distributed(environ={"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"})
  assert not cluster.initialize_distributed(environ={"TPU_WORKER_HOSTNAMES": "localhost"})
  assert calls == []
  with pytest.raises(ValueError, match="all of coordinator_address"):
    cluster.initialize_distributed("127.0.0.1:1234", environ={})
  with pytest.raises(ValueError, match="process_id=2"):
    cluster.initialize_distributed("127.0.0.1:1234", 2, 2, environ={})
  assert cluster.initialize_distributed("127.0.0.1:1234", 2, 1, heartbeat_timeout_seconds=7,
                                         environ={})
  assert calls[0] == ("jax_cpu_collectives_implementation", "gloo")
  assert calls[1][0] == ("127.0.0.1:1234", 2, 1)
  assert calls[1][1]["heartbeat_timeout_seconds"] == 7
  for environ in ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476"}, {"DIFFUSION_DISTRIBUTED": "1"},
                  {"SLURM_NTASKS": "4", "SLURM_JOB_ID": "7"},
                  {"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}):
    calls.clear()
    assert cluster.initialize_distributed(environ=environ), environ
    assert calls[1][0] == (None, None, None)  # JAX detects the cluster itself.


def test_pmap_is_refused_across_processes():
  class FakeDevice:
    def __init__(self, process_index):
      self.process_index, self.id = process_index, process_index

  mesh = type("M", (), {"devices": np.array([FakeDevice(0), FakeDevice(1)], object)})()
  with pytest.raises(ValueError, match="train.parallel='jit' for multi-host"):
    placement._check_multiprocess(mesh, "pmap")
  placement._check_multiprocess(mesh, "jit")
