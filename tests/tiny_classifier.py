"""The tiny digits classifier that the eval tests use as their feature extractor."""
from configs import smoke
from diffusion.eval import classifier as classify
from diffusion.data import iterator as data


def train_and_save(path, note: str) -> None:
  """Trains a (8, 16)-channel, 32-feature classifier on all 1797 digits for 50
  steps (seconds on CPU) and saves it at `path` (`classify.save`)."""
  config = smoke.get_config().data
  config.update(dequantize=False, batch_size=1797)
  batch = next(data.create(config, seed=0))
  model, params = classify.train(batch["image"], batch["label"], steps=50, batch_size=64,
                                 lr=3e-3, channels=(8, 16), features=32)
  classify.save(str(path), model, params, {"note": note})
