#!/usr/bin/env bash
# Launch diffusion runs.
#
#   ./launch.sh local CONFIG WORKDIR [--config.a.b=v ...]
#       this machine, all local devices.
#   ./launch.sh tpu TPU_NAME ZONE CONFIG WORKDIR [--dry-run] [--config.a.b=v ...]
#       the same command on every worker of a TPU VM pod via gcloud
#       (the repo must be at ~/diffusion on each worker, with its .venv).
#   ./launch.sh multiprocess N CONFIG WORKDIR [...]
#       N local CPU processes standing in for hosts (not available yet:
#       multi-process training is the open issue "Multi-host").
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

mode=${1:-}
[ $# -ge 1 ] && shift || usage
case "$mode" in
  local)
    [ $# -ge 2 ] || usage
    config=$1 workdir=$2; shift 2
    exec "$PY" -m diffusion.main --config "$config" --workdir "$workdir" "$@"
    ;;
  tpu)
    [ $# -ge 4 ] || usage
    name=$1 zone=$2 config=$3 workdir=$4; shift 4
    dry=0 extra=()
    for a in "$@"; do
      if [ "$a" = "--dry-run" ]; then dry=1; else extra+=("$(printf '%q' "$a")"); fi
    done
    remote="cd ~/diffusion && .venv/bin/python -m diffusion.main --config $(printf '%q' "$config") --workdir $(printf '%q' "$workdir") ${extra[*]:-}"
    cmd=(gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$remote")
    if [ "$dry" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
    ;;
  multiprocess)
    echo "launch.sh multiprocess: not available yet (multi-host training is an open issue)" >&2
    exit 2
    ;;
  *) usage ;;
esac
