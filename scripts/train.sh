#!/usr/bin/env bash
# The main job in one command: install (idempotent), convert CIFAR-10 once, train, say where the logs are.
#   bash scripts/train.sh                      'fast' on a GPU (20 epochs); the CPU-sized 'quick' preset without one
#   bash scripts/train.sh --preset baseline    any preset, plus any `fastres train` option
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
fastres=.venv/bin/fastres

"$fastres" prepare-data --data-dir "${FASTRES_DATA_DIR:-data}"

args=("$@")
if [[ " $* " != *" --preset "* && " $* " != *" --config "* && " $* " != *" --resume "* ]]; then
  if .venv/bin/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    args=(--preset fast "${args[@]}")
  else
    echo "No CUDA GPU found: training the CPU-sized 'quick' preset instead of the GPU's 'fast' (pass --preset NAME to choose)."
    args=(--preset quick "${args[@]}")
  fi
fi
"$fastres" train --data-dir "${FASTRES_DATA_DIR:-data}" "${args[@]}"
# fastres train ends by naming what to do next: eval, report and the TensorBoard command.
