"""`--mode eval` end to end on configs/smoke.py, plus the sampler-spec parser.

One module fixture: a copy of the smoke model after 2 steps
(tests/fixtures/workdir_v0/discrete) and the tiny classifier on digits, then
runs `--mode eval` twice in subprocesses sharing an XLA compile cache (two
DDIM samplers, 20 samples each, bits/dim on 8 images); before the second run
one round file is deleted, so only that round is recomputed.
"""
import json
import os
import re
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import smoke
from diffusion.core import checks
from diffusion import experiment
from diffusion.run import checkpoint
from diffusion.data import iterator as data
from diffusion.modes import eval as eval_mode
from diffusion.core import likelihood
from diffusion.eval import features
from diffusion.eval import entries as sampler_specs
from diffusion.eval import metrics
import tiny_classifier

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "workdir_v0" / "discrete"
SPECS = ("ddim:steps=4,eta=0", "ddim:steps=4,eta=1")
BASELINE = "--config.eval.baseline_split=train"  # A first row "data:train" of real images
# (digits have one split: smoke.py evaluates on it knowingly, families.digits_8x8).


def _main(workdir, cache, *flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
  cmd = [sys.executable, "-m", "diffusion.main", "--config", "configs/smoke.py",
         "--workdir", str(workdir), *flags]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _finish(proc):
  _, stderr = proc.communicate(timeout=600)
  assert proc.returncode == 0, stderr[-4000:]
  return stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  cache = pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"])  # conftest: one per run
  workdir, clf = root / "w", root / "classifier"
  # The smoke model after 2 steps (`--config.train.num_steps=2
  # --config.train.sample_every=0`): the fixture of tests/test_compat.py.
  shutil.copytree(FIXTURE, workdir)
  tiny_classifier.train_and_save(clf, "test_eval_mode")
  flag = f"--config.eval.classifier_path={clf}"
  first = _finish(_main(workdir, cache, "--mode=eval", flag, BASELINE))
  rounds = workdir / "eval" / "rounds"
  mtimes = {p.name: p.stat().st_mtime_ns for p in rounds.glob("*.json")}
  results_first = json.loads((workdir / "eval" / "results.json").read_text())
  (rounds / (sampler_specs.spec_filename(SPECS[1]) + ".json")).unlink()
  second = _finish(_main(workdir, cache, "--mode=eval", flag, BASELINE))
  return {"workdir": workdir, "classifier": clf, "first": first, "second": second, "mtimes": mtimes,
          "results_first": results_first,
          "results": json.loads((workdir / "eval" / "results.json").read_text())}


def test_results_have_one_row_per_sampler(run):
  results = run["results"]
  assert [r["spec"] for r in results["rounds"]] == ["data:train", *SPECS]
  assert results["step"] == 2 and results["features"] == "classifier"
  for r in results["rounds"][1:]:
    assert r["steps"] == 4 and r["nfe"] == 4 and r["num_samples"] == 20
    assert r["fid"] >= 0.0 and np.isfinite(r["kid"])
    assert 1.0 <= r["inception_score"] <= 10.0
    assert r["time_s"] > 0.0 and r["compile_s"] > 0.0
  assert results["rounds"][1]["settings"]["eta"] == 0.0
  assert results["rounds"][2]["settings"]["eta"] == 1.0
  md = (run["workdir"] / "eval" / "results.md").read_text()
  assert "| sampler | steps | NFE | FID | KID | IS | time (s) |" in md  # Classifier: KID as is.
  kid = results["rounds"][1]["kid"]
  assert f"| {results['rounds'][1]['fid']:.3f} | {kid:.2f} |" in md
  assert sum(line.startswith("| `ddim:steps=4") for line in md.splitlines()) == 2
  assert "| `data:train` | - | - |" in md
  assert "bits/dim" in md


def test_fid_is_the_distance_of_the_saved_statistics(run):
  ev = run["workdir"] / "eval"
  with np.load(ev / "reference_classifier_train.npz") as f:
    ref = metrics.FeatureStats.from_arrays(dict(f))
    assert f["features"].shape == (200, 32)  # kept_features=200 of the 200 references.
  assert ref.count == 200
  assert metrics.fid(ref, ref) == pytest.approx(0.0, abs=1e-8)
  # The same statistics for other FID tools: pytorch-fid's / ADM's mu, sigma.
  with np.load(ev / "reference_classifier_train.mu_sigma.npz") as f:
    assert sorted(f.files) == ["mu", "sigma"]
    np.testing.assert_array_equal(f["mu"], ref.mean)
    np.testing.assert_array_equal(f["sigma"], ref.cov)
  for r in run["results"]["rounds"]:
    with np.load(ev / "rounds" / (sampler_specs.spec_filename(r["spec"]) + "_stats.npz")) as f:
      stats = metrics.FeatureStats.from_arrays(dict(f))
    assert stats.count == 20
    assert metrics.fid(stats, ref) == pytest.approx(r["fid"], rel=1e-9, abs=1e-12)


def test_data_row_scores_the_first_test_images(run):
  """The "data:train" row's statistics are those of the classifier features of
  the first 20 images (the data iterator's order at seed + 2), quantised
  to 256 levels (eval.quantize), computed
  here independently, in the same two updates of 10: the same float64
  arithmetic, so equal to 1e-12 (a different update order would change the
  rank-deficient covariance (N=20 < D=32) by ~1e-16 and FID's matrix square
  root by ~sqrt(1e-16): 1e-8, measured 9e-8)."""
  row = run["results"]["rounds"][0]
  assert row["method"] == "data" and row["nfe"] == 0 and row["num_samples"] == 20
  config = smoke.get_config()
  config.eval.classifier_path = str(run["classifier"])
  dc = config.data
  dc.update(split="train", dequantize=False, random_flip=False, batch_size=10)
  it = data.create(dc, seed=config.seed + 2)
  images = np.concatenate([next(it)["image"] for _ in range(2)])
  # Scored as the published protocol does (eval.quantize): rounded to 256 levels.
  levels = np.rint((np.clip(images, -1, 1) + np.float32(1)) * np.float32(127.5))
  feats, _ = features.make_extractor(config.eval)(
      levels.astype(np.float32) / np.float32(127.5) - np.float32(1))
  expected = metrics.FeatureStats(feats.shape[1]).update(feats[:10]).update(feats[10:])
  ev = run["workdir"] / "eval"
  with np.load(ev / "rounds" / "data_train_stats.npz") as f:
    saved = metrics.FeatureStats.from_arrays(dict(f))
  with np.load(ev / "reference_classifier_train.npz") as f:
    ref = metrics.FeatureStats.from_arrays(dict(f))
  assert saved.count == 20
  np.testing.assert_allclose(saved.mean, expected.mean, rtol=1e-12, atol=1e-15)
  assert row["fid"] == pytest.approx(metrics.fid(expected, ref), rel=1e-12)
  assert "skipping data:train" in run["second"]


def test_killed_eval_resumes_with_only_the_missing_round(run):
  kept, redone = (sampler_specs.spec_filename(s) + ".json" for s in SPECS)
  rounds = run["workdir"] / "eval" / "rounds"
  assert (rounds / kept).stat().st_mtime_ns == run["mtimes"][kept]
  assert (rounds / redone).stat().st_mtime_ns != run["mtimes"][redone]
  assert f"eval: skipping {SPECS[0]}" in run["second"]
  assert f"eval: sampling 20 images with {SPECS[1]}" in run["second"]
  assert f"eval: sampling 20 images with {SPECS[0]}" not in run["second"]
  assert "skipping bits/dim" in run["second"]
  # Deterministic given the seed and the spec: the recomputed round is the same.
  before, after = run["results_first"]["rounds"][2], run["results"]["rounds"][2]
  for key in ("fid", "kid", "inception_score"):
    assert after[key] == pytest.approx(before[key], rel=1e-6)


def test_every_unit_of_work_shows_a_progress_bar(run):
  # tqdm on stderr: each bar's last state is "<desc>: 100%|...| done/total [elapsed<ETA...".
  out = run["first"].replace("\r", "\n")
  for spec in ("data:train",) + SPECS:  # 20 images in calls of 10.
    assert re.search(rf"eval {re.escape(spec)}: 100%.*\| 2/2 \[", out), spec
  assert re.search(r"reference statistics: 100%.*\| 13/13 \[", out)  # 200 in batches of 16.
  assert re.search(r"bits/dim: 100%.*\| 1/1 \[", out)  # 8 images in one batch.


def test_bits_per_dim_once_per_model(run):
  bpd = run["results"]["bpd"]
  assert bpd["method"] == "ddpm_vlb" and "no dequantisation" in bpd["description"]
  assert bpd["num_images"] == 8 and bpd["split"] == "train" and bpd["num_bins"] == 17
  assert run["first"].count("eval: bits/dim on 8 train images") == 1
  # Recomputed here from the checkpoint: DDPM's bound (17 levels) of the EMA
  # model on the first 8 images of the iterator at seed + 1, with eval's
  # key. Same program on the same inputs: equal to float32 rounding of the
  # mean of 8 values of ~1e1 (1e-6 relative).
  config = smoke.get_config()
  exp = experiment.build(config)
  process, sample_key = exp.process, exp.sample_key
  with checkpoint.Checkpointer(run["workdir"] / "checkpoints") as ckpt:
    state, _ = ckpt.restore(2, exp.abstract_state())
  dc = config.data
  dc.update(split="train", dequantize=False, random_flip=False, batch_size=8)
  images = next(data.create(dc, seed=config.seed + 1))["image"]
  key = jax.random.fold_in(jax.random.fold_in(sample_key, 0x62706400), 0)
  # Jitted as eval jits it (an eager lax.scan over the 100 terms is slower to run).
  vlb = jax.jit(lambda params, x, k: likelihood.ddpm_vlb(
      exp.denoiser(params).eps_fn(), process, x, k, num_bins=17)["total"])
  expected = vlb(state.ema_params, images, key)
  assert bpd["bits_per_dim"] == pytest.approx(float(np.mean(expected)), rel=1e-6)
  assert bpd["std"] == pytest.approx(float(np.std(expected)), rel=1e-4)


# --------------------------------------------------------------------------
# Pieces (in process, fast).
# --------------------------------------------------------------------------


def test_parse_sampler_spec():
  assert sampler_specs.parse_sampler_spec("ddpm") == ("ddpm", {})
  assert sampler_specs.parse_sampler_spec("ddim:steps=50,eta=0") == (
      "ddim", {"num_steps": 50, "eta": 0.0})
  assert sampler_specs.parse_sampler_spec(" probability_flow: steps=100, ode_method=heun") == (
      "probability_flow", {"num_steps": 100, "ode_method": "heun"})
  assert sampler_specs.parse_sampler_spec(
      "predictor_corrector:steps=1000,corrector=langevin,corrector_steps=2,snr=0.1") == (
      "predictor_corrector", {"num_steps": 1000, "corrector": "langevin", "corrector_steps": 2,
                              "snr": 0.1})
  assert sampler_specs.parse_sampler_spec("ddpm:clip=false") == ("ddpm", {"clip_denoised": False})
  with pytest.raises(ValueError, match=r"'ddim:steps=5,temp=1'.*'temp'.*steps, eta, clip"):
    sampler_specs.parse_sampler_spec("ddim:steps=5,temp=1")
  with pytest.raises(ValueError, match="unknown sampler 'heun'.*ddpm, ddim"):
    sampler_specs.parse_sampler_spec("heun:steps=5")
  with pytest.raises(ValueError, match="steps='ten' is not a int"):
    sampler_specs.parse_sampler_spec("ddim:steps=ten")
  with pytest.raises(ValueError, match="not key=value"):
    sampler_specs.parse_sampler_spec("ddim:steps")
  with pytest.raises(ValueError, match="given twice"):
    sampler_specs.parse_sampler_spec("ddim:steps=4,steps=5")
  assert sampler_specs.spec_filename("ddim:steps=50,eta=0") == "ddim_steps-50_eta-0"
  config = smoke.get_config()
  for spec, n in (("ddpm", 100), ("ddim:steps=7", 7), ("probability_flow:steps=10", 20),
                  ("probability_flow:ode_method=rk45", None),
                  ("predictor_corrector:steps=10,corrector_steps=2", 30)):
    assert sampler_specs.nfe(sampler_specs.sampler_config(config, spec)) == n, spec


def test_errors_come_before_any_compute(tmp_path):
  config = smoke.get_config()
  config.eval.classifier_path = str(tmp_path / "none")
  with pytest.raises(checks.ConfigError, match="config.eval.classifier_path.*classify.train"):
    eval_mode.evaluate(config, str(tmp_path / "w"))
  config.eval.features, config.eval.inception_weights = "inception", str(tmp_path / "x.npz")
  with pytest.raises(checks.ConfigError, match="config.eval.inception_weights"):
    eval_mode.evaluate(config, str(tmp_path / "w"))
  config.eval.specs = ("ddim:steps=4,etta=1",)
  with pytest.raises(ValueError, match="unknown key 'etta'"):
    eval_mode.evaluate(config, str(tmp_path / "w"))
  config.diffusion.type, config.diffusion.prediction = "continuous", "eps"
  config.diffusion.weighting = "sigma2"
  config.eval.specs = ("ddpm",)
  with pytest.raises(ValueError, match="'ddpm' does not fit this model.*discrete-time sampler"):
    eval_mode.evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
