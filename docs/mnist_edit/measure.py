"""Issue 17's MNIST result: the inputs of `run.sh`, then the measurements of its outputs.

    DIFFUSION_DATA=... python docs/mnist_edit/measure.py inputs DIR
    bash docs/mnist_edit/run.sh DIR          # trains DIR/mnist08 and DIR/ae08, edits into DIR/mnist08/edit/
    DIFFUSION_DATA=... python docs/mnist_edit/measure.py report DIR

``inputs`` writes, from the MNIST test split (``$DIFFUSION_DATA/mnist``), the digits 0-8
(the model of `run.sh` was trained on the training digits 0-8 only; 9 is held out):

- ``inpaint.npz``: the first 256 test digits 0-8 with their labels;
- ``holdout.npz``: 500 further test digits 0-8 (anomaly 0) and the first 500 test 9s (1);
- ``corrupt.npz``: the same 500 normal digits (0) and 500 others corrupted (1): 250 with
  a white 6x6 square at a random place, 250 with Gaussian noise of std 0.3 (in [-1, 1]
  units) added and clipped (key ``corruption``: 0 none, 1 square, 2 noise);
- ``normal.npz``: 500 further test digits 0-8, the normal validation split of the
  threshold;
- ``holdout_small.npz``: 24 + 24 of holdout.npz for bits/dim (1000 network calls each);
- ``img2img.npz``: 8 of the squared and 8 of the noised digits (SDEdit's picture);
- ``denoise_noisy.npz``: the inpainting digits plus noise of std 0.4 (floats, not
  clipped), to denoise with the level estimated.

``report`` reads the edit folders `run.sh` wrote and writes ``docs/mnist_edit/results.json``:
the project's MNIST classifier's accuracy on the completions of each inpainting method
against the true labels (and on the half-masked inputs as a floor, on the full inputs as
a ceiling); the AUROC of each anomaly score next to two baselines computed here, the
distance to the nearest training digit 0-8 in pixels and an autoencoder's (trained on
the digits 0-8, ``DIR/ae08``) reconstruction error.
"""
from __future__ import annotations

