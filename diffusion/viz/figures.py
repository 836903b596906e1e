"""Diagnostic figures of an experiment config (and of a workdir's samples).

    python -m diffusion.figures --config configs/digits_ddpm.py --out /tmp/figs \
        [--workdir /tmp/digits]

Writes under ``--out``:

- ``forward_strip.png``: 4 training images noised by every schedule of
  `schedules.SCHEDULES` (T = config.diffusion.num_steps) at t/T = 0, .25, .5,
  .75, 1, one fixed noise per image (`viz.images.forward_strip`), labelled;
- ``schedules.png``: alpha_bar(t) and logSNR(t) of those schedules;
- with ``--workdir``: ``nearest_neighbours.png``, the first ``--num_samples``
  samples of the latest ``samples/final_*.npz`` (written by ``--mode sample``)
  each followed by its ``--k`` nearest training images in pixel L2, and
  ``nearest_neighbours.npz`` (indices and distances' order);
- with ``--workdir`` (its ``eval/results.json``, written by ``--mode eval``) or
  ``--results FILE``: ``fid_vs_nfe.png``, FID against the number of network
  evaluations, one line per sampler family, the data row as the floor
  (`viz.images.metric_vs_nfe_plot`);
- with ``--results LABEL=FILE,LABEL=FILE,...`` (several models, e.g. one per
  formulation): ``fid_vs_nfe.png`` with a line per (model, sampler family) and
  ``fid_vs_nfe.md``: FID side by side, a column per model (`viz.tables.pivot_markdown`),
  then every row with KID and IS and each model's bits/dim
  (`viz.tables.comparison_markdown`).

`--config` takes ``file.py`` or ``file.py:variant`` and ``--config.a.b=v``
overrides, like `diffusion.main` (`run.cli`); errors are one line, exit 2.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sys

import jax
import numpy as np

from diffusion.data import iterator as data
from diffusion.core import schedules
from diffusion.run.workdir import Workdir
from diffusion.viz import images as visualize
from diffusion.viz import tables


def load_config(spec: str):
  """``path/to/file.py[:variant]`` -> that file's ``get_config(variant)``."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {path!r}: no such file")
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:  # Config files import `configs.default`.
    sys.path.insert(0, root)
  module_spec = importlib.util.spec_from_file_location(
      "_figures_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config {path!r} defines no get_config()")
  return module.get_config(arg or None)


def latest_samples(workdir: str) -> str:
  """The float ``samples/final_<step>[_<tag>].npz`` of `workdir` with the largest step
  (the newest file of that step; not the ``.uint8.npz`` copies)."""
  paths = Workdir(workdir).samples_dir.glob("final_*.npz")
  steps = {str(p): (int(m.group(1)), p.stat().mtime) for p in paths
           if (m := re.fullmatch(r"final_(\d+)(_.+)?\.npz", p.name))
           and not p.name.endswith(".uint8.npz")}
  if not steps:
    raise FileNotFoundError(
        f"no samples/final_*.npz in {workdir}: run `python -m diffusion.main --config ... "
        f"--workdir {workdir} --mode sample` first")
  return max(steps, key=steps.get)


def training_images(config, max_images: int | None = None) -> np.ndarray:
  """The training split as float32 [N, H, W, C] in [-1, 1] (no flips, no dequantisation)."""
  data_config = config.data
  with data_config.unlocked():
    data_config = data_config.copy_and_resolve_references()
  with data_config.unlocked():
    data_config.split, data_config.random_flip, data_config.dequantize = "train", False, False
  it = data.create(data_config, seed=config.seed)
  if it.labels is not None:  # In memory: integer pixels, as DataIterator scales them.
    images = it.images[:max_images].astype(np.float32) / (it.levels - 1) * 2.0 - 1.0
    return images.astype(np.float32)
  batches, total = [], 0
  for _ in range(it.batches_per_epoch):  # Lazy sources: one epoch (order shuffled).
    batches.append(next(it)["image"])
    total += len(batches[-1])
    if max_images is not None and total >= max_images:
      break
  return np.concatenate(batches)[:max_images]


def _define_flags(values) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("out", None, "output folder for the PNGs", flag_values=values)
  flags.DEFINE_string("workdir", None, "a workdir with samples/final_*.npz (--mode sample)",
                      flag_values=values)
  flags.DEFINE_integer("num_images", 4, "images in forward_strip.png", flag_values=values)
  flags.DEFINE_integer("num_samples", 16, "samples in nearest_neighbours.png",
                       flag_values=values)
  flags.DEFINE_integer("k", 3, "neighbours per sample", flag_values=values)
  flags.DEFINE_string("results", None, "an eval results.json for fid_vs_nfe.png (default: "
                      "WORKDIR/eval/results.json when it exists), or LABEL=FILE,LABEL=FILE,... "
                      "to compare several models in one plot and in fid_vs_nfe.md",
                      flag_values=values)
  flags.DEFINE_integer("max_train", None, "compare with at most this many training images "
                       "(default: all)", flag_values=values)


