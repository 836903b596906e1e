"""CPU XLA flag defaults, applied before JAX creates its backend.

On jaxlib 0.10 for CPU, disabling the experimental YNN fusion
(``--xla_cpu_experimental_ynn_fusion_type=`` with an empty value) makes a UNet
train step faster: 1.3x for a 1.6M-parameter UNet at 28x28 (batch 64) and
1.26x for the 35.7M CIFAR-10 UNet in `benchmarks/train_step.py`. It makes tiny
few-channel convolutions slower (1.8x for the toy model of
`benchmarks/samplers.py`), so it is a default for UNet workloads, not a
universal win; `benchmarks/README.md` has both measurements.
The flag is appended to whatever ``XLA_FLAGS`` the user set, never replacing it,
and is skipped when the user already chose a value, asked for a non-CPU
platform, or set ``DIFFUSION_NO_XLA_DEFAULTS=1``.
"""
import os
import sys

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def apply_cpu_defaults(environ=os.environ) -> bool:
  """Appends the CPU flag to XLA_FLAGS if it is safe to; returns whether it did."""
  if environ.get("DIFFUSION_NO_XLA_DEFAULTS") == "1":
    return False
  flags = environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    return False
  platforms = environ.get("JAX_PLATFORMS", "") + environ.get("JAX_PLATFORM_NAME", "")
  if platforms and "cpu" not in platforms:
    return False
  if not _jaxlib_knows_flag():
    return False
  if "jax" in sys.modules and _backend_started():
    return False  # too late: the flag would be ignored.
  environ["XLA_FLAGS"] = (flags + " " + YNN_FLAG).strip()
  return True


def _jaxlib_knows_flag() -> bool:
  """The flag exists from jaxlib 0.10; older XLA builds reject unknown flags."""
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    major, minor = (int(v) for v in metadata.version("jaxlib").split(".")[:2])
  except Exception:  # not installed, or an odd version string
    return False
  return (major, minor) >= (0, 10)


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(getattr(xla_bridge, "_backends", {}))
  except Exception:  # pragma: no cover - private API moved
    return True
