#!/usr/bin/env bash
# Round 2 on the H200 (2026-11-29, run from the repository root at fb7f5a6): fast at 20 epochs, SGD vs Muon, paired seeds, run
# concurrently (accuracy only); then solo runs for time.
set -u
S=$(date +%s); el() { echo $(( $(date +%s) - S )); }
cat runs/gpu_cifar/part_* > /tmp/c.tgz && echo "e3f08aeeb58441d80620bd765a3937c2f4cad6384c80554d4e9c2d949144098b  /tmp/c.tgz" | sha256sum -c - || exit 3
export FASTRES_CIFAR10=/tmp/c.tgz PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p /tmp/r
run() {  # name seed cap_s args...
  local name=$1 seed=$2 cap=$3; shift 3
  timeout -s TERM -k 20 "$cap" python3 -m fastres train --preset fast --loader memory --seed "$seed" --no-progress \
    --run-dir "/tmp/r/$name-s$seed" "$@" > "/tmp/r/$name-s$seed.log" 2>&1
}
run warm 0 100 --epochs 1 --warmup-epochs 0; echo "[$(el)s] compile cache warmed"
export TORCHINDUCTOR_COMPILE_THREADS=2
for s in 0 1 2; do run sgd20 $s 230 --epochs 20 & done
for s in 0 1 2 3 4; do run muon20 $s 230 --epochs 20 --optimizer muon & done
wait; echo "[$(el)s] concurrent runs done"
unset TORCHINDUCTOR_COMPILE_THREADS
L=$((395 - $(el))); if [ $L -gt 90 ]; then run muon20solo 0 $L --epochs 20 --optimizer muon; fi; echo "[$(el)s] muon solo"
L=$((395 - $(el))); if [ $L -gt 60 ]; then run eager18solo 0 $L --compile off; fi; echo "[$(el)s] eager solo"
python3 - > "$OUT/round2.json" <<'PY'
import json, pathlib
out = {}
for d in sorted(pathlib.Path("/tmp/r").iterdir()):
    if not d.is_dir():
        continue
    p = d / "summary.json"
    s = json.loads(p.read_text()) if p.is_file() else {}
    out[d.name] = {k: s.get(k) for k in ("status", "epochs", "final_val_acc", "train_time_s", "images_per_s",
                                          "compile", "compile_time_s", "compiles", "optimizer")}
    if s.get("status") != "completed":
        out[d.name]["log_tail"] = pathlib.Path(f"{d}.log").read_text()[-1200:]
print(json.dumps(out, indent=1))
PY
cat "$OUT/round2.json"
for f in /tmp/r/*.log; do echo "== $f"; cat "$f"; done > "$OUT/round2_logs.txt"
echo "[$(el)s] done"
