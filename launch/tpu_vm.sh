#!/usr/bin/env bash
# Trains nwt_jax on a Cloud TPU VM slice: create it, install the project on every worker, run
# `python -m nwt_jax.train` on all workers at once, stream worker 0's log, delete the slice.
#
#   launch/tpu_vm.sh NAME ZONE ACCELERATOR -- --config=configs/dvae.py:paper_mem8 \
#       --workdir=gs://BUCKET/nwt/dvae --config.data.data_dir=gs://BUCKET/tfds
#
# e.g. ACCELERATOR=v4-32 (4 hosts x 4 chips) or v5litepod-16. Everything after `--` goes to
# nwt_jax.train. JAX finds its peers on a TPU VM by itself (jax.distributed.initialize()).
# Set KEEP=1 to keep the slice after the run, SOURCE to a git URL (default: this checkout, copied
# with `gcloud compute tpus tpu-vm scp`), RUNTIME to another TPU software version.
set -euo pipefail
if [[ $# -lt 4 || "$4" != "--" ]]; then
  echo "usage: $0 NAME ZONE ACCELERATOR -- TRAIN_FLAGS..." >&2
  exit 2
fi
name=$1 zone=$2 accelerator=$3
shift 4
runtime=${RUNTIME:-tpu-ubuntu2204-base}
repo_root=$(cd "$(dirname "$0")/.." && pwd)
ssh_all() { gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$1"; }

gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$accelerator" \
  --version="$runtime"
if [[ "${KEEP:-0}" != 1 ]]; then
  trap 'gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet' EXIT
fi

if [[ -n "${SOURCE:-}" ]]; then
  ssh_all "rm -rf nwt_jax && git clone --depth=1 '$SOURCE' nwt_jax"
else
  tarball=$(mktemp --suffix=.tar.gz)
  git -C "$repo_root" archive --format=tar.gz -o "$tarball" HEAD
  gcloud compute tpus tpu-vm scp "$tarball" "$name":nwt_jax.tar.gz --zone="$zone" --worker=all
  ssh_all "rm -rf nwt_jax && mkdir nwt_jax && tar -xzf nwt_jax.tar.gz -C nwt_jax"
fi
ssh_all "cd nwt_jax && python3 -m venv .venv && .venv/bin/pip install -q -U pip \
  && .venv/bin/pip install -q -e . 'jax[tpu]' \
     -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"

# All workers run the same command; worker 0's output streams here, the others' go to files.
train="cd nwt_jax && NWT_DISTRIBUTED=1 .venv/bin/python -m nwt_jax.train $(printf '%q ' "$@")"
ssh_all "if [[ \$(hostname) == *-w-0 ]]; then $train; else $train > train.log 2>&1; fi"
