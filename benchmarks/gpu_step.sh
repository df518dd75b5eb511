#!/usr/bin/env bash
# The prepared GPU calls of the captured step (benchmarks/gpu_step.py, docs/gpu-step.md), each
# under a hard limit of 8 minutes; Python and torch only, the repository on PYTHONPATH.
#
#   bash benchmarks/gpu_step.sh OUTDIR step                 call (a): the step, batch 512/128/32, every lever
#   bash benchmarks/gpu_step.sh OUTDIR epoch --cifar PATH   call (b): fast, --cuda-graph off/on, seeds 0 1
#   bash benchmarks/gpu_step.sh OUTDIR step|epoch --tiny    every code path on the CPU in seconds
#
# Further options go to gpu_step.py (--batch-sizes, --levers, --rounds, --seeds, --budget-s).
# PYTHON picks the interpreter (default python3); FASTRES_GPU_STEP_HARD_S (default 480) is the
# hard limit, past the script's own budget (420 s); the JSON keeps what was measured by then.
set -euo pipefail
if [ $# -lt 2 ] || [[ "$1" == -* ]] || { [ "$2" != step ] && [ "$2" != epoch ]; }; then
  echo "usage: bash benchmarks/gpu_step.sh OUTDIR step|epoch [--tiny] [--cifar PATH] [options of gpu_step.py]" >&2
  exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
outdir=$1
mkdir -p "$outdir"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
timeout --kill-after=10 "${FASTRES_GPU_STEP_HARD_S:-480}" "${PYTHON:-python3}" "$root/benchmarks/gpu_step.py" "$@" 2>&1 \
  | tee "$outdir/gpu_step_$2.log"
