"""Issue 14, study 3: loss weighting, uniform (DDPM's simple loss) vs min-SNR-gamma 5.

Min-SNR weighting (Hang et al. 2023) caps each timestep's loss weight at
min(SNR, gamma) / SNR for eps prediction. `configs/digits_ddpm.py` (cosine schedule,
eps, 1,000 steps of batch 128) at two seeds per weighting, so that the report's
"± std" is the seed-to-seed spread; scored by DDIM 20 / 100 steps and DDIM eta = 1
at 50 steps, 512 samples per row, DDPM's bits/dim bound on 256 digits.

    python -m diffusion.sweep experiments/min_snr
    python -m diffusion.compare experiments/min_snr
"""


def get_study():
  return dict(
      description=__doc__.split("\n\n")[0],
      base="configs/digits_ddpm.py",
      overrides={"wandb.mode": "offline", "train.sample_every": 1000},
      grid={"diffusion.weighting": ["none", "min_snr"]},
      seeds=[0, 1],
      eval_specs=["ddim:steps=20,eta=0", "ddim:steps=100,eta=0", "ddim:steps=50,eta=1"],
      eval_overrides={"eval.num_samples": 512, "eval.batch_size": 256, "eval.bpd_num": 256,
                      "eval.baseline_split": "train"})
