"""Runs a study: every run trains, then evaluates, in its own workdir under one root.

Each run is two ``diffusion.main`` commands (`commands`): train, then ``--mode
eval`` with the study's eval specs. A run whose last checkpoint is the budget's
step is not trained again; one whose ``eval/results.json`` holds that step and
every spec is not evaluated again; anything else is started (main resumes a
half-trained workdir from its checkpoint, and ``--mode eval`` its finished
rounds). Logs go to ``ROOT/logs/<run>.{train,eval}.log``.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from diffusion.study import definition

PHASES = ("pending", "training", "trained", "evaluating", "done", "failed")


def default_root(study) -> str:
  """``workdir/studies/<study>`` under the current folder."""
  return os.path.join("workdir", "studies", study.name)


def workdir(root: str, run) -> str:
  return os.path.join(root, run.run)


def tags(study, run) -> tuple:
  """The wandb tags of a run: the study and each varied ``key=value``."""
  return (f"study:{study.name}",) + tuple(
      f"{k.rsplit('.', 1)[-1]}={definition.flag_value(v)}" for k, v in run.varied.items())


def commands(study, run, root: str, python: str = sys.executable) -> tuple[list, list]:
  """``(train, eval)`` argv lists of `run` (run from the repository root)."""
  wd = workdir(root, run)
  flags = [f"--config.{k}={definition.flag_value(v)}" for k, v in run.overrides.items()]
  flags += [f"--config.wandb.group={study.name}", f"--config.wandb.name={run.run}",
            f"--config.wandb.tags={definition.flag_value(tags(study, run))}"]
  base = [python, "-m", "diffusion.main", "--config", run.config, "--workdir", wd]
  evals = [f"--config.{k}={definition.flag_value(v)}" for k, v in run.eval_overrides.items()]
  return base + flags, base + ["--mode", "eval"] + flags + evals


def shell_lines(study, root: str, python: str = "python") -> list[str]:
  """One shell line per run, ``train && eval`` (``--print``: for a cluster's job
  script or ``launch.sh``)."""
  out = []
  for run in study.runs:
    train, evaluate = commands(study, run, root, python)
    out.append(f"{shlex.join(train)} && {shlex.join(evaluate)}")
  return out


def checkpoint_steps(wd: str) -> list[int]:
  """The finished checkpoints' steps of a workdir (Orbax's integer step folders)."""
  folder = os.path.join(wd, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def last_step(wd: str) -> int | None:
  """The step of the last row of ``metrics.jsonl`` (how far training got)."""
  path = os.path.join(wd, "metrics.jsonl")
  if not os.path.isfile(path):
    return None
  step = None
  with open(path) as f:
    for line in f:
      try:
        step = json.loads(line).get("step", step)
      except ValueError:
        continue
  return step


def trained(run, wd: str) -> bool:
  return run.num_steps in checkpoint_steps(wd)


def evaluated(study, run, wd: str) -> bool:
  path = os.path.join(wd, "eval", "results.json")
  if not os.path.isfile(path):
    return False
  try:
    with open(path) as f:
      results = json.load(f)
  except ValueError:
    return False
  specs = {r["spec"] for r in results.get("rounds", ())}
  return results.get("step") == run.num_steps and set(study.eval_specs) <= specs


def phase(study, root: str, run) -> str:
  """Where `run` is from its files: pending, trained or done."""
  wd = workdir(root, run)
  if not trained(run, wd):
    return "pending"
  return "done" if evaluated(study, run, wd) else "trained"


class _Job:
  """One run going through train then eval, one subprocess at a time."""

  def __init__(self, study, run, root, python, env, log_dir):
    self.study, self.run, self.root = study, run, root
    self.python, self.env, self.log_dir = python, env, log_dir
    self.proc, self.log, self.state, self.rc = None, None, phase(study, root, run), None
    self.skipped = self.state == "done"

  def _start(self, which: int, name: str):
    cmd = commands(self.study, self.run, self.root, self.python)[which]
    path = os.path.join(self.log_dir, f"{self.run.run}.{name}.log")
    self.log = open(path, "a")  # pylint: disable=consider-using-with
    self.log.write(f"$ {shlex.join(cmd)}\n")
    self.log.flush()
    self.proc = subprocess.Popen(cmd, cwd=definition.ROOT, env=self.env, stdout=self.log,
                                 stderr=subprocess.STDOUT)
    self.log_path = path

  def step(self) -> bool:
    """Advances the job; True while it still has work."""
    if self.proc is not None:
      rc = self.proc.poll()
      if rc is None:
        return True
      self.proc, self.rc = None, rc
      self.log.close()
      if rc != 0:
        self.state = "failed"
        return False
      self.state = "trained" if self.state == "training" else "done"
    if self.state == "pending":
      self.state = "training"
      self._start(0, "train")
      return True
    if self.state == "trained":
      self.state = "evaluating"
      self._start(1, "eval")
      return True
    return False

  def describe(self) -> str:
    if self.state == "training":
      step = last_step(workdir(self.root, self.run))
      return f"train {step or 0}/{self.run.num_steps}"
    if self.state == "failed":
      return f"failed (exit {self.rc}; log {self.log_path})"
    return {"evaluating": "eval", "done": "skipped (done)" if self.skipped else "done"}.get(
        self.state, self.state)

  def stop(self):
    if self.proc is not None and self.proc.poll() is None:
      self.proc.terminate()  # main saves a checkpoint on SIGTERM and exits 0.
      try:
        self.proc.wait(timeout=120)
      except subprocess.TimeoutExpired:
        self.proc.kill()


def run(study, root: str, parallel: int = 1, only: tuple = (), python: str = sys.executable,
        env=None, interval: float = 5.0, out=sys.stdout) -> dict:
  """Runs `study`'s runs (or those named in `only`) under `root`, `parallel` at a
  time, printing a progress line whenever a run changes phase and every minute.
  Returns ``{run: final phase}``; a failed run does not stop the others."""
  runs = [r for r in study.runs if not only or r.run in only]
  log_dir = os.path.join(root, "logs")
  os.makedirs(log_dir, exist_ok=True)
  env = dict(os.environ if env is None else env)
  jobs = [_Job(study, r, root, python, env, log_dir) for r in runs]
  waiting, active, last, shown = list(jobs), [], None, 0.0
  print(f"sweep {study.name}: {len(jobs)} runs under {root} ({parallel} at a time; "
        f"{sum(j.skipped for j in jobs)} already done)", file=out, flush=True)
  try:
    while waiting or active:
      while waiting and len(active) < parallel:
        job = waiting.pop(0)
        if job.step():
          active.append(job)
      active = [j for j in active if j.step()]
      line = "; ".join(f"{j.run.run}: {j.describe()}" for j in jobs if j.state != "pending")
      now = time.monotonic()
      phases = tuple(j.state for j in jobs)
      if phases != last or now - shown > 60:
        done = sum(j.state == "done" for j in jobs)
        print(f"[{done}/{len(jobs)} done] {line}", file=out, flush=True)
        last, shown = phases, now
      if waiting or active:
        time.sleep(interval)
  except KeyboardInterrupt:
    for j in active:
      j.stop()
    raise
  return {j.run.run: j.state for j in jobs}


def wandb_sweep_yaml(study, root: str) -> str:
  """A wandb sweep file driving the same runs. Its parameters are the varied config
  keys (``config.<key>``, the values of the grid or of the variants, and ``config.seed``
  with several seeds), so an agent calls ``python -m diffusion.sweep FOLDER --root ROOT
  --config.<key>=<value> ...``; `run_of_flags` maps those flags back to the study's
  run, which trains and then evaluates in its own workdir. The grid holds exactly the
  study's runs only for grid studies; for named variants the parameter is ``run``."""
  keys = list(study.varied_keys) + (["seed"] if len({r.seed for r in study.runs}) > 1 else [])
  grid = all(set(r.varied) == set(study.varied_keys) for r in study.runs) and keys
  lines = []
  if grid:
    for key in keys:
      values = list(dict.fromkeys(r.seed if key == "seed" else r.varied[key] for r in study.runs))
      lines += [f"  config.{key}:", "    values:"] + [f"      - {json.dumps(v)}" for v in values]
  else:
    lines += ["  run:", "    values:"] + [f"      - {json.dumps(r.run)}" for r in study.runs]
  body = "\n".join(lines)
  return (f"# wandb sweep {os.path.join(study.folder, 'sweep.yaml')}; then wandb agent <id>\n"
          f"name: {json.dumps(study.name)}\n"
          "method: grid\n"
          "parameters:\n"
          f"{body}\n"
          "command:\n"
          "  - ${env}\n"
          "  - ${interpreter}\n"
          "  - -m\n"
          "  - diffusion.sweep\n"
          f"  - {json.dumps(study.folder)}\n"
          "  - --root\n"
          f"  - {json.dumps(root)}\n"
          "  - ${args}\n")


def run_of_flags(study, flags: list[str]):
  """The run of `study` whose varied keys (and seed) have the values of the
  ``--config.<key>=<value>`` flags a wandb agent passes; ValueError naming the flags
  when no run matches."""
  given = {}
  for flag in flags:
    key, _, value = flag[len("--config."):].partition("=")
    given[key] = value
  for run in study.runs:
    values = dict(run.varied, seed=run.seed)
    if set(given) <= set(values) and all(definition.flag_value(values[k]) == v or
                                         str(values[k]) == v for k, v in given.items()):
      if len(given) == len(set(run.varied) | ({"seed"} if "seed" in given else set())):
        return run
  raise ValueError(f"no run of study {study.name} has {' '.join(flags)} (its runs: "
                   f"{', '.join(r.run for r in study.runs)})")
