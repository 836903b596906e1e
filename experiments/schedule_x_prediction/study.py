"""Issue 14, study 1: noise schedule (linear, cosine) x prediction (eps, v, x0).

`configs/digits_ddpm.py` as the quick start trains it (1,000 steps of batch 128 on
the 8x8 digits, cosine lr decay, EMA), one seed, each model scored by DDIM with 20
and 100 deterministic steps and 50 ancestral-like ones (eta = 1), 512 samples per
row, plus DDPM's bits/dim bound on 256 digits. Digits have one split, so the data
row scores 512 real training digits (the floor of each metric at this N).

    python -m diffusion.sweep experiments/schedule_x_prediction
    python -m diffusion.compare experiments/schedule_x_prediction
"""


def get_study():
  return dict(
      description=__doc__.split("\n\n")[0],
      base="configs/digits_ddpm.py",
      overrides={"wandb.mode": "offline", "train.sample_every": 1000},
      grid={"diffusion.schedule": ["linear", "cosine"],
            "diffusion.prediction": ["eps", "v", "x0"]},
      eval_specs=["ddim:steps=20,eta=0", "ddim:steps=100,eta=0", "ddim:steps=50,eta=1"],
      eval_overrides={"eval.num_samples": 512, "eval.batch_size": 256, "eval.bpd_num": 256,
                      "eval.baseline_split": "train"})
