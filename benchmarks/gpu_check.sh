#!/usr/bin/env bash
# GPU check: the train-step sweep (every model and batch size; compiled once per model, at
# batch 512) and the GPU data path (augmentation -> train step, bf16 and fp16 + GradScaler),
# written as JSON into OUTDIR/gpu_check.json. Needs only Python and torch: nothing is
# installed, ffcv is not used, no network; the repository is put on PYTHONPATH as it is.
#
#   bash benchmarks/gpu_check.sh OUTDIR           on a machine with an NVIDIA GPU (< 5 minutes)
#   bash benchmarks/gpu_check.sh OUTDIR --tiny    every code path on the CPU in seconds (the tests run this)
#
# PYTHON picks the interpreter (default python3). FASTRES_GPU_CHECK_BUDGET_S (default 270)
# is when it stops starting new measurements; a hard limit of budget + 25 s stops it for
# good, and the JSON, rewritten after every measurement, keeps what was measured by then.
set -euo pipefail
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: bash benchmarks/gpu_check.sh OUTDIR [--tiny]" >&2
  exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
outdir=$1
shift
mkdir -p "$outdir"
budget=${FASTRES_GPU_CHECK_BUDGET_S:-270}
export FASTRES_GPU_CHECK_BUDGET_S=$budget
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
hard=$(( ${budget%.*} + 25 ))
set -o pipefail
timeout --kill-after=10 "$hard" "${PYTHON:-python3}" "$root/benchmarks/gpu_check.py" "$outdir" "$@" 2>&1 \
  | tee "$outdir/gpu_check.log"
