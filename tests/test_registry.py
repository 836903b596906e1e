"""The sampler record alone drives the CLI, `--mode eval` and config checks (issue 10).

A toy sampler is written into a temporary folder as a user's own module (an
options dataclass, a run function, one `register` call) with a config file
that imports it; nothing in the repository is touched. `--mode sample` and
`--mode eval` then run it on the fixture workdir of tests/test_compat.py.
"""
import json
import os
import re
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import smoke
from diffusion import experiment
from diffusion.core import samplers
from diffusion.core.samplers import registry
from diffusion.dist import placement
from diffusion.run import checkpoint
from diffusion.eval import entries as specs
import tiny_classifier

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "workdir_v0" / "discrete"

TOY = '''
"""A one-step toy sampler: x0_hat(x_T, T - 1) * scale, clipped to [-1, 1]."""
import dataclasses
import jax.numpy as jnp
from diffusion.core.samplers import base, registry


@dataclasses.dataclass(frozen=True)
class ToyOptions:
  scale: float = 1.0

  def __post_init__(self):
    if not 0.0 < self.scale <= 1.0:
      raise ValueError(f"scale={self.scale} must lie in (0, 1]")


def run(den, process, rng, shape, options, *, x_init=None, return_trajectory=False):
  x, _ = base.start(rng, shape, x_init, base.std_normal)
  t = jnp.full((shape[0],), process.num_steps - 1, jnp.int32)
  x0 = jnp.clip(options.scale * den.x0(x, t), -1.0, 1.0)
  traj = {"t": t[:1], "x": x0[None], "x0": x0[None]}
  return (x0, traj) if return_trajectory else x0


registry.register(registry.Sampler("toy", ToyOptions, "discrete", run, nfe=lambda o, p: 1,
                                   steps=lambda o, p: 1))
'''
CONFIG = '''
import toy_sampler  # noqa: F401  (registers "toy")
from configs import smoke


def get_config(arg=None):
  config = smoke.get_config(arg)
  config.sample.method = "toy"
  config.eval.samplers = {"toy_half": dict(method="toy", scale=0.5)}
  return config
'''


def _env(tmp):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              PYTHONPATH=os.pathsep.join(filter(None, [str(tmp), str(ROOT),
                                                       os.environ.get("PYTHONPATH")])))


def _main(tmp, workdir, *flags):
  cmd = [sys.executable, "-m", "diffusion.main", "--config", str(tmp / "toy_config.py"),
         "--workdir", str(workdir), *flags]
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(tmp), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("toy")
  (tmp / "toy_sampler.py").write_text(TOY)
  (tmp / "toy_config.py").write_text(textwrap.dedent(CONFIG))
  workdir = tmp / "w"
  shutil.copytree(FIXTURE, workdir)
  tiny_classifier.train_and_save(tmp / "clf", "test_registry")
  _main(tmp, workdir, "--mode=sample", "--config.sample.num_samples=4",
        "--config.sample.gif_frames=2", "--config.sample.scale=0.8")
  _main(tmp, workdir, "--mode=eval", f"--config.eval.classifier_path={tmp / 'clf'}",
        "--config.eval.specs=('toy:scale=0.25',)", "--config.eval.bpd=False")
  return workdir


def test_toy_sampler_runs_from_the_cli(toy_runs):
  """`--mode sample` with method "toy" wrote x0_hat(x_T, T-1) * 0.8 of the fixture's
  EMA params, x_T from fold_in(sample_key, 0): recomputed here (same float32
  program, 1e-6)."""
  exp = experiment.build(smoke.get_config())
  with checkpoint.Checkpointer(FIXTURE / "checkpoints", None) as ckpt:
    params, _ = experiment.restore_ema_params(exp, ckpt, None, placement.make_mesh())
  init_key, _ = jax.random.split(jax.random.fold_in(exp.sample_key, 0))
  x_t = jax.random.normal(init_key, (4, 8, 8, 1), np.float32)
  t = np.full((4,), 99, np.int32)
  expected = np.clip(0.8 * np.asarray(exp.denoiser(params).x0(x_t, t)), -1.0, 1.0)
  (path,) = [p for p in (toy_runs / "samples").glob("final_000002_toy*.npz")
              if not p.name.endswith(".uint8.npz")]  # Named by the sampler's settings.
  with np.load(path) as f:
    np.testing.assert_allclose(f["images"], expected, atol=1e-6, rtol=0)


