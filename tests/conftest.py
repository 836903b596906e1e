"""Test configuration: CPU, float32, the package's CPU flag defaults, one XLA cache.

Importing `diffusion` first applies its XLA CPU flag before JAX starts.
Multi-device tests run in subprocesses with their own XLA_FLAGS.

Compile time dominates this suite, and many subprocess tests (the CLI, eval,
multi-process runs) compile the same smoke programs: they all share one
persistent XLA compilation cache, a temporary folder made once per pytest run
(`SESSION_CACHE`, handed to subprocesses and xdist workers through
JAX_COMPILATION_CACHE_DIR) and removed at its end. In-process, only programs
that take over a second to compile are stored (the many tiny ones would cost
more to write than to rebuild).
"""
import os
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile with LLVM at -O1 (XLA's default is -O2), here and in every
# subprocess: XLA:CPU compiles about 30% faster and the small test programs run
# about as fast (measured on tests/test_learning.py's step: 20.2 -> 14.1 s to
# compile, 3.7 -> 4.3 s for 199 steps). The backend level changes no IEEE
# semantics (no fast-math); the losses there came out equal to 7 digits, and
# tests/test_compat.py checks against references written at the default level.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_backend_optimization_level=1").strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # The first process of the run makes it.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="diffusion-tests-xla-")
  os.environ["DIFFUSION_TESTS_OWN_CACHE"] = "1"
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # Subprocesses.
SESSION_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import diffusion  # noqa: E402,F401  (applies CPU XLA flags before jax starts)
import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


# The slowest files, slowest first (a full run's `--durations`, 2026-12-03): started
# first, so that with `-n 2 --dist loadfile` (README) the long ones overlap the rest
# and the run does not end on one long file (longest-processing-time-first).
SLOW_FIRST = ("test_conditioning.py", "test_multihost.py", "test_latent.py",
              "test_reliability.py", "test_text_conditioning.py", "test_guidance.py",
              "test_train_smoke.py", "test_study.py", "test_eval_mode.py", "test_learning.py",
              "test_text_encoder.py", "test_formulations.py", "test_registry.py",
              "test_edit.py", "test_parallel.py", "test_port.py", "test_compat.py",
              "test_classifier.py")


def pytest_collection_modifyitems(session, config, items):
  del session, config
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable: order kept within.


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if os.environ.get("DIFFUSION_TESTS_OWN_CACHE") and "PYTEST_XDIST_WORKER" not in os.environ:
    shutil.rmtree(SESSION_CACHE, ignore_errors=True)
    shutil.rmtree(SESSION_CACHE + "-classifier", ignore_errors=True)  # tests/tiny_classifier.py


@pytest.fixture
def strict_ranks():
  """Implicit rank promotion raises inside the test (diffrax's habit)."""
  with jax.numpy_rank_promotion("raise"):
    yield
