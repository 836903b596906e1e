"""`--mode eval`: sample quality per sampler and bits/dim of a trained workdir.

    python -m diffusion.main --config configs/digits_ddpm.py --workdir /tmp/digits --mode eval \
        --config.eval.features=classifier --config.eval.classifier_path=/tmp/clf \
        --config.eval.samplers="('ddpm', 'ddim:steps=50,eta=0', 'ddim:steps=10,eta=1')"

On the EMA params of ``config.sample.checkpoint_step`` (None: the latest), for
each spec of ``config.eval.samplers`` (`sampler_specs.parse_sampler_spec`; empty: the sampler
of ``config.sample``) it draws ``eval.num_samples`` images in calls of
``eval.batch_size`` (chunk c with key ``fold_in(fold_in(sample_key,
crc32(spec)), c)``: deterministic given the seed and the spec; the last chunk
padded and cut), clips them to [-1, 1] and extracts features and logits
(``eval.features``: the project's classifier or FID Inception). It reports

- FID (streaming `metrics.FeatureStats` against the reference statistics);
- KID x 1e3 and precision/recall on the first ``eval.kept_features`` sample
  and reference feature vectors (only these are held in memory; precision /
  recall needs ``O(n^2)`` memory);
- Inception Score of the logits (all N logits are kept, float32);
- ``time_s``: wall time of the N samples' sampler calls, each followed by
  ``block_until_ready``, with the sampler compiled ahead (``compile_s``
  separately); feature extraction is not timed; NFE per sample (None for the
  adaptive rk45 solver).

Reference statistics come from one epoch of ``eval.reference_split`` (or its
first ``eval.reference_num`` images), not dequantised, cached in
``eval.reference_stats`` (default ``workdir/eval/reference_<features>_<split>.npz``)
with the first ``kept_features`` feature vectors. Bits/dim (``eval.bpd``) is
computed once per model on ``eval.bpd_num`` images of ``eval.bpd_split``:
a discrete model gets DDPM's variational bound (`likelihood.ddpm_vlb`, total)
on the K-level data itself, no dequantisation noise, the discretised Gaussian
decoder of Ho et al.; a continuous model gets `likelihood.bits_per_dim` of
uniformly dequantised data ``x = 2 (k + u) / K - 1`` (Song et al. 2021),
Hutchinson divergence, rk45, plus ``log2(K / 2)``. K is the dataset's number
of pixel levels (256 for 8-bit images, 17 for digits).

Every process runs this (`launch.sh multiprocess`, a TPU pod): each sampler
call is one global batch split over all devices of all processes (so
``eval.batch_size`` must divide by the device count), each process extracts
the features of its rows, and the rows are gathered in order; the reference
and bits/dim batches are split likewise. Every process thus holds the same
statistics as one process would; process 0 writes the files.

Every round is saved at once to ``workdir/eval/rounds/<spec>.json`` (and the
sample statistics to ``<spec>_stats.npz``); a re-run skips rounds whose json
matches the checkpoint step, N and features, so a killed eval resumes. Then
``workdir/eval/results.json`` and ``results.md`` are (re)written, and the
numbers logged to wandb when ``config.wandb.mode`` is on.
"""
from __future__ import annotations

import copy
import json
import os
import time
import zlib

import jax
import numpy as np

from diffusion import experiment
from diffusion.run import checkpoint
from diffusion.eval import classifier as classify
from diffusion.data import iterator as data
from diffusion.core import likelihood
from diffusion.dist import cluster
from diffusion.dist import placement
from diffusion.core import parameterization
from diffusion.sample import fn as sampling
from diffusion.run import writers
from diffusion.eval import metrics

from diffusion.sample.specs import nfe, sampler_config, sampler_steps, spec_filename

FEATURES = ("classifier", "inception")


# --------------------------------------------------------------------------
# Features.
# --------------------------------------------------------------------------