def test_toy_sampler_runs_in_eval_as_entry_and_spec(toy_runs):
  """Both forms reached the toy record: its nfe/steps (1), its option values."""
  results = json.loads((toy_runs / "eval" / "results.json").read_text())
  rows = {r["spec"]: r for r in results["rounds"]}
  assert sorted(rows) == ["toy:scale=0.25", "toy_half"]
  for name, scale in (("toy_half", 0.5), ("toy:scale=0.25", 0.25)):
    row = rows[name]
    assert (row["method"], row["nfe"], row["steps"], row["num_samples"]) == ("toy", 1, 1, 20)
    assert row["settings"]["scale"] == scale
    assert np.isfinite(row["fid"]) and row["fid"] > 0  # Different scales: different samples.
  assert rows["toy_half"]["fid"] != rows["toy:scale=0.25"]["fid"]


def test_typed_entry_and_spec_string_parse_into_the_same_options():
  config = smoke.get_config()
  config.eval.samplers = {"a": {"method": "ddim", "num_steps": 4, "eta": 1.0}}
  config.eval.specs = ("ddim:steps=4,eta=1",)
  typed, spec = specs.eval_samplers(config)
  assert (typed.method, typed.overrides) == (spec.method, spec.overrides) == (
      "ddim", {"num_steps": 4, "eta": 1.0})
  assert typed.config.sample.to_dict() == spec.config.sample.to_dict()
  config.eval.samplers = {"b": {"method": "ddim", "etta": 1.0}}
  with pytest.raises(ValueError, match="config.eval.samplers.b: ddim has no option etta"):
    specs.eval_samplers(config)


def test_register_refuses_a_taken_name_and_a_disagreeing_shared_default(monkeypatch):
  monkeypatch.setattr(registry, "SAMPLERS", dict(registry.SAMPLERS))
  ddim = registry.SAMPLERS["ddim"]
  with pytest.raises(ValueError, match="'ddim' is registered already"):
    registry.register(ddim)

  import dataclasses  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass(frozen=True)
  class Bad:
    num_steps: int = 10  # config.sample.num_steps defaults to 1000.

  with pytest.raises(ValueError, match="num_steps=10 disagrees with the shared default 1000"):
    registry.register(dataclasses.replace(ddim, name="bad", options=Bad))
  assert "bad" not in registry.SAMPLERS and samplers.get("ddim") is ddim


def test_one_place_decides_the_domain():
  """A continuous sampler runs a linear discrete model on its VP SDE; a cosine one
  and a discrete sampler on an SDE are refused, each naming why."""
  from diffusion.core import processes, schedules, sdes  # pylint: disable=g-import-not-at-top
  sde = processes.on_domain(schedules.get("linear", num_steps=100), "continuous")
  np.testing.assert_allclose([sde.beta_min, sde.beta_max], [0.01, 2.0], rtol=1e-5)
  with pytest.raises(ValueError, match="only the schedules \\['linear'\\].*'cosine'"):
    processes.on_domain(schedules.get("cosine", num_steps=100), "continuous")
  with pytest.raises(ValueError, match="integer steps.*VPSDE"):
    processes.on_domain(sdes.VPSDE(), "discrete")


def test_the_old_eval_samplers_flag_names_the_new_key(capsys):
  from diffusion import main  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exit_info:
    main.check_renamed(["main", "--config.eval.samplers=('ddpm',)"])
  assert exit_info.value.code == 2  # A usage error.
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and re.search(
      r"^error: --config.eval.samplers: config.eval.samplers is now a dict.*--config.eval.specs", err)
  main.check_renamed(["main", "--config.eval.samplers.toy.scale=0.5"])  # A typed entry's key.
