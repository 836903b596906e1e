"""Flax networks for diffusion models, looked up by name in `MODELS`.

    model = get_model("unet", ch=64, channel_mult=(1, 2, 2), dtype=compute_dtype("bfloat16"))

`PRECISIONS` names the dtypes a model may compute its activations in
(``config.train.precision``); the parameters stay float32 in either.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from diffusion.models.autoencoder import AutoencoderKL
from diffusion.models.unet import UNet

# "autoencoder": the latent models' VAE, trained by its own experiment
# (`diffusion.latent`); its fields come from config.model and config.autoencoder.
MODELS = {"unet": UNet, "autoencoder": AutoencoderKL}
PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds the model registered as `name` with the given fields."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; valid names: {sorted(MODELS)}")
  return MODELS[name](**kwargs)


def compute_dtype(name: str):
  """Maps a precision name ("float32" | "bfloat16") to the activations' dtype."""
  if name not in PRECISIONS:
    raise ValueError(f"precision={name!r} is unknown; valid: {', '.join(PRECISIONS)}")
  return PRECISIONS[name]
