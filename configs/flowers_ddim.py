"""A DDPM-trained UNet on Oxford Flowers 102 at 64x64, sampled with DDIM.

    python -m diffusion.main --config configs/flowers_ddim.py --workdir /tmp/flowers

Sources of the numbers:
- Data: TFDS "oxford_flowers102" at 64x64 with a central square crop, then a
  resize, and random flips — as in the Keras example "Denoising Diffusion
  Implicit Models" (A. Béres, keras.io/examples/generative/ddim), which
  trains on this dataset at this size. (That example trains on 80% of all
  three splits; here split "train" — pass another with --config.data.split.)
- Sampling: DDIM (Song, Meng & Ermon 2021) with 100 uniform-skip steps and
  eta = 0 (their Table 1 range 10..1000; 50 with `:steps=50`).
- Training: Ho et al. 2020's linear betas 1e-4 .. 0.02, T = 1000, eps loss,
  Adam 2e-4, warmup 5000, clip 1; the Keras example's EMA 0.999 and batch 64.
- Network: DDPM's 64x64 (CelebA-HQ/LSUN-style) UNet scaled to this budget — ch 64,
  mult (1, 2, 3, 4) for 64/32/16/8, 2 ResBlocks, attention at 16x16,
  dropout 0.1 — a choice, not from a paper. 200k steps is a choice too.

Variants: `flowers_ddim.py:key=value,...` with the keys of
`default.VARIANT_KEYS`, e.g. `:steps=50`, `:schedule=cosine`.
"""
from configs import default
from configs import families


def layers():
  """DDPM (`families.ddpm`), then the flowers data, the scaled UNet, the EMA, the run and DDIM."""
  return families.stack(families.ddpm(), dict(
      data=dict(source="tfds", name="oxford_flowers102", data_dir="", split="train",
                image_size=64, channels=3, crop="center", random_flip=True, dequantize=False,
                batch_size=64),
      model=dict(ch=64, channel_mult=(1, 2, 3, 4)),
      ema=dict(decay=0.999),
      train=dict(num_steps=200_000, log_every=100, ckpt_every=10_000, sample_every=20_000),
      sample=dict(method="ddim", num_steps=100, eta=0.0, num_samples=64)))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="flowers_ddim.py")
