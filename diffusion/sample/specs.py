"""Sampler specs of `--mode eval`: ``"ddim:steps=50,eta=0"`` -> a sampler config.

A spec names a sampler of `diffusion.samplers` and, after a colon, overrides of
its ``config.sample`` keys in short form (`SPEC_KEYS`); `sampler_config` turns
it into a validated copy of the experiment config, `spec_filename` into the
stem of its round files, `nfe` counts its network evaluations per sample.
"""
from __future__ import annotations

import copy
import re

from diffusion import experiment

# Spec key -> config.sample key, per sampler (all others are refused).
SPEC_KEYS = {
    "ddpm": {"variance": "variance", "clip": "clip_denoised"},
    "ddim": {"steps": "num_steps", "eta": "eta", "clip": "clip_denoised"},
    "euler_maruyama": {"steps": "num_steps", "eps": "eps"},
    "predictor_corrector": {"steps": "num_steps", "predictor": "predictor",
                            "corrector": "corrector", "snr": "snr",
                            "corrector_steps": "corrector_steps", "eps": "eps"},
    "probability_flow": {"steps": "num_steps", "ode_method": "ode_method", "eps": "eps"},
}
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_sampler_spec(spec: str) -> tuple[str, dict]:
  """``"ddim:steps=50,eta=0"`` -> ``("ddim", {"num_steps": 50, "eta": 0.0})``.

  Keys per sampler are those of `SPEC_KEYS` (mapped to ``config.sample.*``);
  values are converted to the type of that config key. ValueError names the
  spec and the valid sampler names or keys.
  """
  name, _, args = spec.strip().partition(":")
  name = name.strip()
  if name not in SPEC_KEYS:
    raise ValueError(f"sampler spec {spec!r}: unknown sampler {name!r}; valid: "
                     f"{', '.join(SPEC_KEYS)}")
  valid = SPEC_KEYS[name]
  overrides = {}
  for item in filter(None, (i.strip() for i in args.split(","))):
    key, eq, value = (s.strip() for s in item.partition("="))
    if not eq or not value:
      raise ValueError(f"sampler spec {spec!r}: item {item!r} is not key=value")
    if key not in valid:
      raise ValueError(f"sampler spec {spec!r}: unknown key {key!r} for {name}; valid keys: "
                       f"{', '.join(valid) or 'none'}")
    if valid[key] in overrides:
      raise ValueError(f"sampler spec {spec!r}: key {key!r} given twice")
    overrides[valid[key]] = _convert(value, key, valid[key], spec)
  return name, overrides


_TYPES = {"num_steps": int, "corrector_steps": int, "eta": float, "snr": float, "eps": float,
          "clip_denoised": bool}  # Other config.sample keys of SPEC_KEYS are strings.


def _convert(text: str, key: str, config_key: str, spec: str):
  kind = _TYPES.get(config_key, str)
  try:
    if kind is bool:
      if text.lower() not in _TRUE + _FALSE:
        raise ValueError(f"expected one of {_TRUE + _FALSE}")
      return text.lower() in _TRUE
    return kind(text)
  except ValueError as e:
    raise ValueError(f"sampler spec {spec!r}: {key}={text!r} is not a {kind.__name__}: {e}") from None


def sampler_config(config, spec: str):
  """A copy of `config` with ``sample.method`` and the spec's overrides; validated."""
  name, overrides = parse_sampler_spec(spec)
  cfg = copy.deepcopy(config)
  cfg.sample.method = name
  for key, value in overrides.items():
    cfg.sample[key] = value
  try:
    experiment.validate_config(cfg)
  except ValueError as e:
    raise ValueError(f"sampler spec {spec!r} does not fit this model: {e}") from None
  return cfg


def spec_filename(spec: str) -> str:
  """``"ddim:steps=50,eta=0"`` -> ``"ddim_steps-50_eta-0"`` (a file-name-safe stem)."""
  stem = re.sub(r"[^A-Za-z0-9.-]+", "_", spec.strip().replace("=", "-")).strip("_")
  return stem or "sampler"


def sampler_steps(cfg) -> int:
  """Sampler steps of ``cfg.sample`` (ddpm: all T)."""
  return int(cfg.diffusion.num_steps) if cfg.sample.method == "ddpm" else int(cfg.sample.num_steps)


def nfe(sample_config) -> int | None:
  """Network evaluations per sample of ``sample_config.sample`` (None: rk45, adaptive)."""
  s = sample_config.sample
  if s.method == "ddpm":
    return int(sample_config.diffusion.num_steps)
  if s.method == "predictor_corrector":
    return s.num_steps * ((s.predictor != "none") + (s.corrector != "none") * s.corrector_steps)
  if s.method == "probability_flow":
    return None if s.ode_method == "rk45" else s.num_steps * (2 if s.ode_method == "heun" else 1)
  return int(s.num_steps)  # ddim, euler_maruyama
