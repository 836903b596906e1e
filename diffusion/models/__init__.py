"""Flax networks for diffusion models, looked up by name in `MODELS`.

    model = get_model("unet", ch=64, channel_mult=(1, 2, 2))
"""
from typing import Any

import flax.linen as nn

from diffusion.models.unet import UNet

MODELS = {"unet": UNet}


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds the model registered as `name` with the given fields."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; valid names: {sorted(MODELS)}")
  return MODELS[name](**kwargs)
