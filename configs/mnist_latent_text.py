"""`mnist_text_cpu.py` in latent space: the README's latent text-to-image result.

    python -m diffusion.main --config configs/mnist_autoencoder.py --workdir workdir/mnist_ae
    python -m diffusion.main --config configs/mnist_latent_text.py --workdir workdir/mnist_latent
    python -m diffusion.main --config configs/mnist_latent_text.py --workdir workdir/mnist_latent \\
        --mode sample --config.sample.prompt="a thick 3|a thin 7" --config.sample.guidance=3.0

The same data, captions, text encoder, noise process, optimiser and eval table as
the pixel-space `mnist_text_cpu.py`; the UNet denoises the 7x7x4 latents of
`mnist_autoencoder.py` (``latent.autoencoder_workdir``, default
``workdir/mnist_ae``; scaled by its measured 1 / std) and the samples are decoded.
A 7x7 map does not halve evenly, so the UNet has one level: ch 64, two ResBlocks,
transformer blocks (self-attention, cross-attention to the caption, feed-forward)
at 7x7 and in the middle. Sizes chosen here for a CPU.

Variants: `mnist_latent_text.py:key=value,...` with the keys of `default.VARIANT_KEYS`.
"""
from configs import default
from configs import families
from configs import mnist_text_cpu


def layers():
  """`mnist_text_cpu.py`, then the autoencoder's latents and a UNet of their size."""
  return families.stack(mnist_text_cpu.layers(), dict(
      latent=dict(autoencoder_workdir="workdir/mnist_ae"),
      model=dict(ch=64, channel_mult=(1,), num_res_blocks=2)))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="mnist_latent_text.py")
