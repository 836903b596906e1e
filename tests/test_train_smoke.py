"""End to end: `python -m diffusion.main` on configs/smoke.py, plus its pieces.

The CLI runs share a persistent XLA compilation cache, so only the first run
compiles. Those marked * are fresh `python -m diffusion.main` processes; the
others are the same command line in a forkserver child that imported the
package once (`_kill_worker.command_line`: flags parsed by absl, `main.main`,
its exit code), which saves each a fresh interpreter's start-up. Runs (smoke:
6 steps, log/ckpt every 2, sample at 6, batch 16 of the 1,797 digits):

  full*:    6 steps in one go                                   -> workdir "full"
  part:     --config.train.num_steps=4, then the plain config
            (resumes at 4, runs to 6)                           -> workdir "part"
  sample:   --mode=sample in "full" (6 samples in calls of 4; DDIM with 10
            steps; a GIF of 3 frames)
  changed*: the plain config with diffusion.num_steps=50 in "full" -> refused
            (beside part's first run)
  sigterm*: 100k steps, SIGTERM after a few (stops at S); resumed to 6 and
            compared with "full" (or, if S > 4, resumed to S + 2 and compared
            with an uninterrupted run of S + 2 steps)
"""
import itertools
import json
import os
import pathlib
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
from diffusion.run import checkpoint
from diffusion.modes import sample as sample_mode
from diffusion.modes import train
from diffusion.viz import images as visualize
from diffusion.run import sinks
import _kill_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]
# --mode sample's files: the step, then the sampler settings that differ from the
# defaults and N (`modes.sample.output_tag`); the fixture samples DDIM with 10 steps.
FINAL = "final_000006_ddim_num_steps-10_n6"


def _command(workdir, flags, cache_dir):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
  cmd = [sys.executable, "-m", "diffusion.main", "--config", "configs/smoke.py",
         "--workdir", str(workdir), *flags]
  return cmd, env


def _main(workdir, *flags, cache_dir, check=True):
  cmd, env = _command(workdir, flags, cache_dir)
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


_RUN_NUMBERS = itertools.count()


def _forked_main(workdir, *flags, cache_dir):
  """The command line of `_main` in a forkserver child; returns its output (stdout
  and stderr), after checking it exited 0."""
  cmd, env = _command(workdir, flags, cache_dir)
  log = pathlib.Path(f"{workdir}.{next(_RUN_NUMBERS)}.log")
  proc = _kill_worker.forkserver().Process(target=_kill_worker.command_line,
                                           args=(cmd[3:], env, str(ROOT), str(log)))
  proc.start()
  proc.join(600)
  output = log.read_text() if log.exists() else ""
  assert proc.exitcode == 0, (proc.exitcode, output[-4000:])
  return output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("smoke")
  cache = pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"])  # conftest: one per run
  full, part = root / "full", root / "part"
  out = {"full": full, "part": part, "root": root, "cache": cache}
  out["full_proc"] = _main(full, cache_dir=cache)
  cmd, env = _command(full, ["--config.diffusion.num_steps=50"], cache)
  changed = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # Refused before any compile.
  try:
    out["part_output"] = _forked_main(part, "--config.train.num_steps=4", cache_dir=cache)
    stdout, stderr = changed.communicate(timeout=600)
  finally:
    if changed.poll() is None:
      changed.kill()
  out["changed_proc"] = subprocess.CompletedProcess(cmd, changed.returncode, stdout, stderr)
  out["part_ckpts_before_resume"] = _steps(part)
  # As if the run had logged step 5 and died before its next checkpoint.
  with open(part / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 5, "loss": 123.0}) + "\n")
  out["resume_output"] = _forked_main(part, cache_dir=cache)
  out["sample_output"] = _forked_main(full, "--mode=sample", "--config.sample.num_samples=6",
                                      "--config.sample.batch_size=4",
                                      "--config.sample.gif_frames=3",
                                      "--config.sample.num_steps=10", cache_dir=cache)
  return out


