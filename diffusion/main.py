"""Command-line entry point: parses flags and hands the config to `train`.

    python -m diffusion.main --config configs/digits_ddpm.py --workdir /tmp/digits
    python -m diffusion.main --config configs/digits_ddpm.py --workdir /tmp/digits \
        --mode sample --config.sample.method=ddim --config.sample.num_steps=50 \
        --config.sample.num_samples=1000
    python -m diffusion.main --config configs/cifar10_ddpm.py:schedule=cosine,sampler=ddim \
        --workdir /tmp/cifar10_cosine

`--config` takes `file.py` or `file.py:variant` (passed to `get_config`; the
variant syntax `key=value,...` is `configs.default.apply_variant`'s), and
`--config.a.b=value` overrides; the config is locked, so unknown keys fail.
`--mode sample` writes N samples (.npz), a grid (.png) and the reverse
process (.gif) from a checkpoint; `--mode eval` writes FID / KID / IS per
sampler of `config.eval.samplers` and bits/dim to workdir/eval/results.{json,md}
(`eval_mode`); SIGTERM / SIGINT during training save a checkpoint and exit 0
(resume with the same command).
"""
import os
import sys

# Make `configs/` importable (experiment files import configs.default) when
# run from anywhere; the package root is the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffusion import eval_mode, sampling, train  # noqa: E402

MODES = ("train", "sample", "eval")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (file.py or file.py:variant).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do in the workdir.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if mode == "train":
    train.train_and_evaluate(config, workdir)
  elif mode == "sample":
    sampling.sample(config, workdir)
  else:
    eval_mode.evaluate(config, workdir)


if __name__ == "__main__":
  app.run(main)
