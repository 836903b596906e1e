"""The report of `--mode eval`: results.json, results.md and the wandb row."""
from __future__ import annotations

import jax

from diffusion.run import sinks
from diffusion.run.workdir import Workdir, write_json
from diffusion.eval.entries import spec_filename


def _fmt(v, scale=1.0, digits=2):
  return "-" if v is None else f"{v * scale:.{digits}f}"


def results_markdown(results: dict) -> str:
  # KID x 1e3 is the convention for Inception features; the classifier's
  # features have another scale, so their KID is printed as it is.
  kid_scale, kid_head = (1e3, "KID (x1e3)") if results["features"] == "inception" else (1.0, "KID")
  lines = [f"# Evaluation of step {results['step']} ({results['features']} features, "
           f"{results['num_samples']} samples per sampler)", "",
           f"| sampler | steps | NFE | FID | {kid_head} | IS | time (s) |",
           "|---|---|---|---|---|---|---|"]
  for r in results["rounds"]:
    if r["method"] == "data":  # Real images: no sampler.
      steps, nfes, secs = "-", "-", "-"
    else:
      steps, secs = r["steps"], _fmt(r["time_s"])
      nfes = r["nfe"] if r["nfe"] is not None else "adaptive"
    lines.append(f"| `{r['spec']}` | {steps} | {nfes} | {_fmt(r['fid'], digits=3)} | "
                 f"{_fmt(r['kid'], kid_scale)} | {_fmt(r['inception_score'])} | {secs} |")
  b = results.get("bpd")
  if b:
    lines += ["", f"bits/dim ({b['split']} split, {b['num_images']} images): "
              f"{b['bits_per_dim']:.4f} ± {b['std']:.4f}; {b['description']}"]
  return "\n".join(lines) + "\n"


def comparison_markdown(tables: dict) -> str:
  """One markdown table of several eval ``results.json`` (``{label: results}``, e.g.
  one model per formulation): a row per (label, sampler) with NFE, FID, KID ± its
  standard error over subsets and IS, the data rows once when all tables share
  them, then each label's bits/dim (``python -m diffusion.figures --results
  a=A.json,b=B.json`` writes it as ``fid_vs_nfe.md``)."""
  first = next(iter(tables.values()))
  kid_scale, kid_head = ((1e3, "KID (x1e3)") if first["features"] == "inception"
                         else (1.0, "KID"))
  lines = [f"| model | sampler | NFE | FID | {kid_head} | IS |", "|---|---|---|---|---|---|"]
  def row(label, r):
    nfe = "-" if r["method"] == "data" else (r["nfe"] if r["nfe"] is not None else "adaptive")
    kid = _fmt(r["kid"], kid_scale)
    if r.get("kid_std") is not None and r["kid"] is not None:
      kid += f" ± {_fmt(r['kid_std'], kid_scale)}"
    return (f"| {label} | `{r['spec']}` | {nfe} | {_fmt(r['fid'], digits=2)} | {kid} | "
            f"{_fmt(r['inception_score'])} |")
  data = {label: [r for r in t["rounds"] if r["method"] == "data"] for label, t in tables.items()}
  shared = len({tuple((r["spec"], round(r["fid"], 6)) for r in d) for d in data.values()}) == 1
  if shared:
    lines += [row("data", r) for r in first["rounds"] if r["method"] == "data"]
  for label, t in tables.items():
    lines += [row(label, r) for r in t["rounds"] if r["method"] != "data" or not shared]
  lines.append("")
  for label, t in tables.items():
    b = t.get("bpd")
    lines.append(f"- {label}, step {t['step']}: " + (
        f"bits/dim {b['bits_per_dim']:.3f} ± {b['std'] / max(b['num_images'], 1) ** 0.5:.3f} "
        f"(standard error of {b['num_images']} {b['split']} images; {b['description']})"
        if b else "no bits/dim"))
  return "\n".join(lines) + "\n"


def write(config, workdir: str, results: dict) -> None:
  """Writes ``eval/results.json`` and ``results.md`` and logs the numbers to wandb
  (when ``config.wandb.mode`` is on); process 0 only."""
  if jax.process_index() != 0:
    return
  wd = Workdir(workdir)
  write_json(wd.results("json"), results, indent=2)
  wd.results("md").write_text(results_markdown(results))
  hook = sinks.WandbHook(config, enabled=True, workdir=workdir)
  row = {f"eval/{spec_filename(r['spec'])}/{k}": r[k] for r in results["rounds"]
         for k in ("fid", "kid", "inception_score", "time_s", "nfe")}
  if results["bpd"]:
    row["eval/bits_per_dim"] = results["bpd"]["bits_per_dim"]
  hook.log(int(results["step"]), row)
  hook.close()
