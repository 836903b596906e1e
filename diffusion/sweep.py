"""``python -m diffusion.sweep experiments/<study>``: run an ablation study.

    python -m diffusion.sweep experiments/schedule_x_prediction              # one run at a time
    python -m diffusion.sweep experiments/schedule_x_prediction --parallel 2
    python -m diffusion.sweep experiments/schedule_x_prediction --print      # the commands
    python -m diffusion.sweep experiments/schedule_x_prediction --wandb_sweep sweep.yaml
    python -m diffusion.sweep experiments/schedule_x_prediction --run=schedule=cosine,prediction=v

The study (``experiments/<study>/study.py``, `diffusion.study.definition`) is loaded
and every run's config checked before anything runs; a bad definition is one line
``error: study <name>: <entry>: ...`` and exit 2. Each run trains, then evaluates,
in ``--root/<run>`` (default ``workdir/studies/<study>``); a re-run skips what is
finished and resumes what is not (`diffusion.study.runner`). Compare the runs with
``python -m diffusion.compare experiments/<study>``. Exit 1 when a run failed.
"""
from __future__ import annotations

import argparse
import os
import sys

USAGE_EXIT, RUNTIME_EXIT = 2, 1


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m diffusion.sweep", description=__doc__.split("\n")[0])
  p.add_argument("study", help="the study folder, experiments/<study>")
  p.add_argument("--root", default=None, help="where the runs' workdirs go (default "
                 "workdir/studies/<study>)")
  p.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
  p.add_argument("--print", action="store_true", dest="print_only",
                 help="print each run's train && eval command and exit")
  p.add_argument("--wandb_sweep", default=None, metavar="FILE",
                 help="write a wandb sweep file that drives the same runs and exit")
  p.add_argument("--run", action="append", default=[], metavar="NAME",
                 help="run only this run (repeatable); a wandb agent passes the run's "
                 "--config.<key>=<value> flags instead")
  return p


def main(argv=None) -> int:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  parser = _parser()
  parser.error = lambda message: _fail(message)  # One line, exit 2.
  argv = list(sys.argv[1:] if argv is None else argv)
  agent_flags = [a for a in argv if a.startswith("--config.")]  # From a wandb agent.
  args = parser.parse_args([a for a in argv if a not in agent_flags])
  if args.parallel < 1:
    _fail(f"--parallel={args.parallel} must be >= 1")
  from diffusion.study import definition, runner  # pylint: disable=g-import-not-at-top
  try:
    study = definition.load(args.study)
  except definition.StudyError as e:
    _fail(str(e))
  root = args.root or runner.default_root(study)
  names = [r.run for r in study.runs]
  if agent_flags:
    try:
      args.run.append(runner.run_of_flags(study, agent_flags).run)
    except ValueError as e:
      _fail(str(e))
  for name in args.run:
    if name not in names:
      _fail(f"--run={name!r} is not a run of study {study.name}; its runs: {', '.join(names)}")
  if args.print_only:
    for line in runner.shell_lines(study, root):
      print(line)
    return 0
  if args.wandb_sweep:
    if os.path.exists(args.wandb_sweep):
      _fail(f"--wandb_sweep {args.wandb_sweep!r} exists; not overwriting it")
    with open(args.wandb_sweep, "w") as f:
      f.write(runner.wandb_sweep_yaml(study, root))
    print(f"wrote {args.wandb_sweep}: `wandb sweep {args.wandb_sweep}`, then `wandb agent "
          "<sweep id>` on each machine")
    return 0
  phases = runner.run(study, root, parallel=args.parallel, only=tuple(args.run))
  failed = [name for name, p in phases.items() if p == "failed"]
  if failed:
    print(f"error: {len(failed)} run(s) failed: {', '.join(failed)} (logs in "
          f"{os.path.join(root, 'logs')}); run the same command again to retry them",
          file=sys.stderr)
    return RUNTIME_EXIT
  print(f"sweep {study.name}: all {len(phases)} runs done; compare them with "
        f"`python -m diffusion.compare {args.study}" + (f" --root {root}`" if args.root else "`"))
  return 0


def _fail(message: str):
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT)


if __name__ == "__main__":
  sys.exit(main())
