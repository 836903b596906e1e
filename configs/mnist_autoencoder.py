"""The KL autoencoder of MNIST for latent diffusion (the README's latent result).

    python -m diffusion.main --config configs/mnist_autoencoder.py --workdir /tmp/mnist_ae

MNIST (``$DIFFUSION_DATA/mnist``: `python -m diffusion.data prepare mnist`) at its
own 28x28, f = 4: 28x28x1 images <-> 7x7x4 latents (196 values for 784 pixels,
the compression of the "KL-f4" models of Rombach et al. 2022). 28x28 rather than
the issue's 32x32 (``data.pad=2`` makes that): the latent model then shares the
pixel model's data, captions, classifier features and FID reference exactly, so
the README's latent-vs-pixel figures compare like with like. ch 16, levels
28/14/7 (channel_mult (1, 2, 4)), one ResBlock per level, no attention; L1 loss
and KL weight 1e-6 as in the paper (no perceptual loss: LPIPS needs pretrained
VGG weights, which this machine cannot download); the patch discriminator is off
(``--config.autoencoder.disc_weight=0.5`` with ``disc_start`` turns it on). 3,000
Adam steps of batch 64, lr 1e-3 with a cosine decay, EMA 0.999. At every
checkpoint (every 500 steps): the test PSNR / MSE on 512 images and the latent
scale factor, in ``autoencoder/step_XXXXXX.json``. Sizes chosen here for a CPU
(ch 32 ran at ~1 step/s here, ch 16 at ~2).

Variants: `mnist_autoencoder.py:key=value,...` with the keys of
`default.VARIANT_KEYS` plus `source` (files | tfds).
"""
from configs import families
from configs import mnist_ddpm


def layers():
  """MNIST's files at 28x28, a short CPU run, then the autoencoder."""
  return families.stack(families.short_cpu_run(), families.autoencoder(), dict(
      data=dict(source="files", name="mnist", data_dir=mnist_ddpm.layers()[-1]["data"]["data_dir"],
                image_size=28, channels=1, random_flip=False, batch_size=64),
      model=dict(ch=16, channel_mult=(1, 2, 4), num_res_blocks=1),
      optim=dict(lr=1e-3, warmup_steps=200, decay_steps=3000),
      train=dict(num_steps=3000, sample_every=1000)))


def get_config(arg=None):
  return mnist_ddpm.config_of(layers(), arg, "mnist_autoencoder.py")
