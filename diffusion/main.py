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
(`modes.eval`); `--mode export` writes the EMA parameters alone to
workdir/export/ema_XXXXXX.npz (`modes.export`); `--mode edit` inpaints, edits
(SDEdit, DDIM inversion), denoises or scores anomalies of given images
(``config.edit``, `modes.edit`) into workdir/edit/<task>/; SIGTERM / SIGINT during training save a checkpoint and exit 0
(resume with the same command).

Errors: a bad config key, value, file or override, and every error of the
package's own (data that cannot be read, a workdir another run holds, no
intact checkpoint, a non-finite step, a full disk), print one line
``error: ...`` on stderr naming what is wrong, and exit 2 (usage and config
errors: `checks.ConfigError`) or 1 (runtime failures: `checks.RunError`,
OS errors, a non-finite step); 130 on a second Ctrl-C. ``--debug`` (or
``DIFFUSION_DEBUG=1``) prints the traceback too. Anything else is a bug and
keeps its traceback.
"""
import os
import sys
import traceback

# Make `configs/` importable (experiment files import configs.default) when
# run from anywhere; the package root is the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffusion.core import checks  # noqa: E402
from diffusion.run import cli  # noqa: E402

MODES = ("train", "sample", "eval", "export", "edit")
USAGE_EXIT, RUNTIME_EXIT, INTERRUPT_EXIT = 2, 1, 130

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
_DEBUG = flags.DEFINE_bool(
    "debug", False, "Print the traceback of an error, not only its one line "
    "(also: DIFFUSION_DEBUG=1).")


def debug_requested(argv=None) -> bool:
  """``--debug`` (parsed or still in `argv`) or ``DIFFUSION_DEBUG=1``."""
  if os.environ.get("DIFFUSION_DEBUG", "") not in ("", "0"):
    return True
  if flags.FLAGS.is_parsed():
    return _DEBUG.value
  return any(a in ("--debug", "--debug=true", "--debug=True") for a in (argv or sys.argv))


def _one_line(text: str) -> str:
  return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def _quiet_after_error() -> None:
  """After the one line: background writers (Orbax's async saves) that fail the same
  way again, and their objects torn down at exit, print nothing more."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  std_logging.getLogger("asyncio").disabled = True  # "Task exception was never retrieved"
  sys.unraisablehook = lambda unraisable: None  # "Exception ignored in: <coroutine ...>"
  threading.excepthook = lambda args: None


def _fail(message: str, code: int, error: BaseException | None = None) -> int:
  debug = debug_requested()
  if error is not None and debug:
    traceback.print_exception(error)
  print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)
  return code


def report(error: BaseException) -> int:
  """Prints `error` as one line on stderr (module doc) and returns the exit code."""
  if isinstance(error, (checks.ConfigError, app.UsageError)):
    return _fail(str(error), USAGE_EXIT, error)
  if isinstance(error, (checks.RunError, FloatingPointError)):  # NonFiniteError too.
    return _fail(str(error), RUNTIME_EXIT, error)
  if isinstance(error, OSError):
    where = f": {error.filename}" if error.filename else ""
    what = error.strerror or str(error)
    return _fail(f"{what}{where}", RUNTIME_EXIT, error)
  if isinstance(error, KeyboardInterrupt):
    return _fail(f"interrupted ({error or 'Ctrl-C'})", INTERRUPT_EXIT, error)
  raise error  # A bug: the traceback is the report.


def run(config, workdir: str, mode: str):
  """Runs `mode` in `workdir` (the work of `main`, without flags or error reporting)."""
  from diffusion.modes import edit as edit_mode  # pylint: disable=g-import-not-at-top
  from diffusion.modes import eval as eval_mode  # pylint: disable=g-import-not-at-top
  from diffusion.modes import export as export_mode  # pylint: disable=g-import-not-at-top
  from diffusion.modes import sample as sample_mode  # pylint: disable=g-import-not-at-top
  from diffusion.modes import train  # pylint: disable=g-import-not-at-top
  if mode == "train":
    return train.train_and_evaluate(config, workdir)
  if mode == "sample":
    return sample_mode.sample(config, workdir)
  if mode == "export":
    return export_mode.export(config, workdir)
  if mode == "edit":
    return edit_mode.edit_mode(config, workdir)
  return eval_mode.evaluate(config, workdir)


class _BackgroundErrorLogs:
  """A logging filter for the command line: drops the ERROR records that Orbax's
  background save / restore threads log (with their tracebacks) when a write or
  read fails, and asyncio's "Task exception was never retrieved" for the same
  tasks. The failure itself reaches the main thread and is printed as one line;
  ``--debug`` keeps these records."""

  def filter(self, record) -> bool:
    if record.levelno < 40:  # Below logging.ERROR: kept.
      return True
    if "orbax" in (record.pathname or "").replace("\\", "/").split("/"):
      return False
    return not (record.name == "asyncio" and "never retrieved" in str(record.msg))


def _quiet_background_logs() -> None:
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  quiet = _BackgroundErrorLogs()
  for logger in (std_logging.getLogger(), std_logging.getLogger("absl"),
                 std_logging.getLogger("asyncio")):
    logger.addFilter(quiet)
    for handler in logger.handlers:
      handler.addFilter(quiet)


def execute(config, workdir: str, mode: str = "train", distributed=(None, None, None),
            heartbeat_timeout: int = 30) -> int:
  """What `main` does once the flags are parsed: starts `jax.distributed` if asked
  (`distributed`: coordinator address, process count, process id), runs `mode`,
  and reports an error as one line. Returns the exit code.

  It also quiets what Orbax's background threads log when a save or restore
  fails (the failure itself is the one line), unless ``--debug``.
  """
  debug = debug_requested()
  if not debug:
    _quiet_background_logs()
  try:
    from diffusion.dist import cluster  # pylint: disable=g-import-not-at-top
    cluster.initialize_distributed(*distributed, heartbeat_timeout_seconds=heartbeat_timeout)
    run(config, workdir, mode)
  except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except
    code = report(e)
    if not debug:
      _quiet_after_error()
    return code
  return 0


def main(argv):
  del argv  # Only the program: `parse_flags` refuses extra arguments.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  return execute(_CONFIG.value, _WORKDIR.value, _MODE.value,
                 (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value), _HEARTBEAT.value)


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
        sys.exit(_fail(f"{arg.split('=')[0]}: {message}", USAGE_EXIT))


def parse_flags(argv):
  """absl's flag parsing, with every error (an unknown flag or config key, a
  missing config file, a bad variant or override value) as one line, exit 2."""
  check_renamed(argv)
  return cli.parse_values(flags.FLAGS, argv, ("config", "workdir"), debug=debug_requested(argv))

if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
