"""Trains and loads the project's own classifier (feature extractor for MNIST-like data).

`train(images, labels, ...)` fits `models.classifier.Classifier` with Adam on
arrays already scaled to [-1, 1] (``[N, H, W, C]`` float32, ``[N]`` int32)
and returns ``(model, params)``; `accuracy` scores it; `save` / `load` keep
the params with an Orbax checkpointer next to a JSON file describing the
model and its test accuracy.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from diffusion.models import classifier as _models
from diffusion.models.classifier import Classifier, NoisyClassifier, noisy_inputs
from diffusion.run import console


def _random_times(process, rng, n):
  """Training times of a noisy classifier: uniform steps 0..T-1, or t ~ U[1e-3, 1]."""
  from diffusion.core import processes  # pylint: disable=g-import-not-at-top
  if processes.is_discrete(process):
    return jax.random.randint(rng, (n,), 0, process.num_steps)
  return jax.random.uniform(rng, (n,), minval=1e-3, maxval=1.0)


def train(images, labels, *, num_classes=10, steps=500, batch_size=128, lr=1e-3, seed=0,
          channels=(32, 64), features=128, dropout=0.1, process=None):
  """Fits the classifier; deterministic given `seed`. Returns ``(model, params)``.

  With a noise `process` (a discrete schedule or an SDE) it fits a `NoisyClassifier`
  on ``x_t = alpha x + sigma eps`` at random times (`_random_times`) instead: the
  classifier of classifier guidance."""
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  if images.ndim != 4 or labels.shape != images.shape[:1]:
    raise ValueError(f"images must be [N, H, W, C] and labels [N]; got {images.shape}, {labels.shape}")
  kind = Classifier if process is None else NoisyClassifier
  model = kind(channels=tuple(channels), features=features, num_classes=num_classes,
               dropout=dropout)
  key = jax.random.PRNGKey(seed)
  dummy = jnp.zeros((1,) + images.shape[1:])
  params = model.init(key, *((dummy,) if process is None else (dummy, jnp.zeros((1,)))))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y, rng):
    args = (x,)
    if process is not None:
      t_key, n_key, rng = jax.random.split(rng, 3)
      t = _random_times(process, t_key, x.shape[0])
      alpha, sigma = process.alpha(t), process.sigma(t)
      x_t = alpha[:, None, None, None] * x + sigma[:, None, None, None] * jax.random.normal(
          n_key, x.shape)
      args = noisy_inputs(process, x_t, t)

    def loss_fn(p):
      logits = model.apply({"params": p}, *args, train=True, rngs={"dropout": rng})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  order = np.random.default_rng(seed)
  n = images.shape[0]
  perm, pos = order.permutation(n), 0
  for i in console.progress(range(steps), "classifier", unit="step"):
    if pos + batch_size > n:
      perm, pos = order.permutation(n), 0
    idx = perm[pos:pos + batch_size]
    pos += batch_size
    params, opt_state, _ = step(params, opt_state, images[idx], labels[idx], jax.random.fold_in(key, i))
  return model, params


def predict(model, params, images, batch_size=1000):
  """``(features [N, F], logits [N, K])`` as float64 numpy, in batches."""
  fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=Classifier.features_and_logits))
  feats, logits = [], []
  for start in range(0, len(images), batch_size):
    f, l = fn(params, jnp.asarray(images[start:start + batch_size], jnp.float32))
    feats.append(np.asarray(f, np.float64))
    logits.append(np.asarray(l, np.float64))
  return np.concatenate(feats), np.concatenate(logits)


def noisy_accuracy(model, params, process, images, labels, seed=0) -> dict:
  """Accuracy of a `NoisyClassifier` on `images` noised to t = 0 (the first step) and to
  the middle of the process's time axis."""
  from diffusion.core import processes  # pylint: disable=g-import-not-at-top
  out = {}
  n = len(labels)
  mid = process.num_steps // 2 if processes.is_discrete(process) else 0.5
  for name, t0 in (("t=0", 0 if processes.is_discrete(process) else 1e-3), ("t=mid", mid)):
    t = jnp.full((n,), t0)
    alpha, sigma = process.alpha(t), process.sigma(t)
    noise = jax.random.normal(jax.random.PRNGKey(seed), images.shape)
    x_t = alpha[:, None, None, None] * images + sigma[:, None, None, None] * noise
    logits = model.apply({"params": params}, *noisy_inputs(process, x_t, t))
    out[name] = float(np.mean(np.asarray(logits).argmax(-1) == np.asarray(labels)))
  return out


