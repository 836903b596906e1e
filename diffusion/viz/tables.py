"""Markdown tables of eval results (``results.json``), for reports and the README
(`diffusion.eval.report` uses `fmt` for results.md)."""
from __future__ import annotations


def fmt(v, scale=1.0, digits=2):
  return "-" if v is None else f"{v * scale:.{digits}f}"


def comparison_markdown(tables: dict) -> str:
  """One markdown table of several eval ``results.json`` (``{label: results}``, e.g.
  one model per formulation): a row per (label, sampler) with NFE, FID, KID ± its
  standard deviation over subsets and IS, the data rows once when all tables share
  them, then each label's bits/dim (``python -m diffusion.figures --results
  a=A.json,b=B.json`` writes it as ``fid_vs_nfe.md``)."""
  first = next(iter(tables.values()))
  kid_scale, kid_head = ((1e3, "KID (x1e3)") if first["features"] == "inception"
                         else (1.0, "KID"))
  lines = [f"| model | sampler | NFE | FID | {kid_head} | IS |", "|---|---|---|---|---|---|"]
  def row(label, r):
    nfe = "-" if r["method"] == "data" else (r["nfe"] if r["nfe"] is not None else "adaptive")
    kid = fmt(r["kid"], kid_scale)
    if r.get("kid_std") is not None and r["kid"] is not None:
      kid += f" ± {fmt(r['kid_std'], kid_scale)}"
    return (f"| {label} | `{r['spec']}` | {nfe} | {fmt(r['fid'], digits=2)} | {kid} | "
            f"{fmt(r['inception_score'])} |")
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


def pivot_markdown(tables: dict, metric: str = "fid") -> str:
  """The same results side by side: a row per sampler spec (in order of first
  appearance), a column per label holding its `metric` ("-" where that model did not
  run the spec), the NFE, and last rows for the data floor and bits/dim."""
  specs, nfe = [], {}
  for t in tables.values():
    for r in t["rounds"]:
      if r["method"] != "data" and r["spec"] not in nfe:
        specs.append(r["spec"])
        nfe[r["spec"]] = r["nfe"] if r["nfe"] is not None else "adaptive"
  labels = list(tables)
  name = metric.upper() if metric in ("fid", "kid") else metric
  lines = ["| sampler | NFE | " + " | ".join(f"{name} {lb}" for lb in labels) + " |",
           "|---|---|" + "---|" * len(labels)]
  values = {lb: {r["spec"]: r.get(metric) for r in t["rounds"]} for lb, t in tables.items()}
  for spec in specs:
    cells = [fmt(values[lb].get(spec), digits=1) for lb in labels]
    lines.append(f"| `{spec}` | {nfe[spec]} | " + " | ".join(cells) + " |")
  data = [{r["spec"]: r.get(metric) for r in t["rounds"] if r["method"] == "data"}
          for t in tables.values()]
  for spec in dict.fromkeys(k for d in data for k in d):
    cells = [fmt(d.get(spec), digits=1) for d in data]
    lines.append(f"| `{spec}` (real images: the floor) | - | " + " | ".join(cells) + " |")
  bpd = []
  for t in tables.values():
    b = t.get("bpd")
    bpd.append(f"{b['bits_per_dim']:.3f} ± {b['std'] / max(b['num_images'], 1) ** 0.5:.3f} "
               f"({b['method']})" if b else "-")
  lines.append("| bits/dim ± standard error | - | " + " | ".join(bpd) + " |")
  return "\n".join(lines) + "\n"


def guidance_markdown(results: dict) -> str:
  """The guidance table of a conditional model's ``results.json``: a row per sampler spec
  with its guidance weight w, FID, IS and how often the samples are what they were asked
  for: the label accuracy (class models) or the agreement per attribute a prompt names
  (text models: digit, thickness, slant, size), each ± its binomial standard error
  ``sqrt(p (1 - p) / n)`` (n: the samples, or the prompts naming that attribute)."""
  rounds = results["rounds"]
  text = any(r.get("prompt_agreement") for r in rounds)
  attrs = ("digit", "thickness", "slant", "size")
  head = ["sampler", "w", "FID", "IS"] + (
      [f"{a} agreement" for a in attrs] if text else ["label accuracy"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

  def rate(p, n):
    if p is None or n is None or n == 0 or p != p:
      return "-"
    return f"{p:.3f} ± {(p * (1 - p) / n) ** 0.5:.3f}"

  for r in rounds:
    w = r.get("settings", {}).get("guidance", "-") if r["method"] != "data" else "-"
    cells = [f"`{r['spec']}`", str(w), fmt(r["fid"], digits=2), fmt(r["inception_score"])]
    if text:
      agree = r.get("prompt_agreement") or {}
      cells += [rate(agree.get(a, {}).get("agreement"), agree.get(a, {}).get("count"))
                for a in attrs]
    else:
      cells.append(rate(r.get("label_accuracy"), r["num_samples"])
                   if r.get("label_accuracy") is not None else "-")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
