"""The samplers of `--mode eval`: typed config entries, and spec strings as shorthand.

    config.eval.samplers.ddim50 = dict(method="ddim", num_steps=50, eta=0.0)   # typed entry
    --config.eval.specs="('ddim:steps=50,eta=0', 'ddpm')"                      # shorthand

A typed entry is a sub-dict of ``config.eval.samplers`` named by its key: a
``method`` (a sampler of `diffusion.core.samplers.registry`) and any of that
sampler's options. A spec string ``"name[:key=value,...]"`` names a sampler
and overrides of its options; a key is an options field or its short form
(`ALIASES`: steps, clip). Both parse into the same options, and options they
do not set come from ``config.sample``. `eval_samplers` lists a config's
entries (typed ones first) as `Entry` records, each with a validated copy of
the config whose ``sample`` section runs it.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

from diffusion import experiment
from diffusion.core import checks
from diffusion.core.samplers import registry

# Short spec keys for options fields.
ALIASES = {"steps": "num_steps", "clip": "clip_denoised"}
_SHORT = {v: k for k, v in ALIASES.items()}
# config.sample keys of conditional models that any sampler takes (guidance wraps the
# denoiser, `experiment.Experiment.guide`), with their types. An interval in a spec is
# written "lo..hi" (a comma separates items).
GUIDANCE_KEYS = {"guidance": float, "guidance_interval": str, "classifier_scale": float,
                 "labels": str}


def _field_types(record) -> dict[str, type]:
  return {**registry.field_types(record.options), **GUIDANCE_KEYS}


def _spec_keys(record) -> dict[str, str]:
  """Spec key -> options field of `record`: every field, and its short form."""
  fields = _field_types(record)
  keys = {_SHORT.get(f, f): f for f in fields}
  keys.update({f: f for f in fields})
  return keys


def parse_sampler_spec(spec: str) -> tuple[str, dict]:
  """``"ddim:steps=50,eta=0"`` -> ``("ddim", {"num_steps": 50, "eta": 0.0})``.

  Values are converted to the type of the options field; ValueError names the
  spec and the valid sampler names or keys.
  """
  name, _, args = spec.strip().partition(":")
  name = name.strip()
  if name not in registry.SAMPLERS:
    raise ValueError(f"sampler spec {spec!r}: unknown sampler {name!r}; valid: "
                     f"{', '.join(registry.SAMPLERS)}")
  record = registry.SAMPLERS[name]
  keys, types = _spec_keys(record), _field_types(record)
  overrides = {}
  for item in filter(None, (i.strip() for i in args.split(","))):
    key, eq, value = (s.strip() for s in item.partition("="))
    if not eq or not value:
      raise ValueError(f"sampler spec {spec!r}: item {item!r} is not key=value")
    if key not in keys:
      shown = [_SHORT.get(f, f) for f in types]
      raise ValueError(f"sampler spec {spec!r}: unknown key {key!r} for {name}; valid keys: "
                       f"{', '.join(shown) or 'none'}")
    if keys[key] in overrides:
      raise ValueError(f"sampler spec {spec!r}: key {key!r} given twice")
    overrides[keys[key]] = convert(value, types[keys[key]], f"sampler spec {spec!r}: {key}")
  return name, overrides


def convert(text: str, kind: type, what: str):
  """`text` as `kind` (`checks.parse_value`); ValueError starting with `what`."""
  try:
    return checks.parse_value(text, kind)
  except ValueError as e:
    raise ValueError(f"{what}={text!r} {e}") from None


@dataclasses.dataclass(frozen=True)
class Entry:
  """One sampler of `--mode eval`: its name (the typed entry's key, or the spec
  string), the sampler and option overrides, and the validated config to run."""

  name: str
  method: str
  overrides: dict
  config: Any


def _entry_config(config, name: str, method: str, overrides: dict):
  cfg = copy.deepcopy(config)
  cfg.sample.method = method
  for key, value in overrides.items():
    if key not in cfg.sample:
      raise ValueError(f"eval sampler {name!r}: {key!r} is not a config.sample key")
    cfg.sample[key] = value
  where = (f"config.eval.samplers.{name}" if name in config.eval.samplers
            else f"config.eval.specs entry {name!r}")
  try:
    experiment.check_sampler(cfg, experiment.noise_process(cfg))
    experiment.check_conditioning(cfg)
  except ValueError as e:
    reason = str(e).replace(f"config.sample ({method}): ", "")
    raise ValueError(f"{where}: sampler spec {name!r} does not fit this model: {reason}") from None
  return cfg


def _typed_entry(name: str, entry) -> tuple[str, dict]:
  values = dict(entry)
  method = values.pop("method", None)
  if method not in registry.SAMPLERS:
    raise ValueError(f"config.eval.samplers.{name}.method={method!r}: unknown sampler; "
                     f"valid: {', '.join(registry.SAMPLERS)}")
  fields = _field_types(registry.SAMPLERS[method])
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"config.eval.samplers.{name}: {method} has no option "
                     f"{', '.join(unknown)}; valid: {', '.join(fields)}")
  return method, values


def sampler_config(config, spec: str):
  """A copy of `config` whose ``sample`` section runs the spec string; validated."""
  name, overrides = parse_sampler_spec(spec)
  return _entry_config(config, spec, name, overrides)


def eval_samplers(config) -> list[Entry]:
  """The entries of ``config.eval.samplers`` then ``config.eval.specs``, validated
  (empty both: the sampler of ``config.sample``). Names must be unique."""
  e = config.eval
  entries = []
  for name, entry in e.samplers.items():
    method, overrides = _typed_entry(name, entry)
    entries.append(Entry(name, method, overrides, _entry_config(config, name, method, overrides)))
  for spec in e.specs:
    method, overrides = parse_sampler_spec(spec)
    entries.append(Entry(spec, method, overrides, _entry_config(config, spec, method, overrides)))
  if not entries:
    entries.append(Entry(config.sample.method, config.sample.method, {},
                         _entry_config(config, config.sample.method, config.sample.method, {})))
  names = [x.name for x in entries]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"config.eval.samplers / config.eval.specs repeat {', '.join(repeated)}")
  return entries


def spec_filename(spec: str) -> str:
  """``"ddim:steps=50,eta=0"`` -> ``"ddim_steps-50_eta-0"`` (a file-name-safe stem)."""
  stem = re.sub(r"[^A-Za-z0-9.-]+", "_", spec.strip().replace("=", "-")).strip("_")
  return stem or "sampler"


def sampler_steps(cfg) -> int:
  """Sampler steps of ``cfg.sample`` (ddpm: all T), from its record."""
  record, options, process = experiment.check_sampler(cfg, experiment.noise_process(cfg))
  return int(record.steps(options, process))


def nfe(cfg) -> int | None:
  """Network evaluations per sample of ``cfg.sample`` (None: adaptive), from its record."""
  record, options, process = experiment.check_sampler(cfg, experiment.noise_process(cfg))
  return record.nfe(options, process)
