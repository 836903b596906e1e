"""The child processes of tests/test_reliability.py.

A module (not a test): the tests start each child from a multiprocessing
forkserver that has imported this module, JAX, Flax, Orbax and the package
once (`forkserver`), so a child starts in ~1 s instead of a fresh
interpreter's ~4 s. Each child is a separate process running the real code:

- `run`: the training loop (`train_and_evaluate`), for the SIGKILL test;
- `cli`: what ``python -m diffusion.main`` does after parsing its flags
  (`main.execute`: the run, its one-line error, the exit code), optionally
  under a file-size limit (a full disk) — for the one-writer and full-disk
  tests.

Each child's stdout and stderr go to ``<workdir>.log``.
"""
import multiprocessing
import os
import resource
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import smoke  # noqa: E402
from diffusion import main  # noqa: E402
from diffusion.modes import train  # noqa: E402  (imported in the server, before any fork)

NUM_STEPS = 6


def config(num_steps: int = NUM_STEPS):
  """smoke.py (a checkpoint every 2 steps, all kept) without its sample grid."""
  c = smoke.get_config()
  c.train.num_steps = num_steps
  c.train.ckpt_every = 2
  c.train.log_every = 2
  c.train.sample_every = 0
  c.train.keep_checkpoints = 10
  return c


def _log_to(workdir: str, path: str | None = None) -> None:
  log = open(path or workdir + ".log", "a")  # pylint: disable=consider-using-with  (the child's life)
  os.dup2(log.fileno(), 1)
  os.dup2(log.fileno(), 2)
  sys.stdout = os.fdopen(1, "w", buffering=1)
  sys.stderr = os.fdopen(2, "w", buffering=1)


def run(workdir: str) -> None:
  """Trains (or resumes) `workdir` to `NUM_STEPS`."""
  _log_to(workdir)
  train.train_and_evaluate(config(), workdir)


def cli(workdir: str, num_steps: int = NUM_STEPS, file_size_limit: int | None = None) -> None:
  """Exits with `main.execute`'s code for `config(num_steps)` in `workdir`; with
  `file_size_limit`, every write past that many bytes fails (EFBIG), as on a full disk."""
  _log_to(workdir)
  if file_size_limit is not None:
    # JAX writes compilation-cache entries in place: one cut short by the limit
    # would poison the shared cache. Read it, write nothing to it.
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # A failed write, not a killed process.
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
  sys.exit(main.execute(config(num_steps), workdir, "train"))


def command_line(argv: list[str], environ: dict[str, str], cwd: str, log_path: str) -> None:
  """Exits as ``python -m diffusion.main *argv`` would in `cwd` with `environ`, its
  output to `log_path`.

  The server imported JAX but started no backend, so XLA_FLAGS (fake device
  count, optimisation level) set here still apply. JAX reads its own JAX_*
  variables at import: the callers pass the server's values (the session's
  compilation cache)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  jax_vars = lambda env: {k: v for k, v in env.items() if k.startswith("JAX_")}
  assert jax_vars(environ) == jax_vars(os.environ), (jax_vars(environ), jax_vars(os.environ))
  os.environ.clear()
  os.environ.update(environ)
  os.chdir(cwd)
  _log_to("", log_path)
  sys.argv = [main.__file__, *argv]
  app.run(main.main, flags_parser=main.parse_flags)


_CONTEXT = None


def forkserver():
  """The multiprocessing context whose server has imported this module (made once)."""
  global _CONTEXT
  if _CONTEXT is None:
    tests = os.path.join(ROOT, "tests")  # The server imports this module from tests/.
    path = os.environ.get("PYTHONPATH", "")
    if tests not in path.split(os.pathsep):
      os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [tests, ROOT, path]))
    _CONTEXT = multiprocessing.get_context("forkserver")
    _CONTEXT.set_forkserver_preload(["_kill_worker"])
  return _CONTEXT
