"""Standard formats beside the project's own: the EMA export, FID statistics as
pytorch-fid's / ADM's ``mu`` / ``sigma`` npz (and, in
tests/test_train_smoke.py, the uint8 ``arr_0`` samples and the no-overwrite
naming of --mode sample).

The export is made from the fixture workdir of tests/test_compat.py (a smoke
run's checkpoint 2): loaded back into a fresh model it must sample exactly
what the checkpoint's EMA parameters sample.
"""
import pathlib
import shutil

import numpy as np
import pytest

from configs import smoke
from diffusion import experiment
from diffusion.core import checks
from diffusion.dist import placement
from diffusion.eval import features
from diffusion.eval import metrics
from diffusion.eval import rounds
from diffusion.modes import export
from diffusion.run import checkpoint

FIXTURE = pathlib.Path(__file__).resolve().parent / "fixtures" / "workdir_v0" / "discrete"


def test_ema_export_restores_into_a_model_that_samples_the_same(tmp_path, capsys):
  workdir = tmp_path / "w"
  shutil.copytree(FIXTURE, workdir)
  config = smoke.get_config()
  path = export.export(config, str(workdir))
  assert path == str(workdir / "export" / "ema_000002.npz")
  with np.load(path) as f:  # Plain numpy: one array per parameter, the config, the step.
    assert "conv_in/kernel" in f.files and int(f["__step__"]) == 2
  params, loaded_config, step = export.load(path)
  assert step == 2 and loaded_config.model.ch == config.model.ch
  # The exported parameters are the checkpoint's EMA parameters, array for array.
  exp = experiment.build(config)
  with checkpoint.Checkpointer(workdir / "checkpoints", None) as ckpt:
    ema, _ = experiment.restore_ema_params(exp, ckpt, 2, placement.make_mesh())
  want = checkpoint.named_leaves(ema)
  got = checkpoint.named_leaves(params)
  assert sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_array_equal(got[name], np.asarray(want[name]), err_msg=name)
  # A model built from the exported config alone samples the same images.
  fresh = experiment.build(loaded_config)
  sample = fresh.sample_fn(num_samples=4)
  np.testing.assert_array_equal(np.asarray(sample(params, fresh.sample_key)),
                                np.asarray(exp.sample_fn(num_samples=4)(ema, exp.sample_key)))
  # Exporting the same step again leaves the file as it is.
  before = pathlib.Path(path).read_bytes()
  capsys.readouterr()
  assert export.export(config, str(workdir)) == path
  assert "exists already" in capsys.readouterr().err
  assert pathlib.Path(path).read_bytes() == before


def test_loading_a_file_that_is_no_export_names_it(tmp_path):
  path = tmp_path / "x.npz"
  np.savez(path, a=np.zeros(3))
  with pytest.raises(checks.ConfigError, match="is not an export of --mode export"):
    export.load(path)


def _stats(rng, n, d, shift=0.0):
  return metrics.FeatureStats(d).update(rng.normal(shift, 1.0, (n, d)))


def test_fid_statistics_round_trip_through_the_pytorch_fid_layout(tmp_path):
  rng = np.random.default_rng(0)
  ref, sample = _stats(rng, 500, 6), _stats(rng, 400, 6, shift=0.3)
  path = tmp_path / "stats.npz"
  np.savez(path, **ref.to_mu_sigma())  # What pytorch-fid --save-stats writes: mu, sigma.
  with np.load(path) as f:
    assert sorted(f.files) == ["mu", "sigma"] and f["sigma"].dtype == np.float64
    loaded = metrics.FeatureStats.from_mu_sigma(f["mu"], f["sigma"])
  np.testing.assert_array_equal(loaded.mean, ref.mean)
  np.testing.assert_allclose(loaded.cov, ref.cov, rtol=1e-15, atol=0)
  # FID against the imported statistics is the FID against the originals (to rounding).
  assert metrics.fid(sample, loaded) == pytest.approx(metrics.fid(sample, ref), rel=1e-12)
  with pytest.raises(ValueError, match="mu must be"):
    metrics.FeatureStats.from_mu_sigma(np.zeros(3), np.zeros((2, 2)))


def test_published_mu_sigma_as_reference_gives_fid_only(tmp_path):
  rng = np.random.default_rng(1)
  ref = _stats(rng, 300, 4)
  path = tmp_path / "published.npz"
  np.savez(path, mu=ref.mean, sigma=ref.cov)
  config = smoke.get_config()
  config.eval.reference_stats = str(path)
  stats, kept = features.reference_stats(config, str(tmp_path / "w"), extract=None)
  assert kept is None
  np.testing.assert_allclose(stats.cov, ref.cov, rtol=1e-15, atol=0)
  # A round scored against it: FID as against the full statistics; KID and
  # precision/recall need the reference's feature vectors, so they are None.
  feats = rng.normal(0.2, 1.0, (40, 4))
  extract = lambda images: (feats[: len(images)], np.zeros((len(images), 3)))
  images = np.zeros((40, 8, 8, 1), np.float32)
  row, sample_stats = rounds.score(config, [images], 40, 40, rounds.Reference(extract, stats, None))
  assert row["fid"] == pytest.approx(metrics.fid(sample_stats, ref), rel=1e-12)
  assert row["kid"] is None and row["precision"] is None and row["recall"] is None


def test_eval_scores_samples_quantised_to_uint8_like_the_published_protocol():
  rng = np.random.default_rng(2)
  images = rng.uniform(-1.2, 1.2, (5, 4, 4, 1)).astype(np.float32)
  seen = {}

  def extract(x):
    seen["x"] = x
    return np.zeros((len(x), 2)), np.zeros((len(x), 3))

  config = smoke.get_config()
  ref = rounds.Reference(extract, metrics.FeatureStats(2).update(rng.normal(size=(9, 2))), None)
  rounds.score(config, [images], 5, 5, ref)
  assert config.eval.quantize  # The default.
  levels = np.rint((np.clip(images, -1, 1) + np.float32(1)) * np.float32(127.5))
  np.testing.assert_array_equal(seen["x"], levels.astype(np.float32) / np.float32(127.5) - 1)
  assert len(np.unique(seen["x"])) <= 256 and seen["x"].min() == -1 and seen["x"].max() == 1
  config.eval.quantize = False
  rounds.score(config, [images], 5, 5, ref)
  np.testing.assert_array_equal(seen["x"], np.clip(images, -1, 1))
