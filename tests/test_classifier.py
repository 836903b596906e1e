"""The project's own classifier (feature extractor for MNIST-like data) really classifies."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from diffusion.eval import classifier as classify


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
  # Saving again: refused (nothing overwritten); with keep_existing (the shared cache,
  # two evals racing) the first one is kept and no partial folder is left behind.
  with pytest.raises(FileExistsError, match="already holds a classifier"):
    classify.save(str(tmp_path / "clf"), model, params, {"test_accuracy": 0.0})
  classify.save(str(tmp_path / "clf"), model, params, {"test_accuracy": 0.0}, keep_existing=True)
  assert classify.load(str(tmp_path / "clf"))[2]["test_accuracy"] == acc
  assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]


def test_command_line_trains_on_a_config_and_saves(tmp_path):
  """`python -m diffusion.classify` on the digits config with a held-out 15%."""
  import os
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  info = classify.main(["--config", os.path.join(root, "configs", "digits_ddpm.py"),
                        "--out", str(tmp_path / "clf"), "--steps", "200", "--test_split", "",
                        "--data_batch", "599", "--batch_size", "64"])
  # 1797 digits = 3 batches of 599: all kept; 15% held out -> 270 test images.
  assert info["num_train"] + info["num_test"] == 1797 and info["num_test"] == 270
  # Same derivation as above: >= 0.93 is > 3 binomial SE (0.009 at p = 0.975, n = 270) below
  # the ~97-99% such a CNN reaches here.
  assert info["test_accuracy"] >= 0.93
  _, _, saved = classify.load(str(tmp_path / "clf"))
  assert saved["test_accuracy"] == info["test_accuracy"]
