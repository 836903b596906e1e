"""The project's own classifier (feature extractor for MNIST-like data) really classifies."""
import numpy as np
from sklearn.datasets import load_digits

from diffusion import classify


def test_digits_classifier_accuracy_features_and_save_load(tmp_path):
  d = load_digits()
  x = (d.images.astype(np.float32) / 8.0 - 1.0)[..., None]
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(y))
  train, test = perm[:1500], perm[1500:]
  model, params = classify.train(x[train], y[train], steps=300, batch_size=64, lr=2e-3,
                                 channels=(16, 32), features=64)
  acc = classify.accuracy(model, params, x[test], y[test])
  # 297 held-out digits; small CNNs reach ~98-99% on this split. At a true
  # accuracy of 0.98 the binomial SE is 0.008, so >= 0.95 is > 3 SE below it.
  assert acc >= 0.95, acc
  feats, logits = classify.predict(model, params, x[test])
  assert feats.shape == (297, 64) and logits.shape == (297, 10)
  classify.save(str(tmp_path / "clf"), model, params, {"test_accuracy": acc})
  model2, params2, info = classify.load(str(tmp_path / "clf"))
  assert info["test_accuracy"] == acc
  np.testing.assert_array_equal(classify.predict(model2, params2, x[test])[1], logits)
