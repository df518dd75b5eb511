"""Operators dispatched per training step on the CPU (``fastres.bench.opcount``): ResNet-18
with SGD and with Muon, without and with the weight average, for today's eager step and the
step a CUDA graph holds (``--cuda-graph on``), as a Markdown table; then Muon's optimizer step
for each form of its Newton-Schulz (``--muon-newton-schulz``; the compiled one is compiled by
inductor, a minute on a CPU). ``--json FILE`` keeps each count's operators by name.

    PYTHONPATH=. .venv/bin/python benchmarks/op_count.py [--width 64] [--json FILE]

Counts do not depend on the machine's speed or load (BENCHMARKS.md "Operators per step").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastres.bench.opcount import STEPS, count_muon_forms, count_step_ops

EMA_DECAY = 0.99


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="op_count", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--width", type=int, default=64, help="ResNet-18's width (counts do not depend on it)"
    )
    p.add_argument("--json", type=Path, help="also write every count, with its operators by name")
    args = p.parse_args(argv)
    rows = [
        count_step_ops(optimizer=opt, ema=ema, step=step, width=args.width)
        for opt in ("sgd", "muon")
        for ema in (0.0, EMA_DECAY)
        for step in STEPS
    ]
    print(
        "| optimizer | EMA | step | operators | forward + backward | optimizer + EMA "
        "| host ops with a CUDA graph |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['optimizer']} | {'on' if r['ema'] else 'off'} | {r['step']} | {r['total']} | "
            f"{r['forward_backward']} | {r['optimizer_and_average']} | "
            f"{r.get('host_ops_with_graph', '-')} |"
        )
    forms = count_muon_forms(width=args.width)
    print()
    print(
        "| Newton-Schulz | its operators (compiled: kernels) | matrix products "
        "| rest of Muon's step | Muon's step | matrix GFLOP |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in forms:
        print(
            f"| {r['form']} | {r['newton_schulz']} | {r['matrix_products']} | {r['rest']} | "
            f"{r['total']} | {r['flops'] / 1e9:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"steps": rows, "muon_forms": forms}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
