"""A tiny config for the end-to-end tests: 6 steps of a tiny UNet on digits.

Runs in seconds once compiled (tests/test_train_smoke.py pins the numbers
below: checkpoints at 2, 4, 6; a 2x2 sample grid at step 6).
"""
from configs import default


def get_config(arg=None):
  config = default.get_config()

  config.data.source = "digits"
  config.data.image_size = 8
  config.data.channels = 1
  config.data.dequantize = True
  config.data.batch_size = 16

  config.model.ch = 8
  config.model.channel_mult = (1,)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = ()
  config.model.dropout = 0.0

  config.diffusion.schedule = "linear"
  config.diffusion.num_steps = 100

  config.optim.lr = 1e-3
  config.optim.warmup_steps = 2

  config.ema.decay = 0.9

  config.train.num_steps = 6
  config.train.log_every = 2
  config.train.ckpt_every = 2
  config.train.sample_every = 6
  config.train.keep_checkpoints = 10

  config.sample.method = "ddim"
  config.sample.num_steps = 4
  config.sample.num_samples = 4
  config.sample.batch_size = 4
  config.sample.grid_size = 4

  config.eval.samplers = ("ddim:steps=4,eta=0", "ddim:steps=4,eta=1")
  config.eval.num_samples = 20
  config.eval.batch_size = 10
  config.eval.features = "classifier"  # tests/test_eval_mode.py sets classifier_path.
  config.eval.reference_num = 200
  config.eval.kept_features = 200
  config.eval.kid_subsets = 10
  config.eval.bpd_num = 8
  return default.apply_variant(config, arg, source="smoke.py")
