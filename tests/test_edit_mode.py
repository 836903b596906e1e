"""`--mode edit` end to end on configs/smoke.py (a tiny UNet trained 2 steps on digits).

The network is untrained, so nothing here measures edit quality (that is the README's
MNIST result); what is asserted is what the mode must get exactly right whatever the
network: known pixels kept bit for bit, an edit of tiny strength returning its input
within the noise of one step, the regeneration of an inversion under the same
condition equal to its reconstruction, the written metrics equal to those recomputed
from the written arrays, and every bad input refused in one line before any compute.
The numerics of the algorithms themselves are proven in tests/test_edit.py.
"""
import csv
import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs import smoke
from diffusion.core import checks
from diffusion.eval import anomaly
from diffusion.modes import edit as edit_mode
from diffusion.modes import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**edit):
  c = smoke.get_config()
  c.train.num_steps, c.train.ckpt_every, c.train.sample_every = 2, 2, 0
  for k, v in edit.items():
    c.edit[k] = v
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("edit_mode")
  wd = root / "run"
  train.train_and_evaluate(_config(), str(wd))
  rng = np.random.default_rng(0)
  # 12 digit-like 8x8 images in [0, 16] (uint8 levels of the digits data, as files hold).
  images = rng.integers(0, 17, size=(12, 8, 8, 1)).astype(np.uint8) * 15
  np.savez(root / "in.npz", images=images, anomaly=np.r_[np.zeros(6), np.ones(6)].astype(int))
  np.savez(root / "normal.npz", images=images[:6])
  return {"wd": str(wd), "root": root, "input": str(root / "in.npz"),
          "normal": str(root / "normal.npz"), "images": images.astype(np.float32) / 127.5 - 1}


def _run(trained, **edit):
  out = edit_mode.edit_mode(_config(input=trained["input"], batch_size=8, **edit),
                            trained["wd"])
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
  return out, np.load(os.path.join(out, "results.npz")), summary


def test_inpaint_keeps_the_known_pixels_exactly(trained):
  for method in ("replace", "repaint"):
    out, r, s = _run(trained, task="inpaint", mask="half", inpaint_method=method,
                     jump_length=10, jump_n_sample=2)
    x, m, y = r["images"], r["masks"], r["results"]
    np.testing.assert_allclose(x, trained["images"], atol=1e-6)  # Read in [-1, 1].
    assert m.shape == x.shape and m[:, :4].min() == 1 and m[:, 4:].max() == 0
    np.testing.assert_array_equal(y[m == 1], x[m == 1])
    # The generated half is the model's, not the input's (random 8x8 inputs).
    assert np.mean(np.abs(y[m == 0] - x[m == 0])) > 0.1
    assert s["known_fraction"] == 0.5 and s["num_images"] == 12
    assert Image.open(os.path.join(out, "figure.png")).size[0] > 0
  # Two runs of the same task: the second wrote beside the first, nothing overwritten.
  assert sorted(os.listdir(pathlib.Path(out).parent)) == ["inpaint", "inpaint-2"]


def test_img2img_of_tiny_strength_returns_the_input(trained):
  """Strength 0.01 of T = 100 is one step at sigma~ = sqrt(1 / ab_0 - 1) ~ 0.01: DDIM
  from there moves each pixel by at most ~sigma~ (|z| + |eps|) < 0.1 (|z|, |eps| < 5),
  against pixels spread over [-1, 1]."""
  _, r, s = _run(trained, task="img2img", strength=0.01)
  assert s["start_sigma"] == pytest.approx(0.01, rel=0.01)
  assert np.max(np.abs(r["results"] - trained["images"])) < 0.1


def test_inversion_regenerated_unconditionally_is_its_reconstruction(trained):
  _, r, s = _run(trained, task="invert", invert_steps=4)
  np.testing.assert_array_equal(r["results"], r["reconstruction"])
  assert r["noise"].shape == (12, 8, 8, 1) and s["invert_steps"] == 4
  mse = np.mean(np.square(r["reconstruction"] - trained["images"]).reshape(12, -1), axis=1)
  # PSNR with the mode's floor of 1e-12 on the MSE (an exact reconstruction reads 126 dB).
  assert s["reconstruction_psnr_db"] == pytest.approx(
      np.mean(10 * np.log10(4 / np.maximum(mse, 1e-12))), rel=1e-5)


