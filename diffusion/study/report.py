"""The local report of a study: ``experiments/<study>/report.md`` and its plots.

`collect` copies each run's small files (``metrics.jsonl``, ``eval/results.json``,
``config.json``) from its workdir into ``experiments/<study>/runs/<run>/``, so the
report can be rebuilt from what is committed; `write` reads those copies only and
writes the table and the PNGs. Every number in the report is read from them.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from diffusion.study import definition, runner
from diffusion.viz import tables

MAX_COLUMNS = 4  # FID columns in the main table; with more eval specs, a table per sampler.
COPIED = (("metrics.jsonl", "metrics.jsonl"), ("eval/results.json", "results.json"),
          ("config.json", "config.json"))


def runs_folder(study) -> str:
  return os.path.join(study.folder, "runs")


def collect(study, root: str) -> dict[str, list[str]]:
  """Copies each run's files from ``root/<run>`` into ``runs_folder(study)/<run>``
  (a file that is missing in the workdir keeps its earlier copy). Returns ``{run:
  [copied files]}``."""
  out = {}
  for run in study.runs:
    src, dst = runner.workdir(root, run), os.path.join(runs_folder(study), run.run)
    copied = []
    for rel, name in COPIED:
      path = os.path.join(src, rel)
      if os.path.isfile(path):
        os.makedirs(dst, exist_ok=True)
        shutil.copyfile(path, os.path.join(dst, name))
        copied.append(name)
    out[run.run] = copied
  return out


def _read(study, run) -> dict:
  folder = os.path.join(runs_folder(study), run.run)
  metrics, results = [], None
  path = os.path.join(folder, "metrics.jsonl")
  if os.path.isfile(path):
    with open(path) as f:
      metrics = [json.loads(line) for line in f if line.strip()]
  path = os.path.join(folder, "results.json")
  if os.path.isfile(path):
    with open(path) as f:
      results = json.load(f)
  return {"metrics": metrics, "results": results}


def train_summary(metrics: list[dict], tail: int = 5) -> dict:
  """From ``metrics.jsonl`` rows: the last step, the final loss (mean of the last
  `tail` rows, each a mean over ``log_every`` steps) and the training time
  ``sum(steps between rows / steps_per_sec)`` (compilation excluded)."""
  rows = [m for m in metrics if "loss" in m]
  if not rows:
    return {"step": None, "loss": None, "train_s": None}
  seconds, prev = 0.0, 0
  for m in rows:
    if m.get("steps_per_sec"):
      seconds += (m["step"] - prev) / m["steps_per_sec"]
    prev = m["step"]
  return {"step": rows[-1]["step"], "loss": float(np.mean([m["loss"] for m in rows[-tail:]])),
          "train_s": seconds}


def _spread(values):
  """``(mean, spread)``: spread is the standard deviation over seeds (ddof 1), None
  for one seed."""
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def _cell(mean, spread, digits):
  if mean is None:
    return "-"
  return f"{mean:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread is not None else "")


def table(study) -> tuple[list[str], dict]:
  """The report's rows (markdown lines) and the numbers behind them: ``{variant:
  {column: (mean, spread)}}``; one row per variant, its seeds averaged."""
  by_variant: dict[str, list] = {}
  for run in study.runs:
    by_variant.setdefault(run.name, []).append(_read(study, run))
  specs = list(study.eval_specs)
  if not specs:  # The base config's own specs: those of the first run's results.
    first = next((d["results"] for ds in by_variant.values() for d in ds if d["results"]), None)
    specs = [r["spec"] for r in (first or {}).get("rounds", ()) if r["method"] != "data"]
  specs = specs[:MAX_COLUMNS]  # More: the per-sampler table of `write`.
  head = (["variant", "seeds", "final loss"] + [f"FID `{s}`" for s in specs]
          + [f"KID `{specs[0]}`" if specs else "KID", "IS", "bits/dim", "samples/s",
             "train time (min)"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  numbers = {}
  for variant, data in by_variant.items():
    summaries = [train_summary(d["metrics"]) for d in data]
    rounds = [{r["spec"]: r for r in (d["results"] or {}).get("rounds", ())} for d in data]
    cols = {"loss": _spread([s["loss"] for s in summaries]),
            "train_min": _spread([s["train_s"] / 60 if s["train_s"] else None
                                  for s in summaries])}
    for s in specs:
      cols[f"fid:{s}"] = _spread([r.get(s, {}).get("fid") for r in rounds])
    main = specs[0] if specs else None
    cols["kid"] = _spread([r.get(main, {}).get("kid") for r in rounds])
    cols["is"] = _spread([r.get(main, {}).get("inception_score") for r in rounds])
    cols["samples_per_s"] = _spread([r.get(main, {}).get("samples_per_s") for r in rounds])
    cols["bpd"] = _spread([((d["results"] or {}).get("bpd") or {}).get("bits_per_dim")
                           for d in data])
    numbers[variant] = cols
    cells = ([variant, str(len(data)), _cell(*cols["loss"], 4)]
             + [_cell(*cols[f"fid:{s}"], 2) for s in specs]
             + [_cell(*cols["kid"], 2), _cell(*cols["is"], 2), _cell(*cols["bpd"], 3),
                _cell(*cols["samples_per_s"], 1), _cell(*cols["train_min"], 1)])
    lines.append("| " + " | ".join(cells) + " |")
  return lines, numbers


def _data_rows(study):
  for run in study.runs:
    results = _read(study, run)["results"]
    for r in (results or {}).get("rounds", ()):
      if r["method"] == "data":
        return r, results
  return None, None


def loss_plot(study, path: str) -> None:
  from diffusion.viz import images  # pylint: disable=g-import-not-at-top
  fig = images._figure((7.0, 4.5), 100)  # pylint: disable=protected-access
  ax = fig.subplots()
  for i, run in enumerate(study.runs):
    rows = [m for m in _read(study, run)["metrics"] if "loss" in m]
    if rows:
      ax.plot([m["step"] for m in rows], [m["loss"] for m in rows], label=run.run,
              color=f"C{i % 10}", linewidth=1.2)
  ax.set(yscale="log", xlabel="step", ylabel="training loss (mean over log_every steps)",
         title=f"study {study.name}: training loss")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
  fig.tight_layout()
  images._save_figure(fig, path)  # pylint: disable=protected-access


def key_plot(study, numbers: dict, spec: str, path: str) -> bool:
  """FID of `spec` against the first varied key, one line per value of the others
  (grid studies with a key of numbers or names); False when there is no such key."""
  from diffusion.viz import images  # pylint: disable=g-import-not-at-top
  if not study.varied_keys:
    return False
  key = study.varied_keys[0]
  lines: dict[str, list] = {}
  for run in study.runs:
    if key not in run.varied or run.seed != study.runs[0].seed:
      continue
    rest = ",".join(f"{k.rsplit('.', 1)[-1]}={definition.flag_value(v)}"
                    for k, v in run.varied.items() if k != key) or "all"
    mean, spread = numbers[run.name].get(f"fid:{spec}", (None, None))
    if mean is not None:
      lines.setdefault(rest, []).append((run.varied[key], mean, spread or 0.0))
  if not lines:
    return False
  fig = images._figure((7.0, 4.5), 100)  # pylint: disable=protected-access
  ax = fig.subplots()
  values = list(dict.fromkeys(v for pts in lines.values() for v, _, _ in pts))
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  for i, (label, pts) in enumerate(lines.items()):
    xs = [v if numeric else values.index(v) for v, _, _ in pts]
    ax.errorbar(xs, [m for _, m, _ in pts], yerr=[s for _, _, s in pts], marker="o",
                capsize=3, label=label, color=f"C{i % 10}")
  if not numeric:
    ax.set_xticks(range(len(values)), [str(v) for v in values])
  ax.set(xlabel=key, ylabel=f"FID ({spec})", title=f"study {study.name}: FID against {key}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  images._save_figure(fig, path)  # pylint: disable=protected-access
  return True


def write(study, command: str) -> str:
  """Writes ``report.md`` and its PNGs into the study folder from the copies in
  ``runs/``; returns the report's path."""
  from diffusion.viz import images  # pylint: disable=g-import-not-at-top
  folder = study.folder
  lines, numbers = table(study)
  data_row, results = _data_rows(study)
  out = [f"# Study `{study.name}`", ""]
  if study.description:
    out += [study.description, ""]
  out += [f"Written by `{command}` from the runs' own files (copied into `runs/<run>/`: "
          "`metrics.jsonl`, `results.json`, `config.json`); training lengths: "
          + ", ".join(sorted({str(r.num_steps) for r in study.runs})) + " steps.", "",
          "Varied: " + (", ".join(f"`{k}`" for k in study.varied_keys) or "(named variants)")
          + ". Reproduce the runs with `python -m diffusion.sweep "
          f"{os.path.relpath(folder, definition.ROOT)}` (their commands: add `--print`).", ""]
  out += lines + [""]
  every = {r.run: _read(study, r)["results"] for r in study.runs}
  every = {k: v for k, v in every.items() if v}
  n_specs = len({r["spec"] for t in every.values() for r in t["rounds"] if r["method"] != "data"})
  if every and n_specs > MAX_COLUMNS:
    out += ["FID of every sampler (rows) and run (columns), with the data floor and bits/dim:",
            "", tables.pivot_markdown(every).rstrip(), ""]
  if results is not None:
    out += [f"FID / KID / IS from {results['num_samples']} samples per sampler "
            f"({results['features'].split(':')[0]} features); final loss is the mean of the "
            "last 5 logged rows. `a ± b`: mean and standard deviation over seeds."]
  if data_row is not None:
    out += [f"How noisy: the `{data_row['spec']}` row (real images scored like the samples, "
            f"the floor of each metric at this N) has FID {data_row['fid']:.2f}, KID "
            f"{data_row['kid']:.2f} ± {data_row.get('kid_std') or 0:.2f} (KID's standard "
            "deviation over subsets): differences between rows smaller than the seeds' spread "
            "or than KID's deviation are not resolved."]
  out.append("")
  plots = []
  path = os.path.join(folder, "loss.png")
  loss_plot(study, path)
  plots.append(("loss.png", "training loss of every run"))
  if every:
    images.metric_vs_nfe_plot(os.path.join(folder, "fid_vs_nfe.png"),
                              {k: v["rounds"] for k, v in every.items()}, "fid",
                              figsize=(10.0, 5.0),
                              title=f"study {study.name}: FID against sampling cost")
    plots.append(("fid_vs_nfe.png", "FID against network evaluations, every run and sampler"))
    spec = study.eval_specs[0] if study.eval_specs else None
    if spec and key_plot(study, numbers, spec, os.path.join(folder, "fid_vs_key.png")):
      plots.append(("fid_vs_key.png", f"FID of `{spec}` against the first varied key"))
  for name, what in plots:
    out += [f"![{what}]({name})", ""]
  path = os.path.join(folder, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(out))
  return path
