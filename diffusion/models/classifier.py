"""A small CNN classifier for MNIST-like data: its features give FID/KID, its logits IS.

Standard Inception-v3 features need downloaded weights and mean little on
28x28 digits, so MNIST-like data is scored with this network, trained by the
project itself (`diffusion.classify`). ``embed`` gives the penultimate
features ``[B, features]``; ``__call__`` the logits ``[B, num_classes]``;
``features_and_logits`` both in one pass. `NoisyClassifier` classifies noised
images (classifier guidance); `load` reads either from the folder that
`diffusion.eval.classifier.save` writes, and `noisy_log_prob` makes the guidance's
``log p(y | x_t, t)`` of a saved noisy one.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class Classifier(nn.Module):
  """Per block two 3x3 conv + SiLU then 2x2 average pooling; a dense feature layer; logits."""

  channels: Sequence[int] = (32, 64)
  features: int = 128
  num_classes: int = 10
  dropout: float = 0.1

  def setup(self):
    self.convs = [nn.Conv(ch, (3, 3)) for ch in self.channels for _ in range(2)]
    self.drop = nn.Dropout(self.dropout)
    self.feature = nn.Dense(self.features)
    self.head = nn.Dense(self.num_classes)

  def embed(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Penultimate features ``[B, features]`` of images ``[B, H, W, C]`` in [-1, 1]."""
    for i, conv in enumerate(self.convs):
      x = nn.silu(conv(x))
      if i % 2 == 1:
        x = nn.avg_pool(x, (2, 2), (2, 2), padding="SAME")
    x = self.drop(x.reshape(x.shape[0], -1), deterministic=not train)
    return nn.silu(self.feature(x))

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    return self.head(self.embed(x, train=train))

  def features_and_logits(self, x: jax.Array):
    """``(features [B, F], logits [B, K])`` without dropout."""
    f = self.embed(x)
    return f, self.head(f)


class NoisyClassifier(nn.Module):
  """`Classifier` of noised images ``x_t`` that is told the noise level: for classifier
  guidance (Dhariwal & Nichol 2021), ``log p(y | x_t, t)``.

  Input: ``x_t / sqrt(alpha^2 + sigma^2)`` (unit scale on every process) and
  ``log sigma~`` with ``sigma~ = sigma / alpha``, embedded by fixed Gaussian Fourier
  features and an MLP, and added (a Dense per conv) to every conv's output.
  """

  channels: Sequence[int] = (32, 64)
  features: int = 128
  num_classes: int = 10
  dropout: float = 0.1
  embed_dim: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, log_sigma: jax.Array, *, train: bool = False) -> jax.Array:
    from diffusion.models import embeddings  # pylint: disable=g-import-not-at-top
    emb = embeddings.gaussian_fourier_embedding(log_sigma, self.embed_dim, scale=1.0)
    emb = nn.Dense(self.embed_dim)(nn.silu(nn.Dense(self.embed_dim)(emb)))
    for ch in self.channels:
      for _ in range(2):
        x = nn.silu(nn.Conv(ch, (3, 3))(x) + nn.Dense(ch)(nn.silu(emb))[:, None, None, :])
      x = nn.avg_pool(x, (2, 2), (2, 2), padding="SAME")
    x = nn.Dropout(self.dropout)(x.reshape(x.shape[0], -1), deterministic=not train)
    return nn.Dense(self.num_classes)(nn.silu(nn.Dense(self.features)(x)))


def noisy_inputs(process, x, t):
  """What a `NoisyClassifier` is given for ``x_t`` at time ``t [B]`` of `process`:
  ``(x_t / sqrt(alpha^2 + sigma^2), log(sigma / alpha))``."""
  alpha, sigma = process.alpha(t), process.sigma(t)
  scale = jax.lax.rsqrt(alpha**2 + sigma**2).reshape((-1,) + (1,) * (x.ndim - 1))
  return x * scale, jnp.log(sigma) - jnp.log(alpha)


def load(path: str):
  """Returns ``(model, params, info)`` saved by `diffusion.eval.classifier.save`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  meta_path = os.path.join(path, "classifier.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"no classifier at {path}: expected {meta_path} (train one first)")
  with open(meta_path) as f:
    meta = json.load(f)
  kind = NoisyClassifier if meta.get("noisy") else Classifier
  model = kind(channels=tuple(meta["channels"]), features=meta["features"],
               num_classes=meta["num_classes"], dropout=meta["dropout"])
  # Every process reads the whole (small) checkpoint by itself: no collective,
  # so one process of a multi-process eval can load it without the others.
  me = jax.process_index()
  options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.StandardCheckpointer(multiprocessing_options=options) as ckpt:
    saved = ckpt.metadata(os.path.join(path, "params")).item_metadata
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local), saved)
    params = ckpt.restore(os.path.join(path, "params"), target)
  return model, jax.tree.map(np.asarray, params), meta


def noisy_log_prob(path: str, process):
  """``(log_prob, num_classes)`` of the noise-aware classifier saved at `path`:
  ``log_prob(x_t, t, labels) -> log p(labels | x_t, t) [B]`` with ``t`` on `process`'s
  time axis (the process it was trained on: `main`'s ``--noisy``)."""
  from diffusion.core import checks  # pylint: disable=g-import-not-at-top
  try:
    model, params, meta = load(path)
  except FileNotFoundError as e:
    raise checks.ConfigError(f"config.sample.classifier_path: {e}") from None
  if not meta.get("noisy"):
    raise checks.ConfigError(f"config.sample.classifier_path={path!r} is a classifier of clean "
                             "images; classifier guidance needs one trained on noised images "
                             "(`python -m diffusion.classify --noisy`)")
  params = jax.tree.map(jnp.asarray, params)

  def log_prob(x, t, labels):
    logits = model.apply({"params": params}, *noisy_inputs(process, x, t))
    return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], 1)[:, 0]

  return log_prob, int(meta["num_classes"])