def make_extractor(e):
  """``fn(images [N, H, W, C]) -> (features [N, D], logits [N, K])`` of ``eval.features``."""
  if e.features not in FEATURES:
    raise ValueError(f"config.eval.features={e.features!r} is unknown; valid: {', '.join(FEATURES)}")
  if e.features == "classifier":
    path = e.classifier_path
    if not path or not os.path.exists(os.path.join(path, "classifier.json")):
      raise FileNotFoundError(
          f"config.eval.classifier_path={path!r} holds no classifier (classifier.json): train "
          "one with diffusion.classify.train and save it with diffusion.classify.save(path, ...)")
    model, params, _ = classify.load(path)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, method=type(model).features_and_logits))
    return _padded_batches(lambda x: apply(params, x), e.batch_size)
  path = e.inception_weights
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
        f"config.eval.inception_weights={path!r} does not exist: convert pytorch-fid's weights "
        "with `python -m diffusion.models.inception --convert <pth> --out <npz>` "
        "(see diffusion/models/inception.py)")
  from diffusion.models import inception  # pylint: disable=g-import-not-at-top
  return inception.feature_fn(inception.load_params(path), batch_size=e.batch_size)


def _padded_batches(fn, batch_size: int):
  """``fn`` on ``[N, ...]`` in zero-padded batches of `batch_size` (one compiled shape)."""
  def run(images):
    images = np.asarray(images, np.float32)
    feats, logits = [], []
    for start in range(0, images.shape[0], batch_size):
      chunk = images[start:start + batch_size]
      n = chunk.shape[0]
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], np.float32)])
      f, lg = jax.device_get(fn(chunk))
      feats.append(np.asarray(f, np.float64)[:n])
      logits.append(np.asarray(lg, np.float64)[:n])
    return np.concatenate(feats), np.concatenate(logits)
  return run


def _extractor_id(e) -> str:
  path = e.classifier_path if e.features == "classifier" else e.inception_weights
  return f"{e.features}:{os.path.abspath(path)}"


def reference_stats(config, workdir: str, extract):
  """``(FeatureStats, kept features)`` of the reference split; cached (see module doc)."""
  e = config.eval
  path = e.reference_stats or os.path.join(
      workdir, "eval", f"reference_{e.features}_{e.reference_split}.npz")
  if cluster.same_on_all_processes(os.path.exists(path), path):
    with np.load(path) as f:
      arrays = dict(f)
    if str(arrays["extractor"]) != _extractor_id(e):
      raise ValueError(f"{path} holds statistics of {arrays['extractor']}, not of "
                       f"{_extractor_id(e)}: delete it or set config.eval.reference_stats")
    return metrics.FeatureStats.from_arrays(arrays), arrays["features"]
  dc = copy.deepcopy(config.data)
  dc.split, dc.dequantize, dc.random_flip = e.reference_split, False, False
  # Each process reads its slice of every global batch and extracts its
  # features; the gathered rows are the global batch in order.
  it = data.create(dc, seed=config.seed, process_index=jax.process_index(),
                   process_count=jax.process_count())
  total = it.batches_per_epoch * dc.batch_size
  n = min(e.reference_num, total) if e.reference_num > 0 else total
  stats, kept, done = None, [], 0
  while done < n:
    feats, _ = extract(next(it)["image"])
    feats = placement.gather_rows(feats)[:n - done]
    stats = (stats or metrics.FeatureStats(feats.shape[1])).update(feats)
    kept.append(feats[:max(0, e.kept_features - done)])
    done += len(feats)
  kept = np.concatenate(kept)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **stats.to_arrays(), features=kept, extractor=_extractor_id(e))
  writers.echo(f"reference statistics of {n} {e.reference_split} images -> {path}")
  return stats, kept


