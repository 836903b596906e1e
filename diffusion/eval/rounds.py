"""One round of `--mode eval`: N images of one sampler (or of real data), scored."""
from __future__ import annotations

import copy
import dataclasses
import time
import zlib
from typing import Any, Callable

import jax
import numpy as np

from diffusion.data import iterator as data
from diffusion.dist import cluster
from diffusion.dist import placement
from diffusion.run import console
from diffusion.viz import images as visualize
from diffusion.eval import metrics
from diffusion.eval import entries as specs

# config.sample keys that say how many images, not how they are sampled.
_NOT_SETTINGS = ("num_samples", "batch_size", "grid_size", "gif_frames", "checkpoint_step")


def settings(section) -> dict:
  """The ``config.sample`` keys that say how a round's images are drawn (sampler options,
  guidance, labels, prompts): part of the round's identity (a re-run with other
  settings recomputes it)."""
  return {k: section[k] for k in sorted(section.keys()) if k not in _NOT_SETTINGS}


@dataclasses.dataclass(frozen=True)
class Reference:
  """What every round is scored against: the extractor ``images -> (features,
  logits)``, the reference `metrics.FeatureStats` and its kept feature vectors
  (None for published mu / sigma statistics: then KID and precision/recall are None)."""

  extract: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
  stats: Any
  kept: np.ndarray | None


