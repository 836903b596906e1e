"""How well the MNIST autoencoder keeps the caption attributes, and what the latent text
model's samples measure: writes docs/mnist_latent/attributes.json.

    DIFFUSION_DATA=... python docs/mnist_latent/measure_attributes.py \\
        --autoencoder workdir/mnist_ae --text workdir/mnist_latent/text \\
        [--sweep workdir/mnist_latent/samples/final_..._guidance_sweep-....npz]

1. The first 1024 MNIST test images and their reconstructions D(E(x)) are measured by
   `data.captions.measure` and binned by the text model's training tertiles
   (``--text``: its workdir's ``text/bins.json``): the fraction of images whose
   thickness / slant / size word the reconstruction keeps, and the attributes' means.
2. With ``--sweep`` (a `--mode sample --config.sample.guidance_sweep` npz), the mean
   measured thickness of the samples of each prompt at each guidance weight.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import mnist_latent_text  # noqa: E402
from diffusion import latent  # noqa: E402
from diffusion.data import captions as caps  # noqa: E402
from diffusion.data import iterator as data  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--autoencoder", required=True)
  p.add_argument("--text", required=True, help="a text model's text/ folder (bins.json)")
  p.add_argument("--sweep", default="")
  p.add_argument("--num", type=int, default=1024)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                              "attributes.json"))
  a = p.parse_args(argv)
  cfg = mnist_latent_text.get_config()
  cfg.latent.autoencoder_workdir = a.autoencoder
  codec = latent.load_codec(cfg)
  d = cfg.data.copy_and_resolve_references()
  d.split = "test"
  x = latent.images_of(data.create(d, seed=0), a.num)
  rec = latent.batched(jax.jit(lambda v: codec.decode(codec.encode(v))), x, 256)
  with open(os.path.join(a.text, "bins.json")) as f:
    bins = caps.AttributeBins.from_dict(json.load(f))
  before, after = caps.measure(np.clip(x, -1, 1)), caps.measure(np.clip(np.asarray(rec), -1, 1))
  w0, w1 = bins.words(before), bins.words(after)
  out = {"autoencoder": a.autoencoder, "num_test_images": len(x), "kept": {}, "mean": {}}
  for k in caps.ATTRIBUTES:
    out["kept"][k] = float(np.mean([p[k] == q[k] for p, q in zip(w0, w1)]))
    out["mean"][k] = {"images": float(before[k].mean()), "reconstructions": float(after[k].mean())}
  if a.sweep:
    with np.load(a.sweep) as z:
      images, weights = z["images"], z["weights"]
      prompts = [str(s) for s in z["conditions"]]
    per_row = images.shape[1] // len(prompts)
    out["sweep"] = {"file": os.path.basename(a.sweep), "thickness_bins": list(bins.thickness),
                    "mean_thickness": {}}
    for wi, w in enumerate(weights):
      t = caps.measure(np.clip(images[wi], -1, 1))["thickness"]
      out["sweep"]["mean_thickness"][f"{float(w):g}"] = {
          pr: float(np.mean(t[i * per_row:(i + 1) * per_row])) for i, pr in enumerate(prompts)}
  with open(a.out, "w") as f:
    json.dump(out, f, indent=2)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
