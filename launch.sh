#!/usr/bin/env bash
# Launch diffusion runs.
#
#   ./launch.sh local CONFIG WORKDIR [--config.a.b=v ...]
#       this machine, all local devices.
#   ./launch.sh tpu TPU_NAME ZONE CONFIG WORKDIR [--dry-run] [--config.a.b=v ...]
#       the same command on every worker of a TPU VM pod via gcloud (the repo
#       must be at ~/diffusion on each worker, with its .venv; WORKDIR on a
#       filesystem all workers mount at the same path); DIFFUSION_DISTRIBUTED=1
#       makes each worker call jax.distributed.initialize().
#   ./launch.sh multiprocess N CONFIG WORKDIR [--devices_per_process M] [--config.a.b=v ...]
#       N local CPU processes standing in for hosts, M fake devices each
#       (default: $DEVICES_PER_PROCESS or 2), coordinator on 127.0.0.1:free
#       port; output lines prefixed "[i] "; if one process fails the others
#       are killed and the exit status is that process's.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
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
    remote="cd ~/diffusion && DIFFUSION_DISTRIBUTED=1 .venv/bin/python -m diffusion.main --config $(printf '%q' "$config") --workdir $(printf '%q' "$workdir") ${extra[*]:-}"
    cmd=(gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$remote")
    if [ "$dry" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
    ;;
  multiprocess)
    [ $# -ge 3 ] || usage
    n=$1 config=$2 workdir=$3; shift 3
    m=${DEVICES_PER_PROCESS:-2} extra=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --devices_per_process) m=$2; shift 2 ;;
        --devices_per_process=*) m=${1#*=}; shift ;;
        *) extra+=("$1"); shift ;;
      esac
    done
    [[ "$n" =~ ^[1-9][0-9]*$ && "$m" =~ ^[1-9][0-9]*$ ]] || usage
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export JAX_PLATFORMS=cpu
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$m"
    pids=()
    stop() {  # $1: signal; the processes still running get it.
      for p in "${pids[@]}"; do kill "-$1" "$p" 2>/dev/null || true; done
    }
    trap 'stop TERM' TERM INT
    for ((i = 0; i < n; i++)); do
      "$PY" -u -m diffusion.main --config "$config" --workdir "$workdir" \
          --coordinator_address "127.0.0.1:$port" --num_processes "$n" --process_id "$i" \
          "${extra[@]}" > >(sed -u "s/^/[$i] /") 2>&1 &
      pids+=($!)
    done
    # Watchdog: poll; the first process to fail takes the others down.
    status=0 left=$n
    declare -A done_
    while [ "$left" -gt 0 ]; do
      for i in "${!pids[@]}"; do
        p=${pids[$i]}
        [ -n "${done_[$i]:-}" ] && continue
        kill -0 "$p" 2>/dev/null && continue
        rc=0; wait "$p" || rc=$?
        done_[$i]=1 left=$((left - 1))
        if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
          status=$rc
          echo "launch.sh: process $i exited with status $rc; killing the others" >&2
          stop KILL
        fi
      done
      [ "$left" -gt 0 ] && sleep 0.2
    done
    wait  # the output filters.
    exit "$status"
    ;;
  *) usage ;;
esac