def _steps(workdir):
  with checkpoint.Checkpointer(pathlib.Path(workdir) / "checkpoints") as ckpt:
    return ckpt.all_steps()


def _restore(workdir, step):
  with checkpoint.Checkpointer(pathlib.Path(workdir) / "checkpoints") as ckpt:
    return ckpt.restore(step)


def test_checkpoint_steps_on_disk(runs):
  assert _steps(runs["full"]) == [2, 4, 6]
  assert sorted(os.listdir(runs["full"] / "checkpoints"), key=int) == ["2", "4", "6"]
  assert runs["part_ckpts_before_resume"] == [2, 4]
  assert _steps(runs["part"]) == [2, 4, 6]


def test_config_json_is_the_config(runs):
  saved = json.loads((runs["full"] / "config.json").read_text())
  assert saved == json.loads(smoke.get_config().to_json())
  assert saved["train"]["num_steps"] == 6 and saved["model"]["channel_mult"] == [1]


def test_metrics_rows(runs):
  rows = sinks.read_metrics(runs["full"])
  assert [r["step"] for r in rows] == [2, 4, 6]
  for r in rows:
    assert {"loss", "mse", "grad_norm", "lr", "steps_per_sec"} <= set(r)
    assert np.isfinite(r["loss"]) and 0.5 < r["loss"] < 2.0  # eps-MSE starts near 1.
  # warmup_steps=2, lr=1e-3: the last step of each row (state steps 1, 3, 5) has
  # lr 5e-4, then 1e-3.
  np.testing.assert_allclose([r["lr"] for r in rows], [5e-4, 1e-3, 1e-3], rtol=1e-6)


def _assert_same_checkpoint(workdir_a, workdir_b, step):
  """Checkpoint `step` of both workdirs: same data state, bit-identical arrays."""
  state_a, data_a = _restore(workdir_a, step)
  state_b, data_b = _restore(workdir_b, step)
  assert data_a == data_b
  assert int(state_a["step"]) == int(state_b["step"]) == step
  leaves_a, tree_a = jax.tree.flatten(state_a)
  leaves_b, tree_b = jax.tree.flatten(state_b)
  assert tree_a == tree_b
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  return state_a, data_a


def test_resume_continues_and_is_bit_identical(runs):
  assert "training from step 4 to 6" in runs["resume_output"]
  full_state, full_data = _assert_same_checkpoint(runs["full"], runs["part"], 6)
  assert full_data == {"epoch": 0, "position": 6}
  # The resumed run saw the same batches: every logged loss is identical (and
  # the stale row of step 5 was dropped on resume).
  assert ([r["loss"] for r in sinks.read_metrics(runs["full"])]
          == [r["loss"] for r in sinks.read_metrics(runs["part"])])
  # And it trained: params moved away from those of step 2.
  early, _ = _restore(runs["full"], 2)
  assert not np.array_equal(np.asarray(jax.tree.leaves(early["params"])[0]),
                            np.asarray(jax.tree.leaves(full_state["params"])[0]))


