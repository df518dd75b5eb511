# Round 1 on the H200 (2026-11-29), the command of the first device call, run from the
# repository root at fb7f5a6 with the three pieces of the CIFAR-10 archive in runs/gpu_cifar/.
set -o pipefail; S=$(date +%s); cat runs/gpu_cifar/part_* > /tmp/c.tgz && echo "e3f08aeeb58441d80620bd765a3937c2f4cad6384c80554d4e9c2d949144098b  /tmp/c.tgz" | sha256sum -c - || exit 3
FASTRES_GPU_CHECK_BUDGET_S=150 FASTRES_GPU_CHECK_E2E_BUDGET_S=200 bash benchmarks/gpu_check.sh /tmp/gc --cifar /tmp/c.tgz
cp /tmp/gc/gpu_check.json /tmp/gc/gpu_check.log /tmp/gc/e2e.log $OUT/; cp /tmp/gc/e2e/summary.json $OUT/e2e_summary.json
L=$((570 - $(date +%s) + S)); echo "left $L s for seeds 1-4"
if [ $L -gt 120 ]; then for s in 1 2 3 4; do (FASTRES_CIFAR10=/tmp/c.tgz timeout -s TERM $L python3 -m fastres train --preset fast --loader memory --seed $s --no-progress --run-dir /tmp/f$s > /tmp/f$s.log 2>&1) & done; wait; fi
python3 - > $OUT/seeds.json <<'PY'
import json, pathlib
out = {}
for s in (1, 2, 3, 4):
    p = pathlib.Path(f"/tmp/f{s}/summary.json")
    d = json.loads(p.read_text()) if p.is_file() else {}
    log = pathlib.Path(f"/tmp/f{s}.log")
    out[s] = {k: d.get(k) for k in ("status", "epochs", "final_val_acc", "best_val_acc", "train_time_s", "compile_time_s", "compiles", "images_per_s")}
    if d.get("status") != "completed" and log.is_file():
        out[s]["log_tail"] = log.read_text()[-1500:]
print(json.dumps(out, indent=1))
PY
cat $OUT/seeds.json
