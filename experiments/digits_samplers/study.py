"""Issue 14, study 2: every sampler of the library, at several step counts, on one model.

`configs/digits_ddpm.py` with the linear schedule (so that the continuous-time
samplers, which run a discrete model through the VP SDE of its betas, can run it
too), eps prediction, trained as the quick start trains (1,000 steps of batch 128).
Each row is 512 samples scored by the project's digits classifier; the data row
scores 512 real digits (the floor at this N).

    python -m diffusion.sweep experiments/digits_samplers
    python -m diffusion.compare experiments/digits_samplers
"""

SPECS = (
    ["ddpm"]
    + [f"ddim:steps={n},eta=0" for n in (10, 20, 50, 100)]
    + [f"ddim:steps={n},eta=1" for n in (10, 20, 50, 100)]
    + [f"euler_maruyama:steps={n}" for n in (100, 1000)]
    + [f"predictor_corrector:steps={n}" for n in (50, 500)]
    + [f"probability_flow:steps={n},ode_method=heun" for n in (10, 25, 50)]
    + [f"edm_heun:steps={n}" for n in (5, 10, 25, 50)]
    + [f"edm_stochastic:steps={n}" for n in (10, 25)]
    + [f"dpm_solver:steps={n},solver_order={k}" for n, k in ((10, 2), (20, 2), (10, 3), (20, 3))]
    + [f"dpmpp_2m:steps={n}" for n in (10, 20, 50)]
    + [f"dpmpp_2s:steps={n}" for n in (5, 10, 25)]
    + [f"dpmpp_3s:steps={n}" for n in (4, 7, 17)])


def get_study():
  return dict(
      description=__doc__.split("\n\n")[0],
      base="configs/digits_ddpm.py",
      overrides={"wandb.mode": "offline", "train.sample_every": 1000,
                 "diffusion.schedule": "linear"},
      variants={"linear_eps": {}},
      eval_specs=SPECS,
      eval_overrides={"eval.num_samples": 512, "eval.batch_size": 256, "eval.bpd_num": 256,
                      "eval.baseline_split": "train"})
