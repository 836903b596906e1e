"""Feature extractors of `--mode eval` and the cached reference statistics."""
from __future__ import annotations

import copy
import os

from etils import epath
import jax
import numpy as np

from diffusion import experiment
from diffusion.data import iterator as data
from diffusion.dist import cluster
from diffusion.dist import placement
from diffusion.eval import classifier as classify
from diffusion.eval import metrics
from diffusion.run import console
from diffusion.run.workdir import Workdir, is_local, load_npz, save_npz

FEATURES = experiment.CHOICES["eval.features"]  # ("classifier", "inception")


INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                 "pt_inception-2015-12-05-6726825d.pth")


def default_inception_weights() -> str:
  """Where `make_extractor` looks when ``eval.inception_weights`` is "":
  ``<data_home>/inception/inception_fid.npz`` (`data.prepare.data_home`)."""
  from diffusion.data import prepare  # pylint: disable=g-import-not-at-top
  return os.path.join(prepare.data_home(), "inception", "inception_fid.npz")


def classifier_cache(config) -> str:
  """The folder of the project's classifier for ``config.data``'s dataset:
  ``<data_home>/classifiers/<name>-<hash>``, the hash of what defines the images
  (source, name, folder, size, channels, crop) and of ``eval.classifier_steps``,
  so every run of that dataset finds the same one."""
  import hashlib  # pylint: disable=g-import-not-at-top
  from diffusion.data import prepare  # pylint: disable=g-import-not-at-top
  d = config.data
  key = "|".join(str(v) for v in (d.source, d.name, os.path.abspath(d.data_dir) if d.data_dir
                                  else "", d.image_size, d.channels, d.crop,
                                  config.eval.classifier_steps))
  key += f"|pad={d.pad}" if d.get("pad", 0) else ""  # (Keys of unpadded data as before.)
  digest = hashlib.sha256(key.encode()).hexdigest()[:12]
  return os.path.join(prepare.data_home(), "classifiers", f"{d.name or d.source}-{digest}")


def resolve_defaults(config) -> None:
  """Fills the extractor paths left "" in ``config.eval`` (in place).

  ``features="classifier"`` without ``classifier_path``: the project's
  classifier of this dataset (`classifier_cache`), trained once on its
  training split (``eval.classifier_steps`` Adam steps, progress shown; 15%
  held out for the accuracy it reports) and cached for every later run.
  ``features="inception"`` without ``inception_weights``:
  `default_inception_weights` (make_extractor says how to put them there).
  """
  e = config.eval
  if e.features == "inception" and not e.inception_weights:
    e.inception_weights = default_inception_weights()
  if e.features != "classifier" or e.classifier_path:
    return
  path = classifier_cache(config)
  if os.path.exists(os.path.join(path, "classifier.json")):
    console.echo(f"eval: the project's classifier of {config.data.name or config.data.source} "
                 f"(cached: {path})")
  else:
    console.echo(f"eval: no eval.classifier_path: training the project's classifier on "
                 f"{config.data.name or config.data.source} once ({e.classifier_steps} steps), "
                 f"cached in {path} for every run of this dataset")
    info = classify.train_and_save(config.data, path, steps=e.classifier_steps,
                                   keep_existing=True)  # Another eval may finish first.
    console.echo(f"eval: classifier accuracy {info['test_accuracy']:.4f} on "
                 f"{info['num_test']} held-out training images")
  e.classifier_path = path


def make_extractor(e):
  """``fn(images [N, H, W, C]) -> (features [N, D], logits [N, K])`` of ``eval.features``."""
  if e.features not in FEATURES:
    raise ValueError(f"config.eval.features={e.features!r} is unknown; valid: {', '.join(FEATURES)}")
  if e.features == "classifier":
    path = e.classifier_path
    if not path or not os.path.exists(os.path.join(path, "classifier.json")):
      raise FileNotFoundError(
          f"config.eval.classifier_path={path!r} holds no classifier (classifier.json): train "
          "one with `python -m diffusion.classify` (in code: diffusion.eval.classifier as classify: classify.train, then classify.save)")
    model, params, _ = classify.load(path)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, method=type(model).features_and_logits))
    return _padded_batches(lambda x: apply(params, x), e.batch_size)
  path = e.inception_weights
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
        f"config.eval.inception_weights={path!r} does not exist: download pytorch-fid's "
        f"weights ({INCEPTION_URL}) and convert them with `python -m diffusion.models.inception "
        f"--convert pt_inception-2015-12-05-6726825d.pth --out {default_inception_weights()}` "
        "(found there without setting the key), or use eval.features=classifier for "
        "MNIST-like data")
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


def extractor_id(e) -> str:
  path = e.classifier_path if e.features == "classifier" else e.inception_weights
  return f"{e.features}:{os.path.abspath(path)}"


def mu_sigma_path(path) -> epath.Path:
  """``reference_x.npz`` -> ``reference_x.mu_sigma.npz``: the pytorch-fid layout."""
  path = epath.Path(path)
  return path.with_name(path.name[:-len(".npz")] + ".mu_sigma.npz")