def main(argv=None) -> None:
  """``python -m diffusion.figures`` (module doc): parse the flags (main's: `run.cli`,
  ``--config file.py[:variant]`` and ``--config.a.b=v``), then draw each figure in
  turn (one linear list of figures, ~60 lines)."""
  from diffusion.run import cli  # pylint: disable=g-import-not-at-top
  args = cli.parse(sys.argv[1:] if argv is None else argv, _define_flags,
                   "python -m diffusion.figures", required=("config", "out"))
  config = args.config
  if args.workdir is not None and not os.path.isdir(args.workdir):
    cli.fail(f"--workdir {args.workdir!r} is not a folder")
  npz, results = None, parse_results(args.results)
  if args.workdir is not None:
    found = os.path.join(args.workdir, "eval", "results.json")
    results = results or ({None: found} if os.path.isfile(found) else None)
    try:
      npz = latest_samples(args.workdir)
    except FileNotFoundError as e:
      if results is None:
        cli.fail(f"{e} (or run --mode eval for the FID-vs-NFE figure)")

  os.makedirs(args.out, exist_ok=True)
  num_steps = config.diffusion.num_steps
  scheds = {name: schedules.get(name, num_steps) for name in schedules.SCHEDULES}
  try:
    batch = next(data.create(config.data, seed=config.seed))["image"][:args.num_images]
  except (ValueError, OSError) as e:  # Missing or unreadable data: one line, not a traceback.
    cli.fail(str(e))
  fractions = (0.0, 0.25, 0.5, 0.75, 1.0)
  grid = visualize.forward_strip(batch, scheds, jax.random.PRNGKey(config.seed), fractions,
                                 min_tile=64)
  ts = visualize.forward_timesteps(num_steps, fractions)
  path = os.path.join(args.out, "forward_strip.png")
  visualize.save_labelled(path, grid, row_labels=list(scheds) * len(batch),
                          col_labels=[f"t={t}" for t in ts],
                          title=f"T = {num_steps}; one fixed noise per image")
  print(f"wrote {path}")
  path = os.path.join(args.out, "schedules.png")
  visualize.schedule_plot(path, scheds)
  print(f"wrote {path}")

  if npz is not None:
    with np.load(npz) as f:
      if "images" not in f:
        raise SystemExit(f"{npz} has no 'images' array (keys: {sorted(f.files)})")
      samples = f["images"][:args.num_samples]
    train = training_images(config, args.max_train)
    if samples.shape[1:] != train.shape[1:]:
      raise SystemExit(f"samples in {npz} are {samples.shape[1:]} but the config's training "
                       f"images are {train.shape[1:]}: wrong --config for this workdir?")
    idx, grid = visualize.nearest_neighbours(samples, train, k=args.k)
    path = os.path.join(args.out, "nearest_neighbours.png")
    visualize.save_png(path, grid)
    dist = np.sqrt(((samples[:, None] - train[idx]) ** 2).reshape(len(samples), args.k, -1)
                   .sum(-1))
    np.savez(os.path.join(args.out, "nearest_neighbours.npz"), indices=idx, distances=dist,
             samples_file=npz)
    print(f"wrote {path} ({len(samples)} samples of {npz} against {len(train)} training "
          f"images; median nearest L2 distance {np.median(dist[:, 0]):.3f})")

  if results is not None:
    results_tables = {}
    for label, file in results.items():
      with open(file) as f:
        results_tables[label] = json.load(f)
    path = os.path.join(args.out, "fid_vs_nfe.png")
    first = next(iter(results_tables.values()))
    about = (f"FID of {first['num_samples']} samples ({first['features'].split(':')[0]} "
             "features)")
    if None in results_tables:
      visualize.metric_vs_nfe_plot(path, first["rounds"], "fid",
                                   title=f"{about}, step {first['step']}")
      if any(r.get("label_accuracy") is not None or r.get("prompt_agreement")
             for r in first["rounds"]):
        md = os.path.join(args.out, "guidance.md")
        with open(md, "w") as f:
          f.write(tables.guidance_markdown(first))
        print(f"wrote {md}")
    else:
      steps = sorted({t["step"] for t in results_tables.values()})
      visualize.metric_vs_nfe_plot(
          path, {label: t["rounds"] for label, t in results_tables.items()}, "fid",
          title=f"{about}, step {'/'.join(map(str, steps))}", figsize=(10.0, 5.0))
      md = os.path.join(args.out, "fid_vs_nfe.md")
      with open(md, "w") as f:
        f.write(tables.pivot_markdown(results_tables) + "\n" +
                tables.comparison_markdown(results_tables))
      print(f"wrote {md}")
    print(f"wrote {path} (from {', '.join(results.values())})")


def parse_results(value: str | None) -> dict | None:
  """``--results``: ``FILE`` -> ``{None: FILE}``; ``LABEL=FILE,LABEL=FILE`` -> ``{LABEL:
  FILE}`` in order. Each file must exist; a bad value is one line (exit 2)."""
  from diffusion.run import cli  # pylint: disable=g-import-not-at-top
  if value is None:
    return None
  if "=" not in value:
    pairs = [(None, value)]
  else:
    pairs = []
    for item in value.split(","):
      label, sep, file = item.partition("=")
      if not sep or not label or not file:
        cli.fail(f"--results: {item!r} is not LABEL=FILE (give FILE, or LABEL=FILE,"
                 "LABEL=FILE,... to compare models)")
      pairs.append((label, file))
    if len({label for label, _ in pairs}) != len(pairs):
      cli.fail(f"--results: a label appears twice in {value!r}")
  for _, file in pairs:
    if not os.path.isfile(file):
      cli.fail(f"--results {file!r}: no such file (an eval results.json)")
  return dict(pairs)

if __name__ == "__main__":
  main()
