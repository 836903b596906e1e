"""A small CNN classifier for MNIST-like data: its features give FID/KID, its logits IS.

Standard Inception-v3 features need downloaded weights and mean little on
28x28 digits, so MNIST-like data is scored with this network, trained by the
project itself (`diffusion.classify`). ``embed`` gives the penultimate
features ``[B, features]``; ``__call__`` the logits ``[B, num_classes]``;
``features_and_logits`` both in one pass.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


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