def test_sample_png_and_sample_mode(runs):
  # num_samples=4 -> a 2x2 grid of 8x8 tiles upscaled 4x to 32, 2 px padding.
  side = 2 * (32 + 2) + 2
  for name in ("step_000006.png", f"{FINAL}.png"):
    with Image.open(runs["full"] / "samples" / name) as im:
      assert im.size == (side, side) and im.mode == "L"
      assert np.asarray(im).std() > 0
  assert (runs["part"] / "samples" / "step_000004.png").exists()
  with np.load(runs["full"] / "samples" / f"{FINAL}.npz") as f:
    images = f["images"]
  assert images.shape == (6, 8, 8, 1) and images.dtype == np.float32  # 4 + a call of 2.
  # The same samples as ADM's evaluator reads them: uint8 "arr_0", round((x + 1) * 127.5).
  with np.load(runs["full"] / "samples" / f"{FINAL}.uint8.npz") as f:
    assert f.files == ["arr_0"] and f["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(f["arr_0"], np.rint((images + np.float32(1)) * np.float32(127.5)))
  assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0
  assert len({im.tobytes() for im in images}) == 6  # Each call has its own key.
  # The reverse process of the grid: ddim's 10 steps subsampled to 3 frames
  # (after steps 1, 5 and 10), the last one being the PNG grid. (Pillow merges
  # identical frames: DDIM's last two states differ by < 1/255.)
  with Image.open(runs["full"] / "samples" / f"{FINAL}.gif") as gif:
    assert gif.n_frames == 3 and gif.size == (side, side) and gif.info["loop"] == 0
    frames = []
    for i in range(gif.n_frames):
      gif.seek(i)
      frames.append(np.asarray(gif.convert("L")))
  with Image.open(runs["full"] / "samples" / f"{FINAL}.png") as im:
    np.testing.assert_array_equal(frames[-1], np.asarray(im))
  assert not np.array_equal(frames[0], frames[-1])
  np.testing.assert_array_equal(  # The grid shows the first 4 samples of the npz.
      frames[-1], visualize.image_grid(images[:4])[..., 0])


def test_discrete_model_samples_with_euler_maruyama(runs, tmp_path):
  """The smoke model (discrete, linear betas, T = 100) under a continuous sampler:
  VPSDE(beta_min = 100 * 1e-4, beta_max = 100 * 0.02)."""
  workdir = tmp_path / "em"
  shutil.copytree(runs["full"], workdir, ignore=shutil.ignore_patterns("samples"))
  config = smoke.get_config("sampler=euler_maruyama,steps=10")
  config.sample.gif_frames = 5
  _, _, sde = experiment.build(config).sampler()
  np.testing.assert_allclose([sde.beta_min, sde.beta_max], [0.01, 2.0], rtol=1e-5)
  png = sample_mode.sample(config, str(workdir))
  stem = "final_000006_euler_maruyama_num_steps-10_n4"  # The settings name the files.
  assert png == str(workdir / "samples" / f"{stem}.png")
  with np.load(workdir / "samples" / f"{stem}.npz") as f:
    images = f["images"]
  assert images.shape == (4, 8, 8, 1) and np.isfinite(images).all() and images.std() > 0.05
  with Image.open(png) as im, Image.open(workdir / "samples" / f"{stem}.gif") as gif:
    assert gif.n_frames == 5 and gif.size == im.size
  # The same settings again: new files beside the first ones, none overwritten.
  before = {p.name: p.read_bytes() for p in (workdir / "samples").iterdir()}
  assert sample_mode.sample(config, str(workdir)) == str(workdir / "samples" / f"{stem}-2.png")
  assert all((workdir / "samples" / n).read_bytes() == b for n, b in before.items())
  with np.load(workdir / "samples" / f"{stem}-2.npz") as f:  # Deterministic: equal samples.
    np.testing.assert_array_equal(f["images"], images)
  config = smoke.get_config("schedule=cosine,sampler=euler_maruyama")
  with pytest.raises(ValueError, match="diffusion.schedule='cosine'"):
    sample_mode.sample(config, str(workdir))


def _wait_for_rows(workdir, n, proc, timeout=120.0):
  path, t0 = pathlib.Path(workdir) / "metrics.jsonl", time.time()
  while time.time() - t0 < timeout and proc.poll() is None:
    if path.exists() and len(path.read_text().splitlines()) >= n:
      return
    time.sleep(0.05)
  raise AssertionError(f"no {n} metric rows in {path} after {time.time() - t0:.0f}s")


def test_sigterm_saves_exits_cleanly_and_resumes_bit_identical(runs):
  root, cache = runs["root"], runs["cache"]
  # Logging, checkpoint and sample cadence are resumable keys: they do not
  # change what is trained, so "full" is the uninterrupted reference.
  long = ["--config.train.log_every=1", "--config.train.ckpt_every=100000",
          "--config.train.sample_every=0"]
  stopped = root / "sigterm"
  cmd, env = _command(stopped, ["--config.train.num_steps=100000", *long], cache)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_rows(stopped, 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, stderr[-3000:]
  (last,) = _steps(stopped)  # Only the preemption checkpoint (ckpt_every=100000).
  assert 2 <= last < 100000
  assert f"SIGTERM: stopped at step {last} of 100000" in stderr
  assert sinks.read_metrics(stopped)[-1]["step"] <= last
  final, reference = 6, runs["full"]
  if last > 4:  # A fast machine ran past "full": train a reference as long.
    final, reference = last + 2, root / "uninterrupted"
    _forked_main(reference, f"--config.train.num_steps={final}", *long, cache_dir=cache)
  resumed = _forked_main(stopped, f"--config.train.num_steps={final}", *long, cache_dir=cache)
  assert f"training from step {last} to {final}" in resumed
  _assert_same_checkpoint(stopped, reference, final)


def test_changed_config_is_refused(runs):
  proc = runs["changed_proc"]
  assert proc.returncode != 0
  assert "diffusion.num_steps: 100 -> 50" in proc.stderr, proc.stderr[-2000:]
  assert "allow_config_change" in proc.stderr
  saved = json.loads((runs["full"] / "config.json").read_text())
  assert saved["diffusion"]["num_steps"] == 100
  assert _steps(runs["full"]) == [2, 4, 6]


# --------------------------------------------------------------------------
# Pieces (in process, fast).
# --------------------------------------------------------------------------


def test_image_grid_layout():
  images = np.stack([np.full((8, 8, 1), v, np.float32) for v in (-1.0, 0.0, 1.0)])
  grid = visualize.image_grid(images, nrow=2)
  assert grid.dtype == np.uint8 and grid.shape == (2 * 34 + 2, 2 * 34 + 2, 1)
  assert grid[2, 2, 0] == 0 and grid[2, 36, 0] == 128 and grid[36, 2, 0] == 255
  assert grid[0, 0, 0] == 255 and grid[2 + 31, 2 + 31, 0] == 0  # padding; tile corner


def test_non_finite_step_is_reported_with_its_number():
  from diffusion.train import step as train_step
  ok = {"finite": np.float32(1.0), "loss": np.float32(0.5), "grad_norm": np.float32(1.0)}
  bad = {"finite": np.float32(0.0), "loss": np.float32(np.nan), "grad_norm": np.float32(1.0)}
  assert train._host_metrics([(4, ok), (5, ok)])["loss"].tolist() == [0.5, 0.5]
  with pytest.raises(train_step.NonFiniteError, match="non-finite loss at step 5") as e:
    train._host_metrics([(4, ok), (5, bad), (6, ok)])
  assert e.value.step == 5


def test_reverse_process_frames_and_gif(tmp_path):
  traj = np.stack([np.full((2, 8, 8, 1), v, np.float32) for v in np.linspace(-1, 0.8, 10)])
  final = np.ones((2, 8, 8, 1), np.float32)
  frames = visualize.reverse_process_frames(traj, final, num_frames=4)  # steps 0, 3, 6, final.
  assert len(frames) == 4 and frames[0].shape == (36, 70, 1)
  assert [f[2, 2, 0] for f in frames] == [0, 76, 153, 255]  # -1, -0.4, 0.2, 1
  assert len(visualize.reverse_process_frames(traj[:2], final, num_frames=50)) == 2
  visualize.save_gif(tmp_path / "a.gif", frames)
  with Image.open(tmp_path / "a.gif") as gif:
    assert gif.n_frames == 4 and gif.size == (70, 36)
    gif.seek(3)
    assert np.asarray(gif.convert("L"))[2, 2] == 255