def test_denoise_reports_the_psnr_of_its_arrays(trained):
  for method in ("tweedie", "reverse"):
    _, r, s = _run(trained, task="denoise", sigma=0.3, add_noise=True, denoise_method=method)
    clean, noisy, out = r["images"], r["noisy"], r["results"]
    # The added noise has the asked std: 768 values, SE of the std ~0.3 / sqrt(2 * 768).
    assert np.std(noisy - clean) == pytest.approx(0.3, abs=3 * 0.3 / np.sqrt(2 * 768))
    psnr = lambda a: np.mean(10 * np.log10(4 / np.mean(np.square(a - clean).reshape(12, -1), 1)))
    assert s["psnr_noisy_db"] == pytest.approx(psnr(noisy), rel=1e-5)
    assert s["psnr_denoised_db"] == pytest.approx(psnr(out), rel=1e-5)
    np.testing.assert_array_equal(r["sigma"], np.full(12, 0.3, np.float32))


def test_anomaly_scores_threshold_and_auroc_agree_with_the_written_files(trained):
  out, r, s = _run(trained, task="anomaly", normal=trained["normal"], quantile=0.5,
                   scores=("reconstruction", "score_norm"))
  labels = r["anomaly"]
  with open(os.path.join(out, "scores.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 12 and [int(row["anomaly"]) for row in rows] == labels.tolist()
  for name in ("reconstruction", "score_norm"):
    scores = r[f"score_{name}"]
    np.testing.assert_allclose([float(row[name]) for row in rows], scores, rtol=1e-5)
    assert s[f"auroc_{name}"] == pytest.approx(anomaly.auroc(scores, labels))
    flagged = np.array([int(row[f"flagged_{name}"]) for row in rows])
    np.testing.assert_array_equal(flagged, scores > s["thresholds"][name])
    # The normal images are the input's first six, scored with other noise for the
    # reconstruction score, with the same (deterministic) score norm: at the median,
    # three of those six lie above the threshold.
    if name == "score_norm":
      assert flagged[:6].sum() == 3
  for png in ("histogram.png", "roc.png", "figure.png"):
    assert os.path.getsize(os.path.join(out, png)) > 0


def test_latent_mask_keeps_a_cell_only_where_all_its_pixels_are_kept():
  m = np.ones((1, 8, 8, 1), np.float32)
  m[0, 4:] = 0  # The bottom half: latent rows 2, 3 of 4 generated (f = 2).
  m[0, 0, 0] = 0  # One generated pixel: its whole cell is generated.
  z = np.asarray(edit_mode._latent_mask(jnp.asarray(m), (4, 4, 3)))
  want = np.ones((4, 4), np.float32)
  want[2:] = 0
  want[0, 0] = 0
  np.testing.assert_array_equal(z, np.broadcast_to(want[None, :, :, None], (1, 4, 4, 3)))


def test_bad_inputs_fail_in_one_line(trained, tmp_path):
  def refused(match, **edit):
    with pytest.raises(checks.ConfigError, match=match):
      edit_mode.edit_mode(_config(**edit), trained["wd"])
  refused("config.edit.task='paint' is not one of inpaint, img2img", task="paint",
          input=trained["input"])
  refused(r"strength 1.5 must lie in \(0, 1\]", task="img2img", strength=1.5,
          input=trained["input"])
  refused("config.edit.input is empty", task="inpaint")
  Image.fromarray(np.full((6, 6), 255, np.uint8)).save(tmp_path / "mask.png")
  refused(r"is 6x6 but the images are 8x8", task="inpaint", mask=str(tmp_path / "mask.png"),
          input=trained["input"])
  np.savez(tmp_path / "rgb.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
  refused("rgb.npz", task="inpaint", input=str(tmp_path / "rgb.npz"))
  refused("recon_sigmas", task="anomaly", recon_sigmas=(0.1, -1.0), input=trained["input"])
  # The command line's "--config.edit.scores=bpd,foo" arrives as ("bpd,foo",): split.
  refused(r"scores=\('bpd', 'foo'\)", task="anomaly", scores=("bpd,foo",),
          input=trained["input"])
  assert not os.path.exists(os.path.join(trained["wd"], "edit", "img2img-2"))
  # And on the command line: exit code 2 and the one line "error: ...".
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  p = subprocess.run([sys.executable, "-m", "diffusion.main", "--mode", "edit", "--config",
                      "configs/smoke.py", "--workdir", trained["wd"],
                      "--config.edit.task=img2img", "--config.edit.strength=0",
                      f"--config.edit.input={trained['input']}"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2, p.stderr
  lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
  assert lines[-1].startswith("error: config.edit.strength") and "Traceback" not in p.stderr
