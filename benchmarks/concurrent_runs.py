"""Several runs side by side against one at a time: ``fastres ablate --runs-per-device K``
(each of K concurrent runs gets its share of the cores, or of the GPU) against ``K = 1``, the
same study alternating, so both see the same machine.

    .venv/bin/python benchmarks/concurrent_runs.py [--k 2] [--repeats 2] [-- TRAIN OPTIONS]

Prints, per study, its wall time, each run's training rate (the mean of its epochs'
``images_per_s``), the aggregate training rate while K runs train together (K x that), and
the end-to-end rate (all training images over the study's wall time, start-up and test
passes included), then the ratios of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastres.rundir import RunDir

DEFAULT = ["--config", "quick", "--epochs", "2", "--train-subset", "10240", "--test-subset", "2000"]


def one_study(k: int, runs: int, options: list[str], out: Path) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "fastres",
        "ablate",
        *options,
        "--seeds",
        str(runs),
        "--runs-per-device",
        str(k),
        "--out",
        str(out),
    ]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    rows = [row for path in sorted(out.glob("*/seed*")) for row in RunDir(path).read_metrics()]
    images = sum(row["images_per_s"] * row["epoch_time_s"] for row in rows)
    per_run = statistics.mean(row["images_per_s"] for row in rows)
    return {
        "k": k,
        "wall_s": wall,
        "per_run_images_per_s": per_run,
        "train_images_per_s": k * per_run,
        "end_to_end_images_per_s": images / wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=2, help="runs side by side (default 2)")
    p.add_argument(
        "--repeats", type=int, default=2, help="studies per setting, alternating (default 2)"
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "options", nargs="*", help=f"fastres ablate options (default: {' '.join(DEFAULT)})"
    )
    args = p.parse_args()
    options = args.options or DEFAULT
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for k in (1, args.k):
                r = one_study(k, args.k, options, Path(tmp) / f"k{k}-{repeat}")
                results.append(r)
                print(
                    f"K={k}: {args.k} runs in {r['wall_s']:.1f} s; {r['per_run_images_per_s']:.0f} "
                    "img/s per run, "
                    f"{r['train_images_per_s']:.0f} img/s while {k} train, end to end "
                    f"{r['end_to_end_images_per_s']:.0f} img/s",
                    flush=True,
                )
    for field in (
        "wall_s",
        "per_run_images_per_s",
        "train_images_per_s",
        "end_to_end_images_per_s",
    ):
        one = statistics.median(r[field] for r in results if r["k"] == 1)
        many = statistics.median(r[field] for r in results if r["k"] == args.k)
        print(f"{field}: K={args.k} / K=1 = {many / one:.2f} (medians {many:.0f} / {one:.0f})")
    if args.json:
        args.json.write_text(
            json.dumps({"options": options, "k": args.k, "results": results}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
