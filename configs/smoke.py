"""A tiny config for the end-to-end tests: 6 steps of a tiny UNet on digits.

Runs in seconds once compiled (tests/test_train_smoke.py pins the numbers
below: checkpoints at 2, 4, 6; a 2x2 sample grid at step 6).
"""
from configs import default
from configs import families


def layers():
  """The digits family (`families.digits_8x8`), then everything tiny."""
  return families.stack(families.digits_8x8(), dict(
      data=dict(dequantize=True, batch_size=16),
      model=dict(ch=8, channel_mult=(1,)),
      diffusion=dict(schedule="linear", num_steps=100),
      optim=dict(lr=1e-3, warmup_steps=2),
      ema=dict(decay=0.9),
      train=dict(num_steps=6, log_every=2, ckpt_every=2, sample_every=6, keep_checkpoints=10),
      sample=dict(method="ddim", num_steps=4, num_samples=4, batch_size=4, grid_size=4),
      eval=dict(
          specs=("ddim:steps=4,eta=0", "ddim:steps=4,eta=1"), num_samples=20, batch_size=10,
          # features="classifier" (families.digits_8x8); tests/test_eval_mode.py sets classifier_path.
          reference_num=200, kept_features=200, kid_subsets=10, bpd_num=8)))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="smoke.py")
