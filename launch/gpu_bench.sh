#!/usr/bin/env bash
# The GPU bars of README "Performance" in one run, one JSON line per figure (python -m nwt_jax.bench):
#   dVAE-Adv paper_mem8 step (frames/s at 256x224), paper prior step (MFU), FAR and MAR generation
#   of 30 s of audio (RTF), each under its own time limit so one slow compile cannot eat the rest.
#
#   launch/gpu_bench.sh [OUT_DIR]        # default bench_gpu/; a summary line per figure at the end
#
# Runs from the repository root wherever it is called from (the workloads live in the clone's
# benchmarks/ folder, which is not installed). Only jax/flax/optax/orbax/numpy/absl,
# ml_collections and tqdm (the generator's progress bar) are needed; on a machine without
# ml_collections (and PyYAML) or tqdm, install them beside the tree and put them on the path:
#   pip install --no-deps --target .device_pkgs ml_collections pyyaml tqdm   # with PyPI access
#   PYTHONPATH=$PWD/.device_pkgs launch/gpu_bench.sh
# Settings (environment): DVAE (default configs/dvae.py:paper_mem8), PRIOR_SIZE (paper),
# PRIOR_BATCH (16 clips: one GPU's share of the paper's 256), STEPS (30), LIMIT (seconds per
# figure, 150), PYTHON (python3). A CPU dry run of the plumbing:
#   DVAE=configs/dvae.py:tiny PRIOR_SIZE=tiny PRIOR_BATCH=4 STEPS=3 launch/gpu_bench.sh /tmp/b
set -uo pipefail
out=${1:-bench_gpu}
dvae=${DVAE:-configs/dvae.py:paper_mem8}
size=${PRIOR_SIZE:-paper}
batch=${PRIOR_BATCH:-16}
steps=${STEPS:-30}
limit=${LIMIT:-150}
python=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)  # OUT_DIR is the caller's; the runs go from the repository root
cd "$(dirname "$0")/.." || exit 1
status=0

figure() {  # NAME BENCH_FLAGS...: one bench run, its JSON line in OUT/NAME.json, its log beside it
  local name=$1
  shift
  echo "== $name: $*" >&2
  if timeout "$limit" "$python" -m nwt_jax.bench "$@" >"$out/$name.json" 2>"$out/$name.log"; then
    tail -n 1 "$out/$name.json"
  else
    echo "$name failed or ran past ${limit}s (exit $?); see $out/$name.log" >&2
    status=1
  fi
}

figure dvae_step --what=dvae_step --config="$dvae" --steps="$steps" --warmup=3
figure prior_step --what=prior_step --config="configs/prior.py:$size,far" --dvae_config="$dvae" \
  --config.data.batch_size="$batch" --steps="$steps" --warmup=3
figure generate_far --what=generate --config="configs/prior.py:$size,far" --dvae_config="$dvae" \
  --audio_seconds=30 --nocompile_check
figure generate_mar --what=generate --config="configs/prior.py:$size,mar" --dvae_config="$dvae" \
  --audio_seconds=30 --nocompile_check

"$python" - "$out" <<'PY'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
  lines = path.read_text().strip().splitlines()
  if not lines:
    continue
  r = json.loads(lines[-1])
  extra = f"RTF {r['rtf']:.3f}" if "rtf" in r else f"utilisation {r['utilisation']:.3f}"
  print(f"{path.stem:13s} {r['device_kind']}: {r['throughput']:.1f} {r['throughput_unit']}, "
        f"step {r.get('step_s', float('nan')):.4f} s, {extra}, compile {r['compile_s']:.1f} s")
PY
exit $status
