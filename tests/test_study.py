"""Ablation studies (issue 14): a study definition, the sweep runner and the report.

The definition tests build configs in-process (no training). The end-to-end test
runs a two-variant study of configs/smoke.py through ``python -m diffusion.sweep``
(train, then eval, wandb offline), re-runs it (nothing restarts), and checks the
report's numbers against the runs' own files.
"""
import json
import os
import pathlib

import subprocess
import sys

import pytest

from diffusion import sweep
from diffusion.run import cli
from diffusion.study import definition, report, runner

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOOD = dict(base="configs/smoke.py", overrides={"train.num_steps": 4},
            grid={"diffusion.schedule": ["linear", "cosine"], "optim.lr": [1e-3, 2e-3]},
            seeds=[0, 1], eval_specs=["ddim:steps=4,eta=0"])


def _study(tmp_path, definition_dict, name="s"):
  folder = tmp_path / name
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "study.py").write_text(f"def get_study():\n  return {definition_dict!r}\n")
  return str(folder)


BAD = [
    (dict(GOOD, grid=None), "grid / variants: give exactly one of them"),
    (dict(GOOD, variants={"a": {}}), "grid / variants: give exactly one of them"),
    (dict(GOOD, grid={"optim.lrr": [1e-3]}),
     "variant 'lrr=0.001': config.optim.lrr: no such key; did you mean optim.lr?"),
    (dict(GOOD, grid={"optim.lr": ["fast"]}),
     "variant 'lr=fast': config.optim.lr='fast' is a str; the config holds a float"),
    (dict(GOOD, grid={"optim.lr": [1e-3, 1e-3]}), "grid['optim.lr']: lists a value twice"),
    (dict(GOOD, grid={"diffusion.schedule": ["linear", "cosinus"]}),
     "variant 'schedule=cosinus': config.diffusion.schedule='cosinus'"),
    (dict(GOOD, overrides={"train.num_stepz": 4}),
     "overrides: config.train.num_stepz: no such key; did you mean train.num_steps?"),
    (dict(GOOD, eval_specs=["ddim:stepz=4"]), "eval_specs for variant 'schedule=linear,lr=0.001': "
     "sampler spec 'ddim:stepz=4': unknown key 'stepz' for ddim"),
    (dict(GOOD, eval_overrides={"train.num_steps": 3}),
     "eval_overrides: 'train.num_steps' is not an eval.* key"),
    (dict(GOOD, seeds=[0, 0]), "seeds: must be a non-empty list of distinct ints"),
    (dict(GOOD, grid=None, variants={"a/b": {}}), "variants['a/b']: a variant's name is its folder"),
    (dict(GOOD, grid=None, variants={"a": "configs/nope.py"}),
     "variant 'a': no such config file 'configs/nope.py'"),
    (dict(GOOD, sedes=[0]), "sedes: no such field; did you mean seeds?"),
    (dict(GOOD, base=3), "base: must be a config file"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_definition_fails_naming_the_entry(tmp_path, bad, message):
  bad = {k: v for k, v in bad.items() if v is not None}
  with pytest.raises(definition.StudyError) as e:
    definition.load(_study(tmp_path, bad))
  text = str(e.value)
  assert text.startswith("study s: ") and message in text and "\n" not in text, text


def test_bad_definition_on_the_command_line_is_one_line(tmp_path, capsys):
  folder = _study(tmp_path, dict(GOOD, grid={"optim.lrr": [1e-3]}))
  for argv in ([folder], [folder, "--print"], [str(tmp_path / "none")], [folder, "--parallel=0"]):
    with pytest.raises(SystemExit) as e:
      sweep.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
  folder = _study(tmp_path, GOOD, name="g")
  with pytest.raises(SystemExit):
    sweep.main([folder, "--run=nope"])
  assert "--run='nope' is not a run of study g; its runs: schedule=linear,lr=0.001-seed0" in (
      capsys.readouterr().err)


def test_grid_runs_names_and_commands_round_trip_through_main_flags(tmp_path, capsys):
  """A 2 x 2 grid at two seeds is 8 runs in grid order, named by the keys' last
  segments (the seed appended when there are several); each run's train command,
  parsed by the command line every entry point uses (`run.cli`), gives the config
  that the study validated, and its eval command adds the eval specs."""
  study = definition.load(_study(tmp_path, GOOD))
  assert [r.run for r in study.runs] == [
      f"schedule={s},lr={lr}-seed{seed}" for s in ("linear", "cosine")
      for lr in ("0.001", "0.002") for seed in (0, 1)]
  assert study.varied_keys == ("diffusion.schedule", "optim.lr")
  assert {r.num_steps for r in study.runs} == {4}
  run = study.run("schedule=cosine,lr=0.002-seed1")
  assert run.varied == {"diffusion.schedule": "cosine", "optim.lr": 2e-3} and run.seed == 1
  train, evaluate = runner.commands(study, run, "ROOT", python="py")
  assert train[:7] == ["py", "-m", "diffusion.main", "--config", "configs/smoke.py",
                       "--workdir", os.path.join("ROOT", run.run)]
  assert evaluate[7:9] == ["--mode", "eval"] and evaluate[-1] == (
      "--config.eval.specs=('ddim:steps=4,eta=0',)")
  os.chdir(ROOT)
  parsed = cli.parse(train[3:5] + train[7:], lambda v: None, "main").config
  assert (parsed.diffusion.schedule, parsed.optim.lr, parsed.seed, parsed.train.num_steps) == (
      "cosine", 2e-3, 1, 4)
  assert (parsed.wandb.group, parsed.wandb.name, tuple(parsed.wandb.tags)) == (
      "s", run.run, ("study:s", "schedule=cosine", "lr=0.002"))
  parsed = cli.parse(evaluate[3:5] + evaluate[9:], lambda v: None, "main").config
  assert tuple(parsed.eval.specs) == ("ddim:steps=4,eta=0",)
  # --print: one `train && eval` line per run, shell-quoted.
  assert sweep.main([str(tmp_path / "s"), "--print", "--root", "R"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 8 and all(" && " in line and "--mode eval" in line for line in lines)
  # The wandb sweep file: a grid over the varied keys and the seed, as config flags;
  # an agent's --config.<key>=<value> flags map back to the study's run.
  out = tmp_path / "sweep.yaml"
  assert sweep.main([str(tmp_path / "s"), "--wandb_sweep", str(out), "--root", "R"]) == 0
  text = out.read_text()
  assert ('  config.diffusion.schedule:\n    values:\n      - "linear"\n      - "cosine"\n'
          '  config.optim.lr:\n    values:\n      - 0.001\n      - 0.002\n'
          '  config.seed:\n    values:\n      - 0\n      - 1\n') in text
  assert "  - diffusion.sweep\n" in text and text.endswith("  - ${args}\n")
  flags = ["--config.diffusion.schedule=cosine", "--config.optim.lr=0.002", "--config.seed=1"]
  assert runner.run_of_flags(study, flags) is run
  with pytest.raises(ValueError, match="no run of study s has --config.diffusion.schedule=cosine --config.optim.lr=0.5 "):
    runner.run_of_flags(study, flags[:1] + ["--config.optim.lr=0.5", flags[2]])
  with pytest.raises(SystemExit):  # Never overwritten.
    sweep.main([str(tmp_path / "s"), "--wandb_sweep", str(out)])


def test_named_variants_with_their_own_config_files(tmp_path):
  study = definition.load(_study(tmp_path, dict(
      base="configs/smoke.py", overrides={"train.num_steps": 4},
      variants={"small": {"model.ch": 8}, "wide": {"config": "configs/smoke.py", "model.ch": 16},
                "ddim8": "configs/smoke.py:steps=8"})))
  assert [(r.run, r.config, r.varied) for r in study.runs] == [
      ("small", "configs/smoke.py", {"model.ch": 8}),
      ("wide", "configs/smoke.py", {"model.ch": 16}),
      ("ddim8", "configs/smoke.py:steps=8", {})]


def test_two_variant_study_runs_resumes_and_reports_its_own_numbers(tmp_path):
  """configs/smoke.py in two variants (lr 1e-3 and 2e-3), wandb offline, through
  ``python -m diffusion.sweep --parallel 2``: both train 2 steps and evaluate; a re-run
  starts nothing; ``diffusion.compare`` reports each variant's final loss and FID as
  the runs' own files hold them; the wandb runs carry the study's group, the run's
  name, job type and tags."""
  import tiny_classifier
  from diffusion import compare
  from test_writers import _run_contents, _run_dirs
  clf = tmp_path / "classifier"
  tiny_classifier.train_and_save(clf, "test_study")
  folder = _study(tmp_path, dict(
      description="two learning rates", base="configs/smoke.py",
      # 2 steps, no sample grid: the smoke model of tests/test_compat.py's fixture.
      overrides={"wandb.mode": "offline", "train.num_steps": 2, "train.sample_every": 0},
      variants={"lr1": {}, "lr2": {"optim.lr": 2e-3}},
      eval_specs=["ddim:steps=4,eta=0"],
      eval_overrides={"eval.classifier_path": str(clf), "eval.baseline_split": "train"}),
      name="lrs")
  root = tmp_path / "runs"
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             WANDB_SILENT="true",
             PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
  cmd = [sys.executable, "-m", "diffusion.sweep", folder, "--root", str(root), "--parallel", "2"]
  first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  logs = {p.name: p.read_text() for p in (root / "logs").iterdir()}
  assert first.returncode == 0, first.stderr[-3000:] + "".join(logs.values())[-3000:]
  assert sorted(logs) == ["lr1.eval.log", "lr1.train.log", "lr2.eval.log", "lr2.train.log"]
  assert "all 2 runs done" in first.stdout
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "2 already done" in again.stdout, again.stderr
  assert {p.name: p.read_text() for p in (root / "logs").iterdir()} == logs  # Nothing started.

  assert compare.main([folder, "--root", str(root)]) == 0
  md = (pathlib.Path(folder) / "report.md").read_text()
  for name in ("lr1", "lr2"):
    copies = pathlib.Path(folder) / "runs" / name
    metrics = [json.loads(line) for line in (copies / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((copies / "results.json").read_text())
    assert results == json.loads((root / name / "eval" / "results.json").read_text())
    loss = sum(m["loss"] for m in metrics[-5:]) / len(metrics[-5:])
    fid = next(r["fid"] for r in results["rounds"] if r["spec"] == "ddim:steps=4,eta=0")
    assert f"| {name} | 1 | {loss:.4f} | {fid:.2f} |" in md, md
    runs = [_run_contents(d)[2] for d in _run_dirs(str(root / name))]
    assert sorted(r.job_type for r in runs) == ["eval", "train"]
    assert all((r.run_group, r.display_name) == ("lrs", name) for r in runs)
    assert all(list(r.tags) == ["study:lrs"] + (["lr=0.002"] if name == "lr2" else [])
               for r in runs)
  assert "How noisy: the `data:train` row" in md
  for png in ("loss.png", "fid_vs_nfe.png"):
    assert (pathlib.Path(folder) / png).stat().st_size > 1000


def test_report_averages_seeds_and_tables_every_sampler(tmp_path):
  """The report from runs' files written here: two variants at two seeds and five
  eval specs. Each variant's row is the mean over its seeds ± their standard
  deviation (ddof 1); the final loss is the mean of the last 5 logged rows; with more
  specs than the main table's columns, a per-sampler table lists every run's FID."""
  specs = [f"ddim:steps={n},eta=0" for n in (2, 3, 4, 5, 6)]
  folder = _study(tmp_path, dict(base="configs/smoke.py", grid={"optim.lr": [1e-3, 2e-3]},
                                 seeds=[0, 1], eval_specs=specs), name="rep")
  study = definition.load(folder)
  fids = {}
  for i, run in enumerate(study.runs):
    out = pathlib.Path(folder) / "runs" / run.run
    out.mkdir(parents=True)
    rows = [{"step": 2 * k, "loss": 1.0 + i + k, "steps_per_sec": 2.0} for k in range(1, 7)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rounds = [{"spec": "data:train", "method": "data", "nfe": 0, "fid": 1.5, "kid": 0.0,
               "kid_std": 0.25, "inception_score": 9.0, "samples_per_s": None}]
    for j, spec in enumerate(specs):
      fids[run.run, spec] = 10.0 * (i + 1) + j
      rounds.append({"spec": spec, "method": "ddim", "nfe": j + 2, "fid": fids[run.run, spec],
                     "kid": 0.5 * i, "kid_std": 0.1, "inception_score": 5.0,
                     "samples_per_s": 100.0})
    (out / "results.json").write_text(json.dumps(
        {"step": 12, "features": "classifier:x", "num_samples": 64, "rounds": rounds,
         "bpd": {"bits_per_dim": 2.0 + i, "std": 0.5, "num_images": 4, "split": "train",
                 "method": "ddpm_vlb", "description": "d"}}))
  md = (pathlib.Path(report.write(study, "cmd"))).read_text()
  # Runs in order lr1e-3 seed0 (i=0), seed1 (i=1); lr2e-3 seed0 (i=2), seed1 (i=3).
  # Final loss of run i: mean of its rows 2..6 = 1 + i + 4; over seeds i, i+1: 5.5 + i,
  # std of (5 + i, 6 + i) = sqrt(0.5) = 0.7071. FID of the first spec: 10 (i+1): 15 ± 7.07.
  assert "| lr=0.001 | 2 | 5.5000 ± 0.7071 | 15.00 ± 7.07 | 16.00 ± 7.07 |" in md, md
  assert "| lr=0.002 | 2 | 7.5000 ± 0.7071 | 35.00 ± 7.07 |" in md
  # KID (0, 0.5): 0.25 ± 0.35; IS; bits/dim (2, 3); samples/s; 12 steps at 2 per s = 0.1 min.
  assert "| 0.25 ± 0.35 | 5.00 ± 0.00 | 2.500 ± 0.707 | 100.0 ± 0.0 | 0.1 ± 0.0 |" in md
  pivot = [line for line in md.splitlines() if line.startswith("| `ddim:steps=6,eta=0` |")]
  assert pivot == ["| `ddim:steps=6,eta=0` | 6 | 14.0 | 24.0 | 34.0 | 44.0 |"]
  assert "has FID 1.50, KID 0.00 ± 0.25" in md
  for png in ("loss.png", "fid_vs_nfe.png", "fid_vs_key.png"):
    assert (pathlib.Path(folder) / png).is_file()
