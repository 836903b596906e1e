"""The report of `--mode eval`: results.json, results.md and the wandb row."""
from __future__ import annotations

import jax

from diffusion.run import sinks
from diffusion.run.workdir import Workdir, write_json
from diffusion.eval.entries import spec_filename
from diffusion.viz.tables import fmt as _fmt


def results_markdown(results: dict) -> str:
  # KID x 1e3 is the convention for Inception features; the classifier's
  # features have another scale, so their KID is printed as it is.
  kid_scale, kid_head = (1e3, "KID (x1e3)") if results["features"] == "inception" else (1.0, "KID")
  # Conditional models scored by the project's classifier: how often it reads the
  # label each sample was asked for (± its binomial standard error).
  acc = any(r.get("label_accuracy") is not None for r in results["rounds"])
  lines = [f"# Evaluation of step {results['step']} ({results['features']} features, "
           f"{results['num_samples']} samples per sampler)", "",
           f"| sampler | steps | NFE | FID | {kid_head} | IS |"
           + (" label accuracy |" if acc else "") + " time (s) |",
           "|---|---|---|---|---|---|" + ("---|" if acc else "") + "---|"]
  for r in results["rounds"]:
    if r["method"] == "data":  # Real images: no sampler.
      steps, nfes, secs = "-", "-", "-"
    else:
      steps, secs = r["steps"], _fmt(r["time_s"])
      nfes = r["nfe"] if r["nfe"] is not None else "adaptive"
    accuracy = ""
    if acc:
      accuracy = (" - |" if r.get("label_accuracy") is None else
                  f" {_fmt(r['label_accuracy'], digits=3)} ± {_fmt(r['label_accuracy_se'], digits=3)} |")
    lines.append(f"| `{r['spec']}` | {steps} | {nfes} | {_fmt(r['fid'], digits=3)} | "
                 f"{_fmt(r['kid'], kid_scale)} | {_fmt(r['inception_score'])} |{accuracy} {secs} |")
  b = results.get("bpd")
  if b:
    lines += ["", f"bits/dim ({b['split']} split, {b['num_images']} images): "
              f"{b['bits_per_dim']:.4f} ± {b['std']:.4f}; {b['description']}"]
  return "\n".join(lines) + "\n"


def write(config, workdir: str, results: dict) -> None:
  """Writes ``eval/results.json`` and ``results.md`` and logs the numbers to wandb
  (when ``config.wandb.mode`` is on); process 0 only."""
  if jax.process_index() != 0:
    return
  wd = Workdir(workdir)
  write_json(wd.results("json"), results, indent=2)
  wd.results("md").write_text(results_markdown(results))
  hook = sinks.WandbHook(config, enabled=True, workdir=workdir, job_type="eval")
  row = {f"eval/{spec_filename(r['spec'])}/{k}": r[k] for r in results["rounds"]
         for k in ("fid", "kid", "inception_score", "time_s", "nfe", "label_accuracy")
         if r.get(k) is not None}
  if results["bpd"]:
    row["eval/bits_per_dim"] = results["bpd"]["bits_per_dim"]
  hook.log(int(results["step"]), row)
  hook.close()
