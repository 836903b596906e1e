"""Sample-quality metrics against closed forms."""
import math

import os

import numpy as np
import pytest
import scipy.linalg

from diffusion.eval import metrics as evaluate


def _random_cov(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def test_streaming_stats_equal_batch_stats_and_merge_exactly():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1000, 6)) * 3 + 2
  s = evaluate.FeatureStats(6)
  for chunk in np.array_split(x, 7):
    s.update(chunk)
  np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(s.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
  a, b = evaluate.FeatureStats(6).update(x[:300]), evaluate.FeatureStats(6).update(x[300:])
  merged = a.merge(b)
  np.testing.assert_allclose(merged.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
  again = evaluate.FeatureStats.from_arrays(merged.to_arrays())
  np.testing.assert_array_equal(again.cov, merged.cov)
  with pytest.raises(ValueError, match=r"features must have shape \[n, 6\]"):
    s.update(np.zeros((3, 5)))


def test_fid_of_a_set_with_itself_is_zero():
  rng = np.random.default_rng(1)
  s = evaluate.FeatureStats(16).update(rng.normal(size=(500, 16)))
  # float64 eigendecompositions of a 16x16 matrix: roundoff ~1e-13 of tr(S) ~ 16.
  assert abs(evaluate.fid(s, s)) < 1e-9


def test_frechet_distance_closed_forms():
  # Commuting (diagonal) covariances: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt s1 - sqrt s2)^2.
  s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  expect = 1 + 0 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0
  assert evaluate.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expect, rel=1e-12)
  # General covariances: against scipy's matrix square root of S1 S2 (independent algorithm).
  rng = np.random.default_rng(2)
  c1, c2 = _random_cov(rng, 8), _random_cov(rng, 8)
  m1, m2 = rng.normal(size=8), rng.normal(size=8)
  ref = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * np.real(scipy.linalg.sqrtm(c1 @ c2)))
  assert evaluate.frechet_distance(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-9)


def test_fid_from_gaussian_samples_matches_the_population_distance():
  """FID of Gaussian samples estimates the populations' Frechet distance.

  8 independent replicates with n = 100k per set: their mean is within 3
  standard errors (replicate std / sqrt(8)) of the exact distance. The plug-in
  estimator's bias (~tr(S) D / n ~ 4e-4 here, 7e-5 relative) is well below that.
  """
  rng = np.random.default_rng(3)
  c1, c2 = _random_cov(rng, 4), _random_cov(rng, 4)
  m1, m2 = np.zeros(4), np.full(4, 0.7)
  exact = evaluate.frechet_distance(m1, c1, m2, c2)
  n, values = 100_000, []
  for _ in range(8):
    a = evaluate.FeatureStats(4).update(rng.multivariate_normal(m1, c1, n))
    b = evaluate.FeatureStats(4).update(rng.multivariate_normal(m2, c2, n))
    values.append(evaluate.fid(a, b))
  values = np.asarray(values)
  assert abs(values.mean() - exact) < 3 * values.std(ddof=1) / math.sqrt(8)
  assert values.std(ddof=1) / exact < 0.01  # the estimator is also tight: < 1% spread


def test_kid_is_unbiased_on_equal_distributions_and_positive_otherwise():
  rng = np.random.default_rng(4)
  a, b = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
  mean, std = evaluate.kid(a, b, num_subsets=200, subset_size=200)
  # 200 subset estimates: their mean is within 3 standard errors (std / sqrt(200))
  # of the true value 0 (subsets overlap, which makes the SE slightly optimistic; use 4).
  assert abs(mean) < 4 * std / math.sqrt(200)
  shifted, _ = evaluate.kid(a, b + 0.5, num_subsets=50, subset_size=200)
  assert shifted > 10 * std


