#!/usr/bin/env bash
# Runs N JAX processes on this machine as a stand-in for a multi-host pod (CPU, gloo collectives).
#
#   launch/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS -- python -m nwt_jax.train \
#       --config=configs/dvae.py:tiny --workdir=/tmp/mp_run
#
# Each process gets DEVICES_PER_PROCESS virtual CPU devices and the flags
# --coordinator_address/--num_processes/--process_id; logs go to WORKDIR-less files
# ${LOG_DIR:-/tmp}/nwt_proc_<i>.log. Exits non-zero if any process fails.
set -euo pipefail
if [[ $# -lt 4 || "$3" != "--" ]]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS -- COMMAND..." >&2
  exit 2
fi
num_processes=$1
devices=$2
shift 3
port=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
log_dir=${LOG_DIR:-/tmp}
pids=()
for ((i = 0; i < num_processes; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu \
    "$@" --coordinator_address="127.0.0.1:${port}" --num_processes="${num_processes}" \
    --process_id="${i}" >"${log_dir}/nwt_proc_${i}.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; its log: ${log_dir}/nwt_proc_${i}.log" >&2
    tail -n 20 "${log_dir}/nwt_proc_${i}.log" >&2
    status=1
  fi
done
exit $status
