"""A small KL autoencoder of scikit-learn's 8x8 digits (offline): the latent maps of
`digits_latent_text.py` and of the tests.

    python -m diffusion.main --config configs/digits_autoencoder.py --workdir /tmp/digits_ae

f = 2 (channel_mult (1, 2)): 8x8x1 digits <-> 4x4x2 latents (half the values of
the image). ch 16, one ResBlock per level, L1 loss, KL weight 1e-6 (the
latent-diffusion paper's), 600 Adam steps of batch 128. Reconstruction PSNR is
measured on training images (digits have one split). Sizes chosen here.

Variants: `digits_autoencoder.py:key=value,...` with the keys of `default.VARIANT_KEYS`.
"""
from configs import default
from configs import families


def layers():
  """The digits data and a short CPU run, then the autoencoder."""
  return families.stack(families.digits_8x8(), families.short_cpu_run(), families.autoencoder(),
                        dict(data=dict(batch_size=128),
                             model=dict(ch=16, channel_mult=(1, 2)),
                             autoencoder=dict(latent_channels=2, eval_split="train",
                                              eval_num=512, scale_num=512),
                             optim=dict(lr=2e-3, warmup_steps=50, decay_steps=600),
                             train=dict(num_steps=600, ckpt_every=300, sample_every=600)))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="digits_autoencoder.py")