def test_inception_score_extremes():
  k = 10
  confident_uniform = np.log(np.eye(k)[np.arange(1000) % k] * (1 - 1e-9) + 1e-10)
  assert evaluate.inception_score(confident_uniform)[0] == pytest.approx(k, rel=1e-6)
  same = np.tile(np.log(np.full(k, 1.0 / k)), (1000, 1))
  assert evaluate.inception_score(same)[0] == pytest.approx(1.0, abs=1e-9)


def test_precision_recall():
  rng = np.random.default_rng(5)
  real = rng.normal(size=(1000, 2))
  p, r = evaluate.precision_recall(real, real.copy())
  assert p == 1.0 and r == 1.0
  # Fakes collapsed onto one real point: precision 1, recall small (only its k-NN ball).
  p, r = evaluate.precision_recall(real, np.repeat(real[:1], 1000, axis=0) + 1e-9)
  assert p == 1.0 and r < 0.02
  far = real + 100.0
  assert evaluate.precision_recall(real, far) == (0.0, 0.0)


def test_reference_statistics_cover_the_whole_split(tmp_path):
  """reference_num=0: all 1797 digits, although 1797 is no multiple of the data
  batch (16): the last partial batch counts, its padding rows do not. The
  "extractor" is the first 4 pixels, so the statistics are checked exactly
  against numpy's mean and covariance of those pixels over the split (float64
  on both sides, summed in another order: 1e-12)."""
  from configs import smoke
  from diffusion.data import iterator as data
  from diffusion.eval import features
  config = smoke.get_config()
  config.data.batch_size, config.eval.reference_num, config.eval.features = 16, 0, "classifier"
  config.eval.classifier_path = str(tmp_path / "none")
  extract = lambda x: (np.asarray(x).reshape(len(x), -1)[:, :4].astype(np.float64), None)
  stats, kept = features.reference_stats(config, str(tmp_path), extract)
  pixels = data.create(config.data, seed=0, loaded=None).images.reshape(1797, -1)[:, :4]
  pixels = pixels.astype(np.float64) / 16 * 2 - 1
  assert stats.count == 1797 and len(kept) == min(1797, config.eval.kept_features)
  np.testing.assert_allclose(stats.mean, pixels.mean(0), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(stats.cov, np.cov(pixels, rowvar=False), rtol=1e-10, atol=1e-12)


def test_reference_statistics_are_computed_once_per_dataset(tmp_path, monkeypatch):
  """Two workdirs of one dataset and extractor (a study's runs): the first computes
  the statistics and shares them under $DIFFUSION_DATA/reference/, the second copies
  them without extracting a feature, the same numbers; another image count is
  another file, computed again."""
  from configs import smoke
  from diffusion.eval import features
  monkeypatch.setenv("DIFFUSION_DATA", str(tmp_path / "data"))
  config = smoke.get_config()
  config.data.batch_size, config.eval.reference_num, config.eval.features = 16, 100, "classifier"
  config.eval.classifier_path = str(tmp_path / "none")
  calls = []
  def extract(x):
    calls.append(len(x))
    return np.asarray(x).reshape(len(x), -1)[:, :4].astype(np.float64), None
  first, kept = features.reference_stats(config, str(tmp_path / "a"), extract)
  shared = features.shared_reference_path(config)
  assert sum(calls) == 112 and os.path.isfile(shared)  # 7 batches of 16 read for 100 images
  assert os.path.isfile(features.mu_sigma_path(shared))
  calls.clear()
  second, kept2 = features.reference_stats(config, str(tmp_path / "b"), extract)
  assert calls == [] and (tmp_path / "b" / "eval" / "reference_classifier_train.npz").is_file()
  np.testing.assert_array_equal(second.mean, first.mean)
  np.testing.assert_array_equal(second.cov, first.cov)
  np.testing.assert_array_equal(kept2, kept)
  config.eval.reference_num = 50
  assert features.shared_reference_path(config) != shared
  features.reference_stats(config, str(tmp_path / "c"), extract)
  assert sum(calls) == 64
