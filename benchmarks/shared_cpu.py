"""What a run records when other processes share its CPU: the same short `quick` run alone and
beside 1..K CPU-bound processes (`python -c "while True: pass"`), alternating, with each run's
`cpu_wait` (summary.json: threads kept waiting for a CPU on average) and `train_time_s`.

    FASTRES_CIFAR10=... .venv/bin/python benchmarks/shared_cpu.py [REPEATS]   # default 2

Needs the .beton files in data/ (fastres prepare-data). Prints one JSON line per run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = [
    "--preset",
    "quick",
    "--epochs",
    "2",
    "--train-subset",
    "10240",
    "--test-subset",
    "1000",
    "--seed",
    "0",
]


def train(run_dir: Path, busy: int) -> dict:
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0)
        subprocess.run(
            [sys.executable, "-m", "fastres", "train", *RUN, "--run-dir", str(run_dir)],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "busy_processes": busy,
        "cpu_wait": round(summary["cpu_wait"], 3),
        "train_time_s": round(summary["train_time_s"], 1),
        "final_val_acc": summary["final_val_acc"],
    }


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for busy in (0, 1, 2):
                print(
                    json.dumps({"repeat": r, **train(Path(tmp) / f"r{r}-b{busy}", busy)}),
                    flush=True,
                )


if __name__ == "__main__":
    main()