def accuracy(model, params, images, labels) -> float:
  return float(np.mean(predict(model, params, images)[1].argmax(-1) == np.asarray(labels)))


def save(path: str, model: Classifier, params, info: dict, keep_existing: bool = False) -> None:
  """Writes ``path/params`` (Orbax) and ``path/classifier.json`` (model fields + info).

  Written into a sibling ``<path>.partial-*`` folder first and renamed to `path` at
  the end, so `path` is either absent or complete. When `path` already holds a
  classifier: FileExistsError (nothing is overwritten), or with `keep_existing`
  (the shared cache, where two evals may train the same classifier at once) the one
  already there is kept and this one discarded."""
  import shutil  # pylint: disable=g-import-not-at-top
  import uuid  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  done = os.path.join(path, "classifier.json")
  if os.path.exists(done) and keep_existing:
    return
  if os.path.exists(done):
    raise FileExistsError(f"{path} already holds a classifier (classifier.json); not "
                          "overwriting it: give another folder")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.partial-{uuid.uuid4().hex[:8]}"
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(tmp, "params"), params)
  meta = {"channels": list(model.channels), "features": model.features,
          "num_classes": model.num_classes, "dropout": model.dropout,
          "noisy": isinstance(model, NoisyClassifier), **info}
  with open(os.path.join(tmp, "classifier.json"), "w") as f:
    json.dump(meta, f, indent=2)
  try:
    os.rename(tmp, path)  # Atomic; fails when `path` is a folder that is not empty.
  except OSError:
    if keep_existing and os.path.exists(done):
      shutil.rmtree(tmp, ignore_errors=True)
      return
    shutil.rmtree(tmp, ignore_errors=True)
    raise FileExistsError(f"{path} exists and is not empty; not overwriting it: give another "
                          "folder") from None


def load(path: str):
  """Returns ``(model, params, info)`` saved by `save` (`models.classifier.load`)."""
  return _models.load(path)


# --------------------------------------------------------------------------
# Command line: train the feature classifier on an experiment's dataset.
# --------------------------------------------------------------------------


def dataset_arrays(data_config, split: str, batch_size: int | None = 1000):
  """One epoch of ``data_config`` (with ``split``) as arrays ``([N, H, W, C], [N])``.

  No flips, no dequantisation. The data iterator drops an epoch's last partial
  batch (fewer than ``batch_size`` examples); ``batch_size=None`` reads in the
  largest batch up to 1000 that divides N, so every example is kept (the data
  is loaded once either way).
  """
  from diffusion.data import iterator as data  # pylint: disable=g-import-not-at-top

  cfg = data_config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.split, cfg.random_flip, cfg.dequantize = split, False, False
    cfg.batch_size = 1 if batch_size is None else batch_size
  it = data.create(cfg, seed=0)
  if batch_size is None:
    n = len(it.images)
    with cfg.unlocked():
      cfg.batch_size = max(b for b in range(1, min(n, 1000) + 1) if n % b == 0)
    it = data.create(cfg, seed=0, loaded=(it.images, it.labels, it.levels))  # Not reloaded.
  images, labels = [], []
  while not images or it.get_state()["epoch"] == 0:
    batch = next(it)
    images.append(batch["image"])
    labels.append(batch["label"])
  return np.concatenate(images), np.concatenate(labels)


