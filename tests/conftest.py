"""Test configuration: CPU, float32, and the package's CPU flag defaults.

Importing `diffusion` first applies its XLA CPU flag before JAX starts.
Multi-device tests run in subprocesses with their own XLA_FLAGS.
"""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import diffusion  # noqa: E402,F401  (applies CPU XLA flags before jax starts)
import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def strict_ranks():
  """Implicit rank promotion raises inside the test (diffrax's habit)."""
  with jax.numpy_rank_promotion("raise"):
    yield
