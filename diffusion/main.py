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
Multi-host: `--coordinator_address`, `--num_processes` and `--process_id`
start `jax.distributed` explicitly (`launch.sh multiprocess` on one machine);
without them it starts when the environment names a cluster
(`cluster.initialize_distributed`: a TPU pod, SLURM, JAX_COORDINATOR_ADDRESS
or DIFFUSION_DISTRIBUTED=1), before anything touches JAX's devices.
`--mode sample` writes N samples (.npz), a grid (.png) and the reverse
process (.gif) from a checkpoint; `--mode eval` writes FID / KID / IS per
sampler of `config.eval.samplers` / `config.eval.specs` and bits/dim to workdir/eval/results.{json,md}
(`modes.eval`); SIGTERM / SIGINT during training save a checkpoint and exit 0
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

from diffusion.modes import eval as eval_mode  # noqa: E402
from diffusion.dist import cluster  # noqa: E402
from diffusion.modes import sample as sample_mode  # noqa: E402
from diffusion.modes import train  # noqa: E402

MODES = ("train", "sample", "eval")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (file.py or file.py:variant).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do in the workdir.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, from 0.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", 30, "Seconds after which the other processes of a multi-process "
    "run give up on one that stopped answering (they exit with an error).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  cluster.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                  heartbeat_timeout_seconds=_HEARTBEAT.value)
  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if mode == "train":
    train.train_and_evaluate(config, workdir)
  elif mode == "sample":
    sample_mode.sample(config, workdir)
  else:
    eval_mode.evaluate(config, workdir)


# Config keys users had that now have another name or shape: the flag prefix and
# what to write instead (checked before absl parses, which would only say "unknown flag").
RENAMED = {
    "--config.eval.samplers=": "config.eval.samplers is now a dict of typed entries "
    "(config.eval.samplers.<name> = dict(method=..., <option>=...) in a config file); pass "
    "spec strings on the command line as --config.eval.specs=\"('ddim:steps=50,eta=0',)\"",
}


def check_renamed(argv) -> None:
  """Exits with one line naming the new key for a renamed command-line key."""
  for arg in argv[1:]:
    for prefix, message in RENAMED.items():
      if arg.startswith(prefix):
        sys.exit(f"error: {arg.split('=')[0]}: {message}")


if __name__ == "__main__":
  check_renamed(sys.argv)
  app.run(main)