def _define_flags(values) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("out", None, "directory to save the classifier in", flag_values=values)
  flags.DEFINE_integer("steps", 2000, "Adam steps", flag_values=values)
  flags.DEFINE_integer("batch_size", 128, "training batch size", flag_values=values)
  flags.DEFINE_float("lr", 2e-3, "Adam learning rate", flag_values=values)
  flags.DEFINE_string("test_split", "test", "split to measure accuracy on ('' = a held-out "
                      "--holdout fraction of the training data)", flag_values=values)
  flags.DEFINE_float("holdout", 0.15, "held-out fraction when --test_split=''",
                     flag_values=values)
  flags.DEFINE_integer("data_batch", 1000, "read batch size (a divisor of N keeps every "
                       "example)", flag_values=values)
  flags.DEFINE_bool("noisy", False, "train on images noised by the config's diffusion "
                    "process, told the noise level: the classifier of classifier guidance "
                    "(--config.sample.classifier_path); accuracy is then reported at t = 0 "
                    "and at the half-way time", flag_values=values)


def train_and_save(data_config, path: str, steps: int = 2000, holdout: float = 0.15,
                   seed: int = 0, keep_existing: bool = False) -> dict:
  """Trains the classifier on all of ``data_config``'s training split (no image
  dropped: `dataset_arrays` with ``batch_size=None``), reports its accuracy on a
  held-out `holdout` fraction, and saves it to `path` (process 0; `keep_existing`:
  see `save`). Returns the info dict that `save` stores."""
  x, y = dataset_arrays(data_config, "train", batch_size=None)  # Every example.
  perm = np.random.default_rng(seed).permutation(len(y))
  cut = int(len(y) * (1 - holdout))
  x, y, x_test, y_test = x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]
  model, params = train(x, y, num_classes=int(y.max()) + 1, steps=steps, lr=2e-3, seed=seed)
  info = {"test_accuracy": accuracy(model, params, x_test, y_test), "num_train": int(len(y)),
          "num_test": int(len(y_test)), "steps": steps, "test": f"holdout {holdout}",
          "data": {k: data_config[k] for k in ("source", "name", "data_dir", "image_size",
                                               "channels")}}
  if jax.process_index() == 0:
    save(path, model, params, info, keep_existing=keep_existing)
  return info


def main(argv=None) -> dict:
  """``python -m diffusion.classify --config configs/mnist_ddpm.py[:variant] --out DIR``.

  Trains the classifier on the config's training data, measures test accuracy
  on ``--test_split`` (or, with ``--test_split=''``, on a held-out
  ``--holdout`` fraction of the training data, e.g. for digits) and saves it
  where ``--config.eval.classifier_path`` can point. The flags are main's
  (`run.cli`): ``--config file.py:variant``, ``--config.data.x=v`` overrides,
  errors in one line.
  """
  import sys  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from diffusion.run import cli  # pylint: disable=g-import-not-at-top
  args = cli.parse(sys.argv[1:] if argv is None else argv, _define_flags,
                   "python -m diffusion.classify", required=("config", "out"))
  data_config = args.config.data
  x, y = dataset_arrays(data_config, data_config.split, args.data_batch)
  if args.test_split:
    x_test, y_test = dataset_arrays(data_config, args.test_split, args.data_batch)
  else:
    perm = np.random.default_rng(0).permutation(len(y))
    cut = int(len(y) * (1 - args.holdout))
    x, y, x_test, y_test = x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]
  process = None
  if args.noisy:
    from diffusion import experiment  # pylint: disable=g-import-not-at-top
    process = experiment.noise_process(args.config)
  model, params = train(x, y, num_classes=int(y.max()) + 1, steps=args.steps,
                        batch_size=args.batch_size, lr=args.lr, process=process)
  if process is None:
    acc = accuracy(model, params, x_test, y_test)
  else:
    acc = noisy_accuracy(model, params, process, x_test, y_test)
  config_file = config_flags.get_config_filename(args["config"])
  info = {"test_accuracy": acc if process is None else acc["t=0"],
          **({} if process is None else {"noisy_accuracy": acc, "process": repr(process)}),
          "num_train": int(len(y)), "num_test": int(len(y_test)),
          "steps": args.steps, "config": os.path.abspath(config_file.split(":", 1)[0]),
          "test": args.test_split or f"holdout {args.holdout}"}
  save(args.out, model, params, info)
  print(json.dumps(info))
  return info


if __name__ == "__main__":
  main()
