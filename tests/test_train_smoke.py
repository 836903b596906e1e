"""End to end: `python -m diffusion.main` on configs/smoke.py, plus its pieces.

The CLI runs in subprocesses that share a persistent XLA compilation cache,
so only the first run compiles. Runs (smoke: 6 steps, log/ckpt every 2,
sample at 6, batch 16 of the 1,797 digits):

  full:    6 steps in one go                                    -> workdir "full"
  part:    --config.train.num_steps=4, then the plain config
           (resumes at 4, runs to 6)                            -> workdir "part"
  sample:  --mode=sample in "full"
  changed: the plain config with diffusion.num_steps=50 in "full" -> refused
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from configs import smoke
from diffusion import checkpoint, data, visualize, writers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _main(workdir, *flags, cache_dir, check=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
  cmd = [sys.executable, "-m", "diffusion.main", "--config", "configs/smoke.py",
         "--workdir", str(workdir), *flags]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("smoke")
  cache = root / "xla_cache"
  full, part = root / "full", root / "part"
  out = {"full": full, "part": part}
  out["full_proc"] = _main(full, cache_dir=cache)
  out["part_proc"] = _main(part, "--config.train.num_steps=4", cache_dir=cache)
  out["part_ckpts_before_resume"] = _steps(part)
  # As if the run had logged step 5 and died before its next checkpoint.
  with open(part / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 5, "loss": 123.0}) + "\n")
  out["resume_proc"] = _main(part, cache_dir=cache)
  out["changed_proc"] = _main(full, "--config.diffusion.num_steps=50", cache_dir=cache,
                              check=False)
  out["sample_proc"] = _main(full, "--mode=sample", cache_dir=cache)
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
  rows = writers.read_metrics(runs["full"])
  assert [r["step"] for r in rows] == [2, 4, 6]
  for r in rows:
    assert {"loss", "mse", "grad_norm", "lr", "steps_per_sec"} <= set(r)
    assert np.isfinite(r["loss"]) and 0.5 < r["loss"] < 2.0  # eps-MSE starts near 1.
  # warmup_steps=2, lr=1e-3: the last step of each row (state steps 1, 3, 5) has
  # lr 5e-4, then 1e-3.
  np.testing.assert_allclose([r["lr"] for r in rows], [5e-4, 1e-3, 1e-3], rtol=1e-6)


def test_resume_continues_and_is_bit_identical(runs):
  assert "training from step 4 to 6" in runs["resume_proc"].stderr
  full_state, full_data = _restore(runs["full"], 6)
  part_state, part_data = _restore(runs["part"], 6)
  assert full_data == part_data == {"epoch": 0, "position": 6}
  assert int(full_state["step"]) == int(part_state["step"]) == 6
  leaves_a, tree_a = jax.tree.flatten(full_state)
  leaves_b, tree_b = jax.tree.flatten(part_state)
  assert tree_a == tree_b
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The resumed run saw the same batches: every logged loss is identical (and
  # the stale row of step 5 was dropped on resume).
  assert ([r["loss"] for r in writers.read_metrics(runs["full"])]
          == [r["loss"] for r in writers.read_metrics(runs["part"])])
  # And it trained: params moved away from those of step 2.
  early, _ = _restore(runs["full"], 2)
  assert not np.array_equal(np.asarray(jax.tree.leaves(early["params"])[0]),
                            np.asarray(jax.tree.leaves(full_state["params"])[0]))


def test_sample_png_and_sample_mode(runs):
  # num_samples=4 -> a 2x2 grid of 8x8 tiles upscaled 4x to 32, 2 px padding.
  side = 2 * (32 + 2) + 2
  for name in ("step_000006.png", "final_000006.png"):
    with Image.open(runs["full"] / "samples" / name) as im:
      assert im.size == (side, side) and im.mode == "L"
      assert np.asarray(im).std() > 0
  assert (runs["part"] / "samples" / "step_000004.png").exists()
  with np.load(runs["full"] / "samples" / "final_000006.npz") as f:
    assert f["images"].shape == (4, 8, 8, 1) and np.isfinite(f["images"]).all()


def test_changed_config_is_refused(runs):
  proc = runs["changed_proc"]
  assert proc.returncode != 0
  assert "diffusion.num_steps: 100 -> 50" in proc.stderr, proc.stderr[-2000:]
  assert "allow_config_change" in proc.stderr
  saved = json.loads((runs["full"] / "config.json").read_text())
  assert saved["diffusion"]["num_steps"] == 100
  assert _steps(runs["full"]) == [2, 4, 6]


def test_unknown_config_key_fails(tmp_path):
  proc = _main(tmp_path / "w", "--config.train.num_step=3", cache_dir=tmp_path / "c",
               check=False)
  assert proc.returncode != 0 and "num_step" in proc.stderr
  assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------------
# Pieces (in process, fast).
# --------------------------------------------------------------------------


def test_digits_batches_and_resumable_order():
  config = smoke.get_config().data
  it = data.create(config, seed=3)
  first = [next(it) for _ in range(3)]
  b = first[0]
  assert b["image"].shape == (16, 8, 8, 1) and b["image"].dtype == np.float32
  assert b["label"].shape == (16,) and b["label"].dtype == np.int32
  assert -1.0 <= b["image"].min() and b["image"].max() < 1.0
  state = it.get_state()
  assert state == {"epoch": 0, "position": 3}
  expected = [next(it) for _ in range(2)]
  again = data.create(config, seed=3)
  again.set_state(json.loads(json.dumps(state)))
  for e in expected:
    got = next(again)
    np.testing.assert_array_equal(got["image"], e["image"])
    np.testing.assert_array_equal(got["label"], e["label"])
  other = next(data.create(config, seed=4))
  assert not np.array_equal(other["label"], first[0]["label"])


def test_epochs_are_reshuffled_and_complete():
  config = smoke.get_config().data
  config.dequantize = False
  config.batch_size = 599  # 1797 = 3 * 599: an epoch is exactly 3 batches.
  it = data.create(config, seed=0)
  epoch0 = np.concatenate([next(it)["label"] for _ in range(3)])
  assert it.get_state() == {"epoch": 1, "position": 0}
  epoch1 = np.concatenate([next(it)["label"] for _ in range(3)])
  assert np.bincount(epoch0).tolist() == np.bincount(epoch1).tolist()
  assert not np.array_equal(epoch0, epoch1)
  images = next(it)["image"]  # Not dequantised: exactly k / 16 mapped to [-1, 1].
  np.testing.assert_array_equal((images + 1) / 2 * 16, np.round((images + 1) / 2 * 16))


def test_mnist_idx_files(tmp_path):
  import gzip
  imgs = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28)
  header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (5, 28, 28))
  with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
    f.write(header + imgs.tobytes())
  with open(tmp_path / "train-labels-idx1-ubyte", "wb") as f:
    f.write(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes([3, 1, 4, 1, 5]))
  config = smoke.get_config().data
  config.update(source="files", data_dir=str(tmp_path), image_size=28, batch_size=5,
                dequantize=False)
  batch = next(data.create(config, seed=0))
  assert sorted(batch["label"].tolist()) == [1, 1, 3, 4, 5]
  got = np.rint((batch["image"][..., 0] + 1) / 2 * 255).astype(np.uint8)
  assert {g.tobytes() for g in got} == {i.tobytes() for i in imgs}


def test_data_errors_name_the_problem(tmp_path):
  config = smoke.get_config().data
  config.source = "tfds"
  with pytest.raises(ValueError, match="source='digits'.*source='files'"):
    data.create(config, seed=0)
  config.source = "imagenet"
  with pytest.raises(ValueError, match="digits, files, tfds"):
    data.create(config, seed=0)
  config.update(source="files", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    data.create(config, seed=0)
  config.data_dir = str(tmp_path / "nope.npz")
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    data.create(config, seed=0)
  config.update(source="digits", image_size=28)
  with pytest.raises(ValueError, match="image_size=28.*8x8"):
    data.create(config, seed=0)


def test_image_grid_layout():
  images = np.stack([np.full((8, 8, 1), v, np.float32) for v in (-1.0, 0.0, 1.0)])
  grid = visualize.image_grid(images, nrow=2)
  assert grid.dtype == np.uint8 and grid.shape == (2 * 34 + 2, 2 * 34 + 2, 1)
  assert grid[2, 2, 0] == 0 and grid[2, 36, 0] == 128 and grid[36, 2, 0] == 255
  assert grid[0, 0, 0] == 255 and grid[2 + 31, 2 + 31, 0] == 0  # padding; tile corner


def test_non_finite_step_is_reported_with_its_number():
  from diffusion import parallel, train
  ok = {"finite": np.float32(1.0), "loss": np.float32(0.5), "grad_norm": np.float32(1.0)}
  bad = {"finite": np.float32(0.0), "loss": np.float32(np.nan), "grad_norm": np.float32(1.0)}
  assert train._host_metrics([(4, ok), (5, ok)])["loss"].tolist() == [0.5, 0.5]
  with pytest.raises(parallel.NonFiniteError, match="non-finite loss at step 5") as e:
    train._host_metrics([(4, ok), (5, bad), (6, ok)])
  assert e.value.step == 5