def _batch(batch_size: int, n: int, mesh) -> int:
  """Images per call for `n` images: ``min(batch_size, n)`` rounded up to a
  multiple of the mesh's device count (`evaluate` checks batch_size is one)."""
  k = 1 if mesh is None else mesh.devices.size
  return -(-min(batch_size, n) // k) * k


# --------------------------------------------------------------------------
# One round: one sampler.
# --------------------------------------------------------------------------


def _score(config, local_chunks, n: int, bs: int, extract, ref, ref_kept) -> tuple[dict, object]:
  """Metrics of `n` images that arrive as calls of `bs`: `local_chunks` yields
  this process's rows of each call (all of it with one process); features are
  extracted per process and gathered in order, the last call cut to `n`."""
  e = config.eval
  stats, kept, logits = None, [], []
  for c, images in enumerate(local_chunks):
    feats, lg = extract(np.clip(images, -1.0, 1.0))
    feats = placement.gather_rows(feats)[:n - c * bs]
    lg = placement.gather_rows(lg)[:n - c * bs]
    stats = (stats or metrics.FeatureStats(feats.shape[1])).update(feats)
    kept.append(feats[:max(0, e.kept_features - c * bs)])
    logits.append(np.asarray(lg, np.float32))
  kept, logits = np.concatenate(kept), np.concatenate(logits)
  kid_mean, kid_std = metrics.kid(kept, ref_kept, num_subsets=e.kid_subsets,
                                   subset_size=e.kid_subset_size, seed=config.seed)
  is_mean, is_std = metrics.inception_score(logits, num_splits=min(e.is_splits, n))
  k = min(len(kept), len(ref_kept))
  precision, recall = metrics.precision_recall(ref_kept[:k], kept[:k]) if k > 3 else (None, None)
  return {"num_samples": n, "fid": metrics.fid(stats, ref), "kid": kid_mean,
          "kid_std": kid_std, "inception_score": is_mean, "inception_score_std": is_std,
          "precision": precision, "recall": recall}, stats


def run_round(config, spec, apply_fn, process, params, sample_key, extract, ref, ref_kept,
              mesh=None):
  """Samples ``eval.num_samples`` with `spec` and scores them; returns ``(row, stats)``.

  With a `mesh` every sampler call is split over all its devices (`params`
  replicated on it); each process extracts the features of its own rows and
  the rows are gathered in order, so every process holds the same statistics.
  """
  e, cfg = config.eval, sampler_config(config, spec)
  n, bs = e.num_samples, _batch(e.batch_size, e.num_samples, mesh)
  key = jax.random.fold_in(sample_key, zlib.crc32(spec.encode()) & 0x7FFFFFFF)
  fn = sampling.make_sample_fn(cfg, apply_fn, process, num_samples=bs, mesh=mesh)
  t0 = time.perf_counter()
  compiled = fn.lower(params, key).compile()
  compile_s = time.perf_counter() - t0
  cluster.barrier("eval_" + spec_filename(spec))  # All compiled before the first collective.
  timing = {"sample_s": 0.0}

  def chunks():
    for c in range(-(-n // bs)):
      t0 = time.perf_counter()
      x = compiled(params, jax.random.fold_in(key, c)).block_until_ready()
      timing["sample_s"] += time.perf_counter() - t0
      yield placement.local_rows(x)

  scores, stats = _score(config, chunks(), n, bs, extract, ref, ref_kept)
  s, sample_s = cfg.sample, timing["sample_s"]
  row = {"spec": spec, "method": s.method, "steps": sampler_steps(cfg), "nfe": nfe(cfg),
         "settings": {k2: s[k2] for k2 in sorted(s.keys()) if k2 not in
                      ("num_samples", "batch_size", "grid_size", "gif_frames", "checkpoint_step")},
         **scores, "time_s": sample_s, "compile_s": compile_s,
         "samples_per_s": n / sample_s if sample_s > 0 else None}
  return row, stats


def data_round(config, extract, ref, ref_kept, mesh=None):
  """The row of ``eval.num_samples`` real images of ``eval.baseline_split``
  scored like samples: the floor of each metric at this N (FID is biased
  upwards at small N; a model cannot be told from data below this row)."""
  e = config.eval
  n, bs = e.num_samples, _batch(e.batch_size, e.num_samples, mesh)
  dc = copy.deepcopy(config.data)
  dc.split, dc.dequantize, dc.random_flip, dc.batch_size = e.baseline_split, False, False, bs
  it = data.create(dc, seed=config.seed + 2, process_index=jax.process_index(),
                   process_count=jax.process_count())
  if it.batches_per_epoch * bs < n:
    raise ValueError(f"config.eval.baseline_split={e.baseline_split!r} has fewer than "
                     f"config.eval.num_samples={n} images in calls of {bs}")
  chunks = (next(it)["image"] for _ in range(-(-n // bs)))
  scores, stats = _score(config, chunks, n, bs, extract, ref, ref_kept)
  return {"spec": f"data:{e.baseline_split}", "method": "data", "steps": 0, "nfe": 0,
          "settings": {"split": e.baseline_split}, **scores, "time_s": 0.0, "compile_s": 0.0,
          "samples_per_s": None}, stats


# --------------------------------------------------------------------------
# Bits/dim.
# --------------------------------------------------------------------------


def bits_per_dim(config, apply_fn, process, params, rng, mesh=None) -> dict:
  """Mean bits/dim of ``eval.bpd_num`` images of ``eval.bpd_split`` (module doc).

  With a `mesh`, each batch is a global array split over its devices (each
  process reads its slice) and `params` are replicated on it.
  """
  e, d = config.eval, config.diffusion
  discrete = d.type == "discrete"
  dc = copy.deepcopy(config.data)
  dc.split, dc.random_flip, dc.dequantize = e.bpd_split, False, not discrete
  dc.batch_size = _batch(e.batch_size, e.bpd_num, mesh)
  it = data.create(dc, seed=config.seed + 1, process_index=jax.process_index(),
                   process_count=jax.process_count())
  shard = (lambda b: b) if mesh is None else (lambda b: placement.shard_batch(b, mesh, "jit"))
  levels = it.levels
  num_classes = config.model.num_classes

  @jax.jit
  def batch_bpd(params, x, y, key):  # params an argument: not baked into the program.
    net = lambda x_t, t: apply_fn(params, x_t, t, y if num_classes is not None else None)
    if discrete:
      eps_fn = parameterization.eps_fn_from_model(net, d.prediction, process)
      return likelihood.ddpm_vlb(eps_fn, process, x, key, num_bins=levels)["total"]
    score_fn = parameterization.score_fn_from_model(net, d.prediction, process)
    return likelihood.bits_per_dim(score_fn, process, x, key, num_bins=levels, method="rk45",
                                   divergence="hutchinson")

  values, done, c = [], 0, 0
  while done < e.bpd_num:
    batch = shard({k: v for k, v in next(it).items() if k in ("image", "label")})
    args = (params, batch["image"], batch["label"], jax.random.fold_in(rng, c))
    if c == 0:  # Compiled ahead; all processes compiled before the first collective.
      compiled = batch_bpd.lower(*args).compile()
      cluster.barrier("eval_bpd")
    values.append(placement.to_host(compiled(*args))[:e.bpd_num - done])
    done, c = done + len(values[-1]), c + 1
  values = np.concatenate(values)
  method = ("ddpm_vlb: DDPM variational bound (total), discretised Gaussian decoder on the "
            f"{levels}-level data, no dequantisation noise" if discrete else
            "probability_flow: bits_per_dim of uniformly dequantised data x = 2 (k + u) / K - 1 "
            f"(K = {levels}), Hutchinson divergence, rk45")
  return {"bits_per_dim": float(np.mean(values)), "std": float(np.std(values)),
          "num_images": int(done), "split": e.bpd_split, "num_bins": int(levels),
          "method": "ddpm_vlb" if discrete else "probability_flow_ode", "description": method}


# --------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------


def _check_workdir_config(config, workdir: str) -> None:
  """As `writers.check_config`, but the eval section may differ (it is not in config.json's run)."""
  writers.check_wandb_config(config)
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no config.json: train there first")
  with open(path) as f:
    old = json.load(f)
  new = writers.redact(json.loads(config.to_json()))
  changed = {k: v for k, v in writers.config_changes(old, new).items()
             if not k.startswith("eval.") and not any(
                 k.startswith(p) if p.endswith(".") else k == p for p in writers.RESUMABLE_KEYS)}
  if changed and not config.allow_config_change:
    lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
    raise ValueError(f"the config differs from {path} in keys that change what was trained:\n"
                     f"{lines}\npass --config.allow_config_change=True to evaluate anyway")


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)  # A killed eval never leaves half a file.


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


def evaluate(config, workdir: str) -> dict:
  """``--mode eval`` (module doc). Returns the results dict written to results.json."""
  e = config.eval
  specs = tuple(e.samplers) or (config.sample.method,)
  if len(set(specs)) != len(specs):
    raise ValueError(f"config.eval.samplers has repeated specs: {specs}")
  for spec in specs:  # Every error before any long compute.
    sampler_config(config, spec)
  for key in ("num_samples", "batch_size", "kept_features", "is_splits"):
    if e[key] < (2 if key == "kept_features" else 1):
      raise ValueError(f"config.eval.{key}={e[key]} is too small")
  if e.baseline_split not in ("",) + data.SPLITS:
    raise ValueError(f"config.eval.baseline_split={e.baseline_split!r} is unknown; valid: "
                     f"'' (no data row), {', '.join(data.SPLITS)}")
  if e.bpd and e.bpd_num < 1:
    raise ValueError(f"config.eval.bpd_num={e.bpd_num} must be >= 1 (or eval.bpd=False)")
  mesh = placement.make_mesh()  # Every device of every process shares each call.
  devices = mesh.devices.size
  if e.batch_size % devices:
    raise ValueError(f"config.eval.batch_size={e.batch_size} is not divisible by the "
                     f"{devices} devices that share every sampler call")
  if config.data.batch_size % jax.process_count():
    raise ValueError(f"config.data.batch_size={config.data.batch_size} (the reference "
                     f"statistics' read batch) is not divisible by the "
                     f"{jax.process_count()} processes")
  extract = make_extractor(e)
  _check_workdir_config(config, workdir)

  model = experiment.build_model(config)
  process = experiment.noise_process(config)
  create_fn, _ = experiment.state_fns(config, model)
  state_key, sample_key = experiment.keys(config)
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), None) as ckpt:
    step = config.sample.checkpoint_step
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first")
    state, _ = ckpt.restore(step, experiment.abstract_state(create_fn, state_key,
                                                            placement.replicated(mesh)))
  apply_fn = experiment.make_apply_fn(model, config, process)
  params = state.ema_params
  main = jax.process_index() == 0
  out_dir = os.path.join(workdir, "eval")
  rounds_dir = os.path.join(out_dir, "rounds")
  os.makedirs(rounds_dir, exist_ok=True)
  ident = {"step": int(step), "num_samples": e.num_samples, "features": _extractor_id(e)}

  ref, ref_kept = None, None
  rounds = []
  baseline = (f"data:{e.baseline_split}",) if e.baseline_split else ()
  for spec in baseline + specs:
    path = os.path.join(rounds_dir, spec_filename(spec) + ".json")
    row = None
    if os.path.exists(path):
      with open(path) as f:
        row = json.load(f)
    done = cluster.same_on_all_processes(
        row is not None and all(row.get(k) == v for k, v in ident.items()), path)
    if done:
      writers.echo(f"eval: skipping {spec} (done: {path})")
      rounds.append(row)
      continue
    if row is not None:
      writers.echo(f"eval: recomputing {spec}: {path} is of another step, N or extractor")
    if ref is None:
      ref, ref_kept = reference_stats(config, workdir, extract)
    if spec in baseline:
      writers.echo(f"eval: scoring {e.num_samples} {e.baseline_split} images (the data row)")
      row, stats = data_round(config, extract, ref, ref_kept, mesh)
    else:
      writers.echo(f"eval: sampling {e.num_samples} images with {spec}")
      row, stats = run_round(config, spec, apply_fn, process, params, sample_key, extract,
                             ref, ref_kept, mesh)
    row.update(ident)
    if main:
      np.savez(path[:-len(".json")] + "_stats.npz", **stats.to_arrays())
      _write_json(path, row)
    writers.echo(f"eval: {spec}: FID {row['fid']:.4f}, KID {row['kid']:.5f}, "
                 f"IS {row['inception_score']:.3f}, {row['time_s']:.2f}s")
    rounds.append(row)

  bpd = None
  if e.bpd:
    bpd_path = os.path.join(out_dir, "bpd.json")
    if os.path.exists(bpd_path):
      with open(bpd_path) as f:
        bpd = json.load(f)
    done = cluster.same_on_all_processes(
        bool(bpd) and bpd.get("step") == step and bpd.get("num_images") == e.bpd_num, bpd_path)
    if not done:
      writers.echo(f"eval: bits/dim on {e.bpd_num} {e.bpd_split} images")
      bpd = {**bits_per_dim(config, apply_fn, process, params,
                            jax.random.fold_in(sample_key, 0x62706400), mesh),
             "step": int(step)}
      if main:
        _write_json(bpd_path, bpd)
    else:
      writers.echo(f"eval: skipping bits/dim (done: {bpd_path})")

  results = {"step": int(step), "features": e.features, "extractor": _extractor_id(e),
             "num_samples": e.num_samples, "rounds": rounds, "bpd": bpd}
  if main:
    _write_json(os.path.join(out_dir, "results.json"), results)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
      f.write(results_markdown(results))
    hook = writers.WandbHook(config, enabled=True, workdir=workdir)
    row = {f"eval/{spec_filename(r['spec'])}/{k}": r[k] for r in rounds
           for k in ("fid", "kid", "inception_score", "time_s", "nfe")}
    if bpd:
      row["eval/bits_per_dim"] = bpd["bits_per_dim"]
    hook.log(int(step), row)
    hook.close()
  writers.echo(f"eval: wrote {os.path.join(out_dir, 'results.md')}")
  return results
