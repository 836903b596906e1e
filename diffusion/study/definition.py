"""A study: ``experiments/<study>/study.py`` defines the runs of one ablation.

    def get_study():
      return dict(
          description="noise schedule x prediction on digits",
          base="configs/digits_ddpm.py",            # a config file, or file.py:variant
          overrides={"train.num_steps": 1500},      # every run (the budget)
          grid={"diffusion.schedule": ["linear", "cosine"],
                "diffusion.prediction": ["eps", "v", "x0"]},
          seeds=(0, 1),
          eval_specs=("ddim:steps=20,eta=0", "ddim:steps=50,eta=0"),
          eval_overrides={"eval.num_samples": 256},  # --mode eval only
      )

Either ``grid`` (every combination of the keys' values, in order) or
``variants``, a mapping from a name to overrides ``{"dotted.key": value}``, to a
``"file.py:variant"`` string, or to both (``{"config": "file.py:variant",
"model.ch": 32}``). Keys are the config's dotted keys. `load` builds every run's
config the way ``diffusion.main`` would and validates it
(`experiment.validate_config`, the eval specs), so a bad definition fails
before anything runs with one line naming the entry (`StudyError`).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import itertools
import os
import sys
from typing import Any

from diffusion.core import checks

FIELDS = ("description", "base", "overrides", "grid", "variants", "seeds", "eval_specs",
          "eval_overrides")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StudyError(checks.ConfigError):
  """A study definition that cannot run; the message names the study and the entry."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a study: a variant at one seed.

  ``name`` is the variant (``schedule=cosine,prediction=v``, or the variant's own
  name), ``run`` adds the seed when the study has several (``...-seed1``) and is
  the run's folder under the study root and its wandb name. ``config`` is the
  file (``file.py[:variant]``) and ``overrides`` the dotted keys given to main as
  ``--config.key=value`` (the study's, the variant's and the seed's);
  ``eval_overrides`` are added for ``--mode eval``."""

  name: str
  run: str
  seed: int
  config: str
  overrides: dict
  eval_overrides: dict
  varied: dict  # The keys this variant sets (its own, not the study's), for tags and plots.
  num_steps: int  # Its training length (config.train.num_steps): trained when checkpointed.


@dataclasses.dataclass(frozen=True)
class Study:
  """A loaded, validated study: its name (the folder's), its folder, the
  description, the runs in order and the varied keys."""

  name: str
  folder: str
  description: str
  runs: tuple
  varied_keys: tuple
  eval_specs: tuple

  def run(self, name: str) -> Run:
    for r in self.runs:
      if r.run == name:
        return r
    raise KeyError(name)


def _fail(study: str, entry: str, message: str):
  raise StudyError(f"study {study}: {entry}: {message}")


def _module(path: str, study: str):
  if not os.path.isfile(path):
    raise StudyError(f"study {study}: no {os.path.basename(path)} in {os.path.dirname(path)} "
                     "(a study folder holds study.py with get_study())")
  spec = importlib.util.spec_from_file_location(f"_study_{study}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (the user's file: one line)
    raise StudyError(f"study {study}: {path} does not load: {checks.why(e)}") from None
  if not callable(getattr(module, "get_study", None)):
    raise StudyError(f"study {study}: {path} defines no get_study()")
  return module


def load_config(spec: str, study: str, entry: str):
  """``file.py[:variant]`` (relative to the repository root) -> its config."""
  path, _, arg = spec.partition(":")
  full = path if os.path.isabs(path) else os.path.join(ROOT, path)
  if not os.path.isfile(full):
    _fail(study, entry, f"no such config file {path!r}")
  if ROOT not in sys.path:  # Config files import `configs.default`.
    sys.path.insert(0, ROOT)
  mspec = importlib.util.spec_from_file_location(
      "_study_config_" + os.path.splitext(os.path.basename(path))[0], full)
  module = importlib.util.module_from_spec(mspec)
  try:
    mspec.loader.exec_module(module)
    return module.get_config(arg or None)
  except Exception as e:  # pylint: disable=broad-except
    _fail(study, entry, f"{spec}: {checks.why(e)}")


def set_key(config, key: str, value, study: str, entry: str) -> None:
  """``config[key] = value`` for a dotted `key`, with main's rules: the key must
  exist (the nearest name is suggested), and the value must have its type (an int
  where a float is expected is taken; a list where a tuple is)."""
  node, parts = config, key.split(".")
  for i, part in enumerate(parts):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      close = difflib.get_close_matches(part, keys, n=1)
      hint = f"; did you mean {'.'.join(parts[:i] + [close[0]])}?" if close else ""
      _fail(study, entry, f"config.{'.'.join(parts[:i + 1])}: no such key{hint}")
    if i < len(parts) - 1:
      node = node[part]
  old = node[parts[-1]]
  if hasattr(old, "keys"):
    _fail(study, entry, f"config.{key} is a section, not a value")
  if isinstance(value, list):
    value = tuple(value)
  ok = (old is None or value is None or type(value) is type(old)
        or (isinstance(old, float) and type(value) is int)
        or (isinstance(old, tuple) and isinstance(value, tuple)))
  if not ok:
    _fail(study, entry, f"config.{key}={value!r} is a {type(value).__name__}; the config "
                        f"holds a {type(old).__name__} ({old!r})")
  if isinstance(old, float) and type(value) is int:
    value = float(value)
  try:  # An existing key: a locked config takes it.
    node[parts[-1]] = value
  except Exception as e:  # pylint: disable=broad-except
    _fail(study, entry, f"config.{key}={value!r}: {checks.why(e)}")


def _mapping(value, study: str, entry: str) -> dict:
  if value is None:
    return {}
  if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
    _fail(study, entry, f"must be a dict of dotted config keys to values, got {value!r}")
  return dict(value)


def _short(key: str, keys) -> str:
  """The last segment of a dotted key, or the whole key where two keys share it."""
  last = key.rsplit(".", 1)[-1]
  return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _value_text(value) -> str:
  return str(value) if not isinstance(value, float) else f"{value:g}"


def _variants(definition: dict, study: str) -> list[tuple[str, str | None, dict]]:
  """``[(name, config file or None, overrides)]`` from ``grid`` or ``variants``."""
  grid, variants = definition.get("grid"), definition.get("variants")
  if (grid is None) == (variants is None):
    _fail(study, "grid / variants", "give exactly one of them (a grid of values, or named "
                                    "variants)")
  out = []
  if grid is not None:
    grid = _mapping(grid, study, "grid")
    if not grid:
      _fail(study, "grid", "is empty")
    for key, values in grid.items():
      if not isinstance(values, (list, tuple)) or not values:
        _fail(study, f"grid[{key!r}]", f"must be a non-empty list of values, got {values!r}")
      if len(set(map(repr, values))) != len(values):
        _fail(study, f"grid[{key!r}]", f"lists a value twice: {list(values)!r}")
    keys = list(grid)
    for combo in itertools.product(*grid.values()):
      name = ",".join(f"{_short(k, keys)}={_value_text(v)}" for k, v in zip(keys, combo))
      out.append((name, None, dict(zip(keys, combo))))
    return out
  if not isinstance(variants, dict) or not variants:
    _fail(study, "variants", f"must be a non-empty dict of name -> overrides, got {variants!r}")
  for name, value in variants.items():
    entry = f"variants[{name!r}]"
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ \t\n"):
      _fail(study, entry, "a variant's name is its folder: a non-empty string without "
                          "slashes or spaces")
    if isinstance(value, str):
      out.append((name, value, {}))
    else:
      value = _mapping(value, study, entry)
      config = value.pop("config", None)
      if config is not None and not isinstance(config, str):
        _fail(study, entry, f"'config' must be a 'file.py[:variant]' string, got {config!r}")
      out.append((name, config, value))
  return out


def load(folder: str) -> Study:
  """Loads and validates ``folder/study.py``: every run's config is built (base,
  study overrides, the variant, the seed, then for the eval the eval specs and
  overrides) and checked like ``diffusion.main`` checks its own. Raises
  `StudyError` (one line naming the entry) for anything wrong."""
  from diffusion import experiment  # pylint: disable=g-import-not-at-top  (needs JAX)
  from diffusion.eval import entries  # pylint: disable=g-import-not-at-top

  folder = os.path.normpath(folder)
  study = os.path.basename(folder)
  if not os.path.isdir(folder):
    raise StudyError(f"study {folder!r}: no such folder (give experiments/<study>)")
  module = _module(os.path.join(folder, "study.py"), study)
  try:
    definition = module.get_study()
  except Exception as e:  # pylint: disable=broad-except
    raise StudyError(f"study {study}: get_study() failed: {checks.why(e)}") from None
  if not isinstance(definition, dict):
    raise StudyError(f"study {study}: get_study() must return a dict, got "
                     f"{type(definition).__name__}")
  unknown = sorted(set(definition) - set(FIELDS))
  if unknown:
    close = difflib.get_close_matches(unknown[0], FIELDS, n=1)
    _fail(study, unknown[0], "no such field" + (f"; did you mean {close[0]}?" if close else "")
          + f" (fields: {', '.join(FIELDS)})")
  base = definition.get("base")
  if not isinstance(base, str):
    _fail(study, "base", f"must be a config file 'configs/x.py[:variant]', got {base!r}")
  overrides = _mapping(definition.get("overrides"), study, "overrides")
  eval_overrides = _mapping(definition.get("eval_overrides"), study, "eval_overrides")
  bad = [k for k in eval_overrides if not k.startswith("eval.")]
  if bad:
    _fail(study, "eval_overrides", f"{bad[0]!r} is not an eval.* key (what --mode eval may "
                                   "change; put it in overrides)")
  seeds = definition.get("seeds", None)
  if seeds is not None and (not isinstance(seeds, (list, tuple)) or not seeds
                            or not all(type(s) is int for s in seeds)
                            or len(set(seeds)) != len(seeds)):
    _fail(study, "seeds", f"must be a non-empty list of distinct ints, got {seeds!r}")
  specs = definition.get("eval_specs", None)
  if specs is not None:
    if isinstance(specs, str) or not all(isinstance(s, str) for s in specs) or not specs:
      _fail(study, "eval_specs", f"must be a list of sampler spec strings, got {specs!r}")
    if len(set(specs)) != len(specs):
      _fail(study, "eval_specs", f"lists a spec twice: {list(specs)!r}")
    specs = tuple(specs)
  description = definition.get("description", "") or ""
  if not isinstance(description, str):
    _fail(study, "description", "must be a string")

  variants = _variants(definition, study)
  names = [n for n, _, _ in variants]
  if len(set(names)) != len(names):
    dup = next(n for n in names if names.count(n) > 1)
    _fail(study, f"variants[{dup!r}]", "two variants have this name")
  varied_keys = tuple(dict.fromkeys(k for _, _, o in variants for k in o))

  runs = []
  for name, config_spec, variant in variants:
    entry = f"variant {name!r}"
    spec = config_spec or base
    for seed in (seeds or (None,)):
      config = load_config(spec, study, entry if config_spec else "base")
      keys = {**overrides, **variant}
      if seed is not None:
        keys["seed"] = seed
      for key, value in keys.items():
        set_key(config, key, value, study, entry if key in variant else
                ("seeds" if key == "seed" and seed is not None else "overrides"))
      try:
        experiment.validate_config(config)
      except ValueError as e:
        _fail(study, entry, str(e))
      ev = dict(eval_overrides)
      if specs is not None:
        ev["eval.specs"] = specs
      for key, value in ev.items():
        set_key(config, key, value, study, "eval_specs" if key == "eval.specs" else
                "eval_overrides")
      try:
        entries.eval_samplers(config)
      except ValueError as e:
        _fail(study, f"eval_specs for {entry}" if specs is not None else f"{entry} eval",
              str(e))
      run = name if seeds is None or len(seeds) == 1 else f"{name}-seed{seed}"
      runs.append(Run(name=name, run=run, seed=config.seed, config=spec,
                      overrides={k: keys[k] for k in keys}, eval_overrides=ev,
                      varied=dict(variant), num_steps=config.train.num_steps))
  return Study(name=study, folder=folder, description=description, runs=tuple(runs),
               varied_keys=varied_keys,
               eval_specs=tuple(specs) if specs is not None else ())


def flag_value(value: Any) -> str:
  """A config value as the text of a ``--config.key=`` flag, read back by
  ml_collections as the same value (tuples as Python literals)."""
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  if isinstance(value, float):
    return repr(value)
  return str(value)
