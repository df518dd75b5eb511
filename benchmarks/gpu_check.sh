#!/usr/bin/env bash
# GPU check: the train-step sweep (every model and batch size; compiled once per model, at
# batch 512) and the GPU data path (augmentation -> train step, bf16 and fp16 + GradScaler),
# written as JSON into OUTDIR/gpu_check.json. Needs only Python and torch: nothing is
# installed, ffcv is not used, no network; the repository is put on PYTHONPATH as it is.
#
# Then, with its own time budget, end to end: one seed of the GPU preset `fast` from the
# CIFAR-10 source (--cifar PATH; docs/benchmarks.md says how to get it there) to its final
# accuracy, with --loader memory.
#
#   bash benchmarks/gpu_check.sh OUTDIR [--cifar PATH]   on an NVIDIA GPU (< 5 + 4 minutes)
#   bash benchmarks/gpu_check.sh OUTDIR --cifar PATH --e2e-only           the end-to-end run alone
#   ... --e2e-seed N                                                       that run with seed N (default 0)
#   bash benchmarks/gpu_check.sh OUTDIR --tiny [--cifar PATH]   every code path on the CPU in seconds
#
# PYTHON picks the interpreter (default python3). FASTRES_GPU_CHECK_BUDGET_S (default 270)
# is when it stops starting new measurements, FASTRES_GPU_CHECK_E2E_BUDGET_S (default 240)
# when the end-to-end run is stopped (cleanly: it keeps its summary); a hard limit of both
# budgets + 85 s stops everything for good, and the JSON, rewritten after every measurement,
# keeps what was measured by then.
set -euo pipefail
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: bash benchmarks/gpu_check.sh OUTDIR [--tiny] [--cifar PATH] [--e2e-only] [--e2e-seed N]" >&2
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
e2e_budget=${FASTRES_GPU_CHECK_E2E_BUDGET_S:-240}
export FASTRES_GPU_CHECK_E2E_BUDGET_S=$e2e_budget
hard=$(( ${budget%.*} + ${e2e_budget%.*} + 85 ))
set -o pipefail
timeout --kill-after=10 "$hard" "${PYTHON:-python3}" "$root/benchmarks/gpu_check.py" "$outdir" "$@" 2>&1 \
  | tee "$outdir/gpu_check.log"
