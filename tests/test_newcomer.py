"""The newcomer's path: data a fresh clone can get (`python -m diffusion.data`).

A clone has no ``../shared`` folder: the MNIST configs read
``$DIFFUSION_DATA/mnist`` (`diffusion.data.prepare`), and when it is missing
the one line names the command that gets it, not a path of this machine.
"""
import gzip
import os
import pathlib
import subprocess
import sys
import urllib.error

import numpy as np
import pytest

from diffusion.core import checks
from diffusion.data import iterator as data
from configs import smoke
from diffusion.data import prepare

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_a_fresh_clone_names_the_way_to_get_mnist(tmp_path):
  clone = tmp_path / "clone"  # No "shared" folder beside it.
  subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
  env = dict(os.environ, DIFFUSION_DATA=str(tmp_path / "data"), JAX_PLATFORMS="cpu")
  env.pop("PYTHONPATH", None)
  proc = subprocess.run(
      [sys.executable, "-m", "diffusion.main", "--config", "configs/mnist_ddpm_cpu.py",
       "--workdir", str(tmp_path / "w")], cwd=clone, env=env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  (line,) = proc.stderr.strip().splitlines()
  want = str(tmp_path / "data" / "mnist")
  assert line.startswith(f"error: config.data.data_dir={want!r} does not exist; get it with "
                         "`python -m diffusion.data prepare mnist`"), line
  assert "shared/data" not in line and not (tmp_path / "w").exists()


def _idx(path, shape, value=0):
  """An idx file of `shape` (uint8), gzipped."""
  header = bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)
  with gzip.open(path, "wb", compresslevel=1) as f:
    f.write(header + np.full(shape, value, np.uint8).tobytes())


def _mnist_folder(folder):
  folder.mkdir(parents=True)
  for i, (name, shape) in enumerate(prepare.MNIST_FILES.items()):
    _idx(folder / name, shape, value=i)
  return folder


def test_prepare_from_a_folder_copies_checks_and_is_read_by_the_config(tmp_path):
  src, out = _mnist_folder(tmp_path / "usb"), tmp_path / "data" / "mnist"
  lines = []
  assert prepare.prepare_files("mnist", source=str(src), out=str(out), echo=lines.append) == str(out)
  assert sorted(os.listdir(out)) == sorted(prepare.MNIST_FILES)  # No .part left.
  dc = smoke.get_config().data
  dc.update(source="files", data_dir=str(out), image_size=28, channels=1, batch_size=4,
            dequantize=False)
  batch = next(data.create(dc, seed=0))
  assert batch["image"].shape == (4, 28, 28, 1)
  np.testing.assert_array_equal(batch["label"], 1)  # train-labels was written with value 1.
  # Again: nothing copied, each file checked and reported as there.
  again = []
  prepare.prepare_files("mnist", source=str(src), out=str(out), echo=again.append)
  assert all(line.endswith("is there") for line in again) and len(again) == 4


def test_prepare_refuses_a_file_of_the_wrong_shape(tmp_path):
  src = _mnist_folder(tmp_path / "usb")
  _idx(src / "t10k-labels-idx1-ubyte.gz", (9999,))
  with pytest.raises(checks.RunError, match=r".part-t10k-labels-idx1-ubyte.gz holds an array "
                                           r"of shape \(9999,\), not \(10000,\)"):
    prepare.prepare_files("mnist", source=str(src), out=str(tmp_path / "out"), echo=str)
  assert not any(name.startswith(".part") for name in os.listdir(tmp_path / "out"))


def test_prepare_without_network_is_one_line_naming_the_urls_and_the_folder(tmp_path, monkeypatch,
                                                                            capsys):
  def offline(url, timeout=None):
    raise urllib.error.URLError("Temporary failure in name resolution")
  monkeypatch.setattr(prepare.urllib.request, "urlopen", offline)
  out = tmp_path / "mnist"
  code = prepare.main(["prepare", "mnist", "--out", str(out)])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1
  assert "could not download train-images-idx3-ubyte.gz" in err[0]
  assert all(m in err[0] for m in prepare.FILE_DATASETS["mnist"][1])  # Every mirror tried.
  assert f"into {out} by other means" in err[0] and "--from DIR" in err[0]


def test_data_home_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("DIFFUSION_DATA", str(tmp_path))
  assert prepare.dataset_dir("mnist") == str(tmp_path / "mnist")
  monkeypatch.delenv("DIFFUSION_DATA")
  assert prepare.data_home() == os.path.join(os.path.expanduser("~"), ".cache", "diffusion", "data")


def test_eval_trains_the_projects_classifier_once_and_every_run_finds_it(tmp_path, monkeypatch,
                                                                         capsys):
  from diffusion.eval import classifier as classify  # pylint: disable=g-import-not-at-top
  from diffusion.eval import features  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("DIFFUSION_DATA", str(tmp_path))
  config = smoke.get_config()
  config.eval.features, config.eval.classifier_path, config.eval.classifier_steps = (
      "classifier", "", 60)
  features.resolve_defaults(config)
  path = config.eval.classifier_path
  assert path.startswith(str(tmp_path / "classifiers" / "digits-"))
  err = capsys.readouterr().err
  assert "training the project's classifier on digits once (60 steps)" in err
  _, _, info = classify.load(path)
  # All 1,797 digits read (a read batch that divides them), 15% held out.
  assert info["num_train"] + info["num_test"] == 1797 and info["num_test"] == 270
  # Chance is 0.1; 60 Adam steps reached 0.963 when this was written (deterministic
  # given the seed, but not across XLA versions). 0.9 is 3 binomial standard errors
  # (0.011 at p = 0.963, n = 270) below that, and far above chance.
  assert info["test_accuracy"] > 0.9
  # Another run of the same dataset finds it and trains nothing.
  def no_training(*args, **kwargs):
    raise AssertionError("trained again")
  monkeypatch.setattr(classify, "train_and_save", no_training)
  again = smoke.get_config()
  again.eval.features, again.eval.classifier_path, again.eval.classifier_steps = (
      "classifier", "", 60)
  features.resolve_defaults(again)
  assert again.eval.classifier_path == path and "(cached: " in capsys.readouterr().err
  feats, logits = features.make_extractor(again.eval)(np.zeros((3, 8, 8, 1), np.float32))
  assert feats.shape == (3, 128) and logits.shape == (3, 10)


def test_missing_inception_weights_name_the_download_and_the_conversion(tmp_path, monkeypatch):
  from diffusion.eval import features  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("DIFFUSION_DATA", str(tmp_path))
  config = smoke.get_config()
  config.eval.features, config.eval.inception_weights = "inception", ""
  features.resolve_defaults(config)
  assert config.eval.inception_weights == str(tmp_path / "inception" / "inception_fid.npz")
  with pytest.raises(FileNotFoundError) as e:
    features.make_extractor(config.eval)
  message = str(e.value)
  assert features.INCEPTION_URL in message and "python -m diffusion.models.inception" in message
  assert f"--out {tmp_path / 'inception' / 'inception_fid.npz'}" in message
