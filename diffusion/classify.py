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

from diffusion.models.classifier import Classifier


def train(images, labels, *, num_classes=10, steps=500, batch_size=128, lr=1e-3, seed=0,
          channels=(32, 64), features=128, dropout=0.1):
  """Fits the classifier; deterministic given `seed`. Returns ``(model, params)``."""
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  if images.ndim != 4 or labels.shape != images.shape[:1]:
    raise ValueError(f"images must be [N, H, W, C] and labels [N]; got {images.shape}, {labels.shape}")
  model = Classifier(channels=tuple(channels), features=features, num_classes=num_classes, dropout=dropout)
  key = jax.random.PRNGKey(seed)
  params = model.init(key, jnp.zeros((1,) + images.shape[1:]))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y, rng):
    def loss_fn(p):
      logits = model.apply({"params": p}, x, train=True, rngs={"dropout": rng})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  order = np.random.default_rng(seed)
  n = images.shape[0]
  perm, pos = order.permutation(n), 0
  for i in range(steps):
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


def accuracy(model, params, images, labels) -> float:
  return float(np.mean(predict(model, params, images)[1].argmax(-1) == np.asarray(labels)))


def save(path: str, model: Classifier, params, info: dict) -> None:
  """Writes ``path/params`` (Orbax) and ``path/classifier.json`` (model fields + info)."""
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(path, "params"), params)
  meta = {"channels": list(model.channels), "features": model.features,
          "num_classes": model.num_classes, "dropout": model.dropout, **info}
  with open(os.path.join(path, "classifier.json"), "w") as f:
    json.dump(meta, f, indent=2)


def load(path: str):
  """Returns ``(model, params, info)`` saved by `save`."""
  path = os.path.abspath(path)
  meta_path = os.path.join(path, "classifier.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"no classifier at {path}: expected {meta_path} (train one first)")
  with open(meta_path) as f:
    meta = json.load(f)
  model = Classifier(channels=tuple(meta["channels"]), features=meta["features"],
                     num_classes=meta["num_classes"], dropout=meta["dropout"])
  with ocp.StandardCheckpointer() as ckpt:
    params = ckpt.restore(os.path.join(path, "params"))
  return model, params, meta