def batch_size(config, n: int, mesh) -> int:
  """Images per call for `n` images: ``min(eval.batch_size, n)`` rounded up to a
  multiple of the mesh's device count (`modes.eval` checks batch_size is one)."""
  k = 1 if mesh is None else mesh.devices.size
  return -(-min(config.eval.batch_size, n) // k) * k


def extractor_input(images, quantize: bool) -> np.ndarray:
  """What the feature extractor sees: the images clipped to [-1, 1] and, with
  `quantize` (``eval.quantize``, the published protocol), rounded to the 256
  levels of the uint8 files FID is computed on elsewhere (ADM's evaluator,
  pytorch-fid on PNGs): ``to_uint8(x) / 127.5 - 1``."""
  x = np.clip(np.asarray(images, np.float32), -1.0, 1.0)
  if not quantize:
    return x
  return visualize.to_uint8(x).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def score(config, local_chunks, n: int, bs: int, ref: Reference,
          desc: str = "eval", labels=None, prompts=None, bins=None) -> tuple[dict, object]:
  """Metrics of `n` images that arrive as calls of `bs`: `local_chunks` yields
  this process's rows of each call (all of it with one process); features are
  extracted per process and gathered in order, the last call cut to `n`. A
  progress bar (`desc`, one step per call, with ETA) shows on process 0."""
  e = config.eval
  stats, kept, logits, shown = None, [], [], []
  calls = console.progress(local_chunks, desc, unit="call", total=-(-n // bs))
  for c, images in enumerate(calls):
    if prompts is not None:  # Text models: the samples are measured against their prompts.
      shown.append(placement.gather_rows(np.asarray(images, np.float32))[:n - c * bs])
    feats, lg = ref.extract(extractor_input(images, e.quantize))
    feats = placement.gather_rows(feats)[:n - c * bs]
    lg = placement.gather_rows(lg)[:n - c * bs]
    stats = (stats or metrics.FeatureStats(feats.shape[1])).update(feats)
    kept.append(feats[:max(0, e.kept_features - c * bs)])
    logits.append(np.asarray(lg, np.float32))
  kept, logits = np.concatenate(kept), np.concatenate(logits)
  is_mean, is_std = metrics.inception_score(logits, num_splits=min(e.is_splits, n))
  kid_mean = kid_std = precision = recall = None
  if ref.kept is not None:  # None: published mu / sigma, FID only.
    kid_mean, kid_std = metrics.kid(kept, ref.kept, num_subsets=e.kid_subsets,
                                     subset_size=e.kid_subset_size, seed=config.seed)
    k = min(len(kept), len(ref.kept))
    if k > 3:
      precision, recall = metrics.precision_recall(ref.kept[:k], kept[:k])
  extra = {}
  if labels is not None:  # Conditional samples: how often the classifier reads the asked label.
    asked = np.asarray(labels)[:n]
    hits = np.argmax(logits, -1) == asked
    extra = {"label_accuracy": float(hits.mean()),
             "label_accuracy_se": float(np.sqrt(hits.mean() * (1 - hits.mean()) / n))}
  if prompts is not None and bins is not None:
    from diffusion.data import captions  # pylint: disable=g-import-not-at-top
    agree = captions.agreement(list(prompts)[:n], np.concatenate(shown), bins,
                               predicted_labels=np.argmax(logits, -1))
    extra["prompt_agreement"] = {k: {kk: float(vv) for kk, vv in v.items()}
                                 for k, v in agree.items() if isinstance(v, dict)}
  return {"num_samples": n, "fid": metrics.fid(stats, ref.stats), "kid": kid_mean, **extra,
          "kid_std": kid_std, "inception_score": is_mean, "inception_score_std": is_std,
          "precision": precision, "recall": recall}, stats


def sampler_round(exp, entry: specs.Entry, params, ref: Reference, mesh=None):
  """Samples ``eval.num_samples`` with the sampler of `entry` and scores them;
  returns ``(row, stats)``.

  Chunk c has key ``fold_in(fold_in(sample_key, crc32(name)), c)``. With a
  `mesh` every sampler call is split over all its devices (`params` replicated
  on it); each process extracts the features of its own rows and the rows are
  gathered in order, so every process holds the same statistics.
  """
  e, cfg = exp.config.eval, entry.config
  n = e.num_samples
  bs = batch_size(exp.config, n, mesh)
  key = jax.random.fold_in(exp.sample_key, zlib.crc32(entry.name.encode()) & 0x7FFFFFFF)
  # Conditions in turn (not in blocks): every Inception Score split sees them all.
  fn = exp.sample_fn(cfg.sample, num_samples=bs, mesh=mesh,
                     cond_inputs=exp.cond(bs, cfg.sample, cycle=True))
  t0 = time.perf_counter()
  compiled = fn.lower(params, key).compile()
  compile_s = time.perf_counter() - t0
  cluster.barrier("eval_" + specs.spec_filename(entry.name))  # All compiled before a collective.
  timing = {"sample_s": 0.0}

  def chunks():
    for c in range(-(-n // bs)):
      t0 = time.perf_counter()
      x = compiled(params, jax.random.fold_in(key, c)).block_until_ready()
      timing["sample_s"] += time.perf_counter() - t0
      yield placement.local_rows(x)

  labels = None
  if exp.config.model.num_classes is not None and exp.config.eval.features == "classifier":
    labels = np.tile(np.asarray(exp.labels_of(bs, cfg.sample, cycle=True)), -(-n // bs))
  prompts = None
  if exp.text_bins is not None and exp.config.eval.features == "classifier":
    prompts = exp.prompts_of(bs, cfg.sample, cycle=True) * (-(-n // bs))
  scores, stats = score(exp.config, chunks(), n, bs, ref, desc=f"eval {entry.name}",
                        labels=labels, prompts=prompts, bins=exp.text_bins)
  s, sample_s = cfg.sample, timing["sample_s"]
  row = {"spec": entry.name, "method": s.method, "steps": specs.sampler_steps(cfg),
         "nfe": specs.nfe(cfg),
         "settings": settings(s),
         **scores, "time_s": sample_s, "compile_s": compile_s,
         "samples_per_s": n / sample_s if sample_s > 0 else None}
  return row, stats


def data_round(config, ref: Reference, mesh=None):
  """The row of ``eval.num_samples`` real images of ``eval.baseline_split``
  scored like samples: the floor of each metric at this N (FID is biased
  upwards at small N; a model cannot be told from data below this row)."""
  e = config.eval
  n, bs = e.num_samples, batch_size(config, e.num_samples, mesh)
  dc = copy.deepcopy(config.data)
  dc.split, dc.dequantize, dc.random_flip, dc.batch_size = e.baseline_split, False, False, bs
  it = data.create(dc, seed=config.seed + 2, process_index=jax.process_index(),
                   process_count=jax.process_count())
  if it.batches_per_epoch * bs < n:
    raise ValueError(f"config.eval.baseline_split={e.baseline_split!r} has fewer than "
                     f"config.eval.num_samples={n} images in calls of {bs}")
  chunks = (next(it)["image"] for _ in range(-(-n // bs)))
  scores, stats = score(config, chunks, n, bs, ref, desc=f"eval data:{e.baseline_split}")
  return {"spec": f"data:{e.baseline_split}", "method": "data", "steps": 0, "nfe": 0,
          "settings": {"split": e.baseline_split}, **scores, "time_s": 0.0, "compile_s": 0.0,
          "samples_per_s": None}, stats