import glob
import gzip
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _mnist(split: str):
  from diffusion.data import prepare  # pylint: disable=g-import-not-at-top
  d = prepare.dataset_dir("mnist")
  pre = "train" if split == "train" else "t10k"
  read = lambda name, off: np.frombuffer(gzip.open(os.path.join(d, name)).read(), np.uint8,
                                         offset=off)
  x = read(f"{pre}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)
  y = read(f"{pre}-labels-idx1-ubyte.gz", 8).astype(np.int64)
  return x, y


def inputs(out: str) -> None:
  os.makedirs(out, exist_ok=True)
  x, y = _mnist("test")
  normal_idx, nine_idx = np.flatnonzero(y != 9), np.flatnonzero(y == 9)
  inp, hold, val, cor = (normal_idx[:256], normal_idx[256:756], normal_idx[756:1256],
                         normal_idx[1256:1756])
  np.savez(os.path.join(out, "inpaint.npz"), images=x[inp], label=y[inp])
  nines = nine_idx[:500]
  np.savez(os.path.join(out, "holdout.npz"), images=np.concatenate([x[hold], x[nines]]),
           label=np.concatenate([y[hold], y[nines]]), anomaly=np.r_[np.zeros(500), np.ones(500)])
  small = np.r_[np.arange(24), 500 + np.arange(24)]
  with np.load(os.path.join(out, "holdout.npz")) as z:
    np.savez(os.path.join(out, "holdout_small.npz"), images=z["images"][small],
             anomaly=z["anomaly"][small])
  np.savez(os.path.join(out, "normal.npz"), images=x[val], label=y[val])
  rng = np.random.default_rng(17)
  bad = x[cor].astype(np.float32) / 127.5 - 1
  for i in range(250):  # A white 6x6 square.
    r, c = rng.integers(0, 23, size=2)
    bad[i, r:r + 6, c:c + 6] = 1.0
  bad[250:] = np.clip(bad[250:] + 0.3 * rng.standard_normal(bad[250:].shape), -1, 1)
  bad_u8 = np.round((bad + 1) * 127.5).astype(np.uint8)
  np.savez(os.path.join(out, "corrupt.npz"), images=np.concatenate([x[hold], bad_u8]),
           anomaly=np.r_[np.zeros(500), np.ones(500)],
           corruption=np.r_[np.zeros(500), np.ones(250), 2 * np.ones(250)].astype(np.int64))
  # SDEdit's picture: 8 squared and 8 noised digits; denoising with the level unknown:
  # the inpainting digits with noise of std 0.4 (not clipped), as floats in [-1, 1].
  with np.load(os.path.join(out, "corrupt.npz")) as z:
    np.savez(os.path.join(out, "img2img.npz"), images=z["images"][np.r_[500:508, 750:758]])
  noisy = x[inp].astype(np.float32) / 127.5 - 1 + 0.4 * rng.standard_normal((256, 28, 28, 1))
  np.savez(os.path.join(out, "denoise_noisy.npz"), images=noisy.astype(np.float32),
           label=y[inp])
  print(f"wrote the inputs to {out}")


def _edit_dir(out: str, name: str) -> str:
  path = os.path.join(out, "mnist08", "edit", name)
  if not os.path.isdir(path):
    raise SystemExit(f"missing {path}: run docs/mnist_edit/run.sh {out} first")
  return path


def _classifier():
  from configs import mnist_ddpm_cpu  # pylint: disable=g-import-not-at-top
  from diffusion.eval import classifier, features  # pylint: disable=g-import-not-at-top
  c = mnist_ddpm_cpu.get_config()  # All ten digits, the project's classifier.
  c.eval.features = "classifier"
  features.resolve_defaults(c)
  model, params, info = classifier.load(c.eval.classifier_path)
  return lambda images: np.argmax(classifier.predict(model, params, images)[1], axis=1), info


def _ae_error(ae_dir: str, images: np.ndarray) -> np.ndarray:
  """Per-image squared error of D(E(x)) of the autoencoder in `ae_dir`."""
  from configs import mnist_ddpm_cpu  # pylint: disable=g-import-not-at-top
  from diffusion import latent  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  c = mnist_ddpm_cpu.get_config()
  c.latent.autoencoder_workdir = ae_dir
  codec = latent.load_codec(c)
  fn = jax.jit(lambda x: codec.decode(codec.encode(x)))
  x = images.astype(np.float32) / 127.5 - 1 if images.dtype == np.uint8 else images
  rec = np.concatenate([np.asarray(fn(x[i:i + 250])) for i in range(0, len(x), 250)])
  return np.mean(np.square(rec - x).reshape(len(x), -1), axis=1)


def _nn_distance(images: np.ndarray, train: np.ndarray) -> np.ndarray:
  """Euclidean distance in [-1, 1] pixels to the nearest training image."""
  q = images.reshape(len(images), -1).astype(np.float32) / 127.5 - 1
  t = train.reshape(len(train), -1).astype(np.float32) / 127.5 - 1
  tn = np.sum(t * t, axis=1)
  best = np.full(len(q), np.inf, np.float32)
  for lo in range(0, len(t), 5000):
    d = tn[None, lo:lo + 5000] - 2 * q @ t[lo:lo + 5000].T
    best = np.minimum(best, d.min(axis=1))
  return np.sqrt(np.maximum(best + np.sum(q * q, axis=1), 0))


def report(out: str) -> None:
  from diffusion.eval import anomaly  # pylint: disable=g-import-not-at-top
  predict, cinfo = _classifier()
  res = {"classifier_test_accuracy": cinfo.get("test_accuracy"), "inpainting": {},
         "anomaly": {}}
  # Inpainting: every run named inpaint_<method> (run.sh).
  with np.load(os.path.join(out, "inpaint.npz")) as z:
    labels = z["label"]
  for d in sorted(glob.glob(os.path.join(out, "mnist08", "edit", "inpaint_*", "summary.json"))):
    d = os.path.dirname(d)  # Finished runs only.
    r = np.load(os.path.join(d, "results.npz"))
    s = json.load(open(os.path.join(d, "summary.json")))
    n = len(r["results"])
    acc = float(np.mean(predict(r["results"]) == labels[:n]))
    name = os.path.basename(d)[len("inpaint_"):]
    res["inpainting"][name] = {
        "n": n, "accuracy": acc, "se": float(np.sqrt(acc * (1 - acc) / n)),
        "seconds": s["seconds"], "sampler": s["sampler"], "options": s["options"],
        "method": s["method"]}
    first = int(min(32, n))  # The RePaint runs' images: a paired comparison on them.
    res["inpainting"][name][f"accuracy_first{first}"] = float(
        np.mean(predict(r["results"][:first]) == labels[:first]))
    if n > res["inpainting"].get("masked_input", {}).get("n", 0):
      masked = np.where(r["masks"] > 0, r["images"], -1.0)  # The generated half black.
      for key, x in (("masked_input", masked), ("full_input", r["images"])):
        hit = predict(x) == labels[:n]
        a = float(np.mean(hit))
        res["inpainting"][key] = {"n": n, "accuracy": a, "se": float(np.sqrt(a * (1 - a) / n)),
                                  "accuracy_first32": float(np.mean(hit[:32]))}
  train_x, train_y = _mnist("train")
  train_x = train_x[train_y != 9]
  ae_dir = os.path.join(out, "ae08")
  for name in ("holdout", "corrupt", "holdout_small"):
    d = os.path.join(out, "mnist08", "edit", f"anomaly_{name}")
    if not os.path.isfile(os.path.join(d, "summary.json")):
      continue  # Not run (or not finished) yet.
    s = json.load(open(os.path.join(d, "summary.json")))
    r = np.load(os.path.join(d, "results.npz"))
    with np.load(os.path.join(out, f"{name}.npz")) as z:
      raw, lab = z["images"], z["anomaly"].astype(int)
      corruption = z["corruption"] if "corruption" in z.files else None
    row = {"n_normal": int((lab == 0).sum()), "n_anomalous": int((lab == 1).sum()),
           "seconds": s["seconds"]}
    scores = {k[len("score_"):]: r[k] for k in r.files if k.startswith("score_")}
    if name != "holdout_small":
      scores["pixel_nearest_neighbour"] = _nn_distance(raw, train_x)
      if os.path.isdir(ae_dir):
        scores["autoencoder_error"] = _ae_error(ae_dir, raw)
    for k, v in scores.items():
      row[f"auroc_{k}"] = anomaly.auroc(v, lab)
      row[f"auprc_{k}"] = anomaly.auprc(v, lab)
      if corruption is not None:
        for c, cname in ((1, "square"), (2, "noise")):
          keep = (corruption == 0) | (corruption == c)
          row[f"auroc_{k}_{cname}"] = anomaly.auroc(v[keep], lab[keep])
    for k in s.get("thresholds", {}):
      row[f"tpr_{k}"], row[f"fpr_{k}"] = s.get(f"tpr_{k}"), s.get(f"fpr_{k}")
    # AUROC's standard error (Hanley & McNeil 1982) at the largest AUROC here.
    a = max(v for k, v in row.items() if k.startswith("auroc_"))
    n1, n0 = row["n_anomalous"], row["n_normal"]
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    row["auroc_se_at_best"] = float(np.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a)
                                             + (n0 - 1) * (q2 - a * a)) / (n1 * n0)))
    res["anomaly"][name] = row
  # Denoising: PSNR against the clean digits (the estimated-level run does not know them).
  res["denoise"] = {}
  with np.load(os.path.join(out, "inpaint.npz")) as z:
    clean = z["images"].astype(np.float32) / 127.5 - 1
  psnr = lambda a, b: float(np.mean(10 * np.log10(4 / np.mean(np.square(a - b).reshape(
      len(a), -1), axis=1))))
  for name in ("tweedie", "reverse", "estimated"):
    d = os.path.join(out, "mnist08", "edit", f"denoise_{name}")
    if not os.path.isfile(os.path.join(d, "summary.json")):
      continue
    r = np.load(os.path.join(d, "results.npz"))
    n = len(r["results"])
    res["denoise"][name] = {"n": n, "sigma_true": 0.4, "sigma_mean": float(np.mean(r["sigma"])),
                            "psnr_noisy_db": psnr(r["noisy"], clean[:n]),
                            "psnr_denoised_db": psnr(r["results"], clean[:n])}
  path = os.path.join(HERE, "results.json")
  with open(path, "w") as f:
    json.dump(res, f, indent=1)
  print(json.dumps(res, indent=1))
  print(f"wrote {path}")


if __name__ == "__main__":
  if len(sys.argv) != 3 or sys.argv[1] not in ("inputs", "report"):
    raise SystemExit("usage: measure.py inputs|report DIR")
  (inputs if sys.argv[1] == "inputs" else report)(sys.argv[2])
