"""``python -m diffusion.compare experiments/<study>``: the study's local report.

    python -m diffusion.compare experiments/schedule_x_prediction [--root DIR]

Copies each run's ``metrics.jsonl``, ``eval/results.json`` and ``config.json`` from
its workdir (``--root/<run>``, default ``workdir/studies/<study>``) into
``experiments/<study>/runs/<run>/``, then writes ``experiments/<study>/report.md``
(one row per variant: final loss, FID per eval spec, KID, IS, bits/dim, samples/s,
training time, the seeds' spread) and its plots (``loss.png``, ``fid_vs_nfe.png``,
``fid_vs_key.png``) from those copies (`diffusion.study.report`). ``--no_collect``
rebuilds the report from the copies alone (a clone without the workdirs).
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  p = argparse.ArgumentParser(prog="python -m diffusion.compare", description=__doc__.split("\n")[0])
  p.add_argument("study", help="the study folder, experiments/<study>")
  p.add_argument("--root", default=None, help="the runs' workdirs (default workdir/studies/<study>)")
  p.add_argument("--no_collect", action="store_true",
                 help="do not copy from the workdirs; use the copies in <study>/runs/")
  p.error = _fail
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  from diffusion.study import definition, report, runner  # pylint: disable=g-import-not-at-top
  try:
    study = definition.load(args.study)
  except definition.StudyError as e:
    _fail(str(e))
  root = args.root or runner.default_root(study)
  if not args.no_collect:
    if not os.path.isdir(root):
      _fail(f"no runs under {root!r} (run `python -m diffusion.sweep {args.study}` first, "
            "give --root, or --no_collect to use the copies in the study folder)")
    copied = report.collect(study, root)
    missing = [r for r, files in copied.items() if "results.json" not in files]
    if missing:
      print(f"warning: {len(missing)} run(s) have no eval results yet: {', '.join(missing)}",
            file=sys.stderr)
  command = "python -m diffusion.compare " + " ".join(sys.argv[1:] if argv is None else argv)
  path = report.write(study, command)
  print(f"wrote {path}")
  return 0


def _fail(message):
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(2)


if __name__ == "__main__":
  sys.exit(main())
