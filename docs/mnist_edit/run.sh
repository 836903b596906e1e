#!/usr/bin/env bash
# Issue 17's MNIST result (README "Editing: inpainting, SDEdit, inversion, denoising,
# anomaly detection"): a model of the training digits 0-8 (9 held out), an autoencoder of
# the same digits (a baseline), and every --mode edit run that docs/mnist_edit/measure.py
# reads. On the 2-core CPU of benchmarks/README.md: ~23 min for the model, ~8 for the
# autoencoder, ~20 for the edits. Needs $DIFFUSION_DATA/mnist and `measure.py inputs DIR`.
set -euo pipefail
DIR=${1:?usage: run.sh DIR}
PY=${PYTHON:-python}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
TRAIN="$DIR/mnist08_train.npz"
[ -f "$TRAIN" ] || $PY - "$TRAIN" <<'PYEOF'
import gzip, os, sys
import numpy as np
from diffusion.data import prepare
d = prepare.dataset_dir("mnist")
x = np.frombuffer(gzip.open(os.path.join(d, "train-images-idx3-ubyte.gz")).read(), np.uint8, offset=16)
y = np.frombuffer(gzip.open(os.path.join(d, "train-labels-idx1-ubyte.gz")).read(), np.uint8, offset=8)
keep = y != 9
np.savez(sys.argv[1], image=x.reshape(-1, 28, 28, 1)[keep], label=y[keep].astype(np.int64))
PYEOF
MODEL=(--config configs/mnist_ddpm_cpu.py:train_steps=2000 --workdir "$DIR/mnist08"
       --config.data.data_dir="$TRAIN" --config.optim.decay_steps=2000
       --config.train.sample_every=2000)
$PY -m diffusion.main "${MODEL[@]}"
$PY -m diffusion.main --config configs/mnist_autoencoder.py:train_steps=1500 --workdir "$DIR/ae08" \
  --config.data.data_dir="$TRAIN" --config.optim.decay_steps=1500 \
  --config.autoencoder.latent_channels=1 --config.autoencoder.eval_split=train \
  --config.train.ckpt_every=1500 --config.train.sample_every=1500
EDIT=("${MODEL[@]}" --mode edit --config.sample.method=ddim --config.sample.num_steps=50)
edit() { $PY -m diffusion.main "${EDIT[@]}" "$@"; }
# Inpainting the bottom half of test digits 0-8.
edit --config.edit.task=inpaint --config.edit.name=inpaint_replace_ddim50 --config.edit.input="$DIR/inpaint.npz"
edit --config.edit.task=inpaint --config.edit.name=inpaint_replace_ddim50_eta1 --config.sample.eta=1.0 --config.edit.input="$DIR/inpaint.npz"
edit --config.edit.task=inpaint --config.edit.name=inpaint_repaint_r1 --config.edit.inpaint_method=repaint \
  --config.edit.jump_n_sample=1 --config.edit.num=32 --config.edit.input="$DIR/inpaint.npz"
edit --config.edit.task=inpaint --config.edit.name=inpaint_repaint_j10_r2 --config.edit.inpaint_method=repaint \
  --config.edit.jump_length=10 --config.edit.jump_n_sample=2 --config.edit.num=32 --config.edit.input="$DIR/inpaint.npz"
# Anomaly scores: held-out 9s, then corrupted digits; the threshold from normal.npz.
edit --config.edit.task=anomaly --config.edit.name=anomaly_holdout --config.edit.input="$DIR/holdout.npz" \
  --config.edit.normal="$DIR/normal.npz" --config.edit.batch_size=250
edit --config.edit.task=anomaly --config.edit.name=anomaly_corrupt --config.edit.input="$DIR/corrupt.npz" \
  --config.edit.normal="$DIR/normal.npz" --config.edit.batch_size=250
# The pictures of the README (16 images each).
edit --config.edit.task=img2img --config.edit.name=img2img_s05 --config.edit.strength=0.5 --config.edit.input="$DIR/img2img.npz"
edit --config.edit.task=invert --config.edit.name=invert --config.edit.num=16 --config.edit.input="$DIR/inpaint.npz"
edit --config.edit.task=denoise --config.edit.name=denoise_tweedie --config.edit.sigma=0.4 --config.edit.add_noise=True --config.edit.num=256 --config.edit.input="$DIR/inpaint.npz"
edit --config.edit.task=denoise --config.edit.name=denoise_reverse --config.edit.sigma=0.4 --config.edit.add_noise=True \
  --config.edit.denoise_method=reverse --config.edit.num=256 --config.edit.input="$DIR/inpaint.npz"
edit --config.edit.task=denoise --config.edit.name=denoise_estimated --config.edit.num=256 --config.edit.input="$DIR/denoise_noisy.npz"
# Bits/dim (DDPM's bound: 1000 network calls per image) on 24 + 24 images.
edit --config.edit.task=anomaly --config.edit.name=anomaly_holdout_small --config.edit.scores=bpd \
  --config.edit.input="$DIR/holdout_small.npz" --config.edit.batch_size=48
