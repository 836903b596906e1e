"""Users' runs survive the architecture change (issue 10).

tests/fixtures/workdir_v0/ holds two smoke workdirs trained by the code before
the change (commit 3dc1b62) and what that code wrote from them (see its
README). Here the current code restores them and must write the same numbers.

Tolerance: the sampler programs are the same float32 operations in the same
order except the trajectory's Tweedie x0 (not compared) and XLA's own fusion
choices, which may reorder a sum; one step's rounding is ~1e-7 relative and a
sampler of <= 100 steps compounds it to at most ~1e-5 on values of size <= 1
(measured here: DDPM, Euler-Maruyama, PC and probability flow bit-identical, DDIM
2e-7: its x0 and eps now go through `parameterization`, 1-2 ulp), so atol = 1e-5.
"""
import pathlib
import shutil

import jax
import numpy as np
import pytest

from configs import smoke
from diffusion import experiment
from diffusion.dist import placement
from diffusion.modes import train
from diffusion.run import checkpoint

FIXTURE = pathlib.Path(__file__).resolve().parent / "fixtures" / "workdir_v0"
ATOL = 1e-5
VE = ("diffusion.type=continuous", "diffusion.sde=ve", "diffusion.prediction=score",
      "diffusion.weighting=sigma2", "model.embedding=fourier")
# Reference name -> (fixture workdir, config.sample overrides).
CASES = {
    "discrete/ddim4": ("discrete", {}),
    "discrete/ddpm": ("discrete", {"method": "ddpm"}),
    "discrete/ddim4_eta1": ("discrete", {"eta": 1.0}),
    "discrete/em10": ("discrete", {"method": "euler_maruyama", "num_steps": 10}),
    "discrete/pc5": ("discrete", {"method": "predictor_corrector", "num_steps": 5}),
    "discrete/pf5": ("discrete", {"method": "probability_flow", "num_steps": 5}),
    "ve/em10": ("ve", {"method": "euler_maruyama", "num_steps": 10}),
    "ve/pf5": ("ve", {"method": "probability_flow", "num_steps": 5}),
    "ve/pc5": ("ve", {"method": "predictor_corrector", "num_steps": 5}),
}


def _config(kind):
  config = smoke.get_config()
  if kind == "ve":
    for item in VE:
      key, value = item.split("=")
      section, leaf = key.split(".")
      config[section][leaf] = value
    config.sample.method, config.sample.num_steps = "euler_maruyama", 10
  config.sample.num_samples = 4
  return config


@pytest.fixture(scope="module")
def references():
  with np.load(FIXTURE / "references.npz") as f:
    return dict(f)


@pytest.fixture(scope="module")
def restored():
  """``kind -> (experiment, EMA params)`` of the fixture's step-2 checkpoints."""
  out = {}
  for kind in ("discrete", "ve"):
    exp = experiment.build(_config(kind))
    with checkpoint.Checkpointer(FIXTURE / kind / "checkpoints", None) as ckpt:
      out[kind] = experiment.restore_ema_params(exp, ckpt, None, placement.make_mesh())
  return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_workdir_samples_what_the_old_code_sampled(name, restored, references):
  """`--mode sample`'s images (chunk 0: the first 4 with the trajectory, key
  fold_in(sample_key, 0)) of the fixture equal the old code's to ATOL."""
  kind, overrides = CASES[name]
  config = _config(kind)
  for key, value in overrides.items():
    config.sample[key] = value
  exp = experiment.build(config)
  params, step = restored[kind]
  assert step == 2
  fn = exp.sample_fn(num_samples=4, return_trajectory=True)
  x, _ = fn(params, jax.random.fold_in(exp.sample_key, 0))
  got = np.clip(np.asarray(x), -1.0, 1.0)
  np.testing.assert_allclose(got, references[name], atol=ATOL, rtol=0)


def test_old_workdir_resumes_to_the_old_codes_parameters(tmp_path, references):
  """Resuming the discrete fixture from step 2 to 4 (data position, optimizer and
  EMA restored) gives the old code's EMA params. Two Adam steps of the same
  float32 program: 1e-6 absolute on weights of size ~0.1-1."""
  workdir = tmp_path / "wd"
  shutil.copytree(FIXTURE / "discrete", workdir)
  config = _config("discrete")
  config.train.num_steps, config.train.sample_every, config.train.keep_checkpoints = 4, 0, 1
  state = train.train_and_evaluate(config, str(workdir))
  assert int(state.step) == 4 and int(references["discrete_step4_step"]) == 4
  leaves = jax.tree_util.tree_flatten_with_path(state.ema_params)[0]
  assert len(leaves) == sum(k.startswith("discrete_step4_ema/") for k in references)
  for path, value in leaves:
    ref = references["discrete_step4_ema/" + jax.tree_util.keystr(path)]
    np.testing.assert_allclose(np.asarray(value), ref, atol=1e-6, rtol=0)