def shared_reference_path(config) -> str:
  """Where the default reference statistics are shared by every workdir of a dataset
  (a study's runs compute them once): ``<data_home>/reference/<name>-<hash>.npz``,
  the hash of what they depend on: the data (source, name, folder, size, channels,
  crop), the split, the image count, the kept features, the seed (the reading
  order) and the extractor, its weights' file included (a retrained classifier at
  the same path is another extractor)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  from diffusion.data import prepare  # pylint: disable=g-import-not-at-top
  d, e = config.data, config.eval
  weights = (os.path.join(e.classifier_path, "classifier.json") if e.features == "classifier"
             else e.inception_weights)
  stamp = ""
  if weights and os.path.isfile(weights):
    st = os.stat(weights)
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
  key = "|".join(str(v) for v in (
      d.source, d.name, os.path.abspath(d.data_dir) if d.data_dir else "", d.image_size,
      d.channels, d.crop, e.reference_split, e.reference_num, e.kept_features, config.seed,
      extractor_id(e), stamp))
  key += f"|pad={d.pad}" if d.get("pad", 0) else ""
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return os.path.join(prepare.data_home(), "reference",
                      f"{d.name or d.source}-{e.features}-{e.reference_split}-{digest}.npz")


def _share(src, dst) -> None:
  """Copies the statistics `src` (and its mu / sigma file) to `dst` through a
  temporary name and a rename, so a reader sees all of a file or none of it."""
  import shutil  # pylint: disable=g-import-not-at-top
  import uuid  # pylint: disable=g-import-not-at-top
  for a, b in ((src, dst), (mu_sigma_path(src), mu_sigma_path(dst))):
    a, b = os.fspath(a), os.fspath(b)
    os.makedirs(os.path.dirname(b), exist_ok=True)
    tmp = f"{b}.partial-{uuid.uuid4().hex[:8]}"
    shutil.copyfile(a, tmp)
    os.replace(tmp, b)


def reference_stats(config, workdir: str, extract):
  """``(FeatureStats, kept features)`` of the reference split; cached (see module doc).

  With ``eval.reference_stats`` unset, the workdir's ``eval/reference_*.npz`` is used
  when present; otherwise a copy of the dataset's shared statistics
  (`shared_reference_path`) when another workdir computed them; otherwise they are
  computed, written to the workdir and shared (a single process only; the processes
  of a multi-host run compute their workdir's own)."""
  e = config.eval
  path = (epath.Path(e.reference_stats) if e.reference_stats
          else Workdir(workdir).reference_stats(e.features, e.reference_split))
  # One process only: the hosts of a pod may not share a data_home, and a file one of
  # them holds but not the others would split their paths.
  shared = (shared_reference_path(config) if not e.reference_stats and is_local(workdir)
            and jax.process_count() == 1 else None)
  if shared is not None and not path.exists() and os.path.exists(shared):
    _share(shared, path)
    console.echo(f"reference statistics: the dataset's shared ones ({shared}), copied to {path}")
  if cluster.same_on_all_processes(path.exists(), path):
    arrays = load_npz(path)
    if metrics.is_mu_sigma(arrays):  # Published statistics: FID only (no kept features).
      console.echo(f"reference statistics: mu / sigma of {path} (they must come from the "
                   f"same extractor, {e.features}; KID and precision/recall need feature "
                   "vectors and are left out)")
      return metrics.FeatureStats.from_mu_sigma(arrays["mu"], arrays["sigma"]), None
    if str(arrays["extractor"]) != extractor_id(e):
      raise ValueError(f"{path} holds statistics of {arrays['extractor']}, not of "
                       f"{extractor_id(e)}: delete it or set config.eval.reference_stats")
    return metrics.FeatureStats.from_arrays(arrays), arrays["features"]
  dc = copy.deepcopy(config.data)
  dc.split, dc.dequantize, dc.random_flip = e.reference_split, False, False
  # Each process reads its slice of every global batch and extracts its
  # features; the gathered rows are the global batch in order.
  it = data.create(dc, seed=config.seed, process_index=jax.process_index(),
                   process_count=jax.process_count())
  total = len(it.images)  # Every image: the last partial batch too (`every_example`).
  n = min(e.reference_num, total) if e.reference_num > 0 else total
  stats, kept, done = None, [], 0
  bar = console.progress(None, "reference statistics", unit="batch", total=-(-n // dc.batch_size))
  for batch in it.every_example(n):
    bar.update(1)
    feats, _ = extract(batch["image"])
    feats = placement.gather_rows(feats)[:n - done]
    stats = (stats or metrics.FeatureStats(feats.shape[1])).update(feats)
    kept.append(feats[:max(0, e.kept_features - done)])
    done += len(feats)
  bar.close()
  kept = np.concatenate(kept)
  if jax.process_index() == 0:
    save_npz(path, **stats.to_arrays(), features=kept, extractor=extractor_id(e))
    save_npz(mu_sigma_path(path), **stats.to_mu_sigma())
    if shared is not None and is_local(path):
      _share(path, shared)
  console.echo(f"reference statistics of {n} {e.reference_split} images -> {path} (and "
               f"mu / sigma for other FID tools: {mu_sigma_path(path)})")
  return stats, kept
