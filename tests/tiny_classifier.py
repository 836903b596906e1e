"""The tiny digits classifier that the eval tests use as their feature extractor.

Trained once per pytest run (it is deterministic: seed 0, full-batch data) into
the run's shared folder next to the XLA cache (tests/conftest.py), and copied
from there: three test modules use it.
"""
import os
import pathlib
import shutil
import tempfile

from configs import smoke
from diffusion.data import iterator as data
from diffusion.eval import classifier as classify


def _train(path) -> None:
  """Trains a (8, 16)-channel, 32-feature classifier on all 1797 digits for 50
  steps (seconds on CPU) and saves it at `path` (`classify.save`)."""
  config = smoke.get_config().data
  config.update(dequantize=False, batch_size=1797)
  batch = next(data.create(config, seed=0))
  model, params = classify.train(batch["image"], batch["label"], steps=50, batch_size=64,
                                 lr=3e-3, channels=(8, 16), features=32)
  classify.save(str(path), model, params, {"note": "tests/tiny_classifier.py"})


def train_and_save(path, note: str = "") -> None:
  """The tiny classifier at `path`: a copy of the run's one (trained on first use)."""
  del note
  shared = pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).parent / (
      pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).name + "-classifier")
  if not (shared / "classifier.json").exists():
    tmp = pathlib.Path(tempfile.mkdtemp(dir=shared.parent, prefix=shared.name + ".tmp"))
    _train(tmp / "c")
    try:
      (tmp / "c").rename(shared)  # Atomic; another xdist worker may have won the race.
    except OSError:
      pass
    shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(shared, path)
