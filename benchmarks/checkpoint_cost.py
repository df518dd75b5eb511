"""What a checkpoint costs: fastres' verified, atomic write and load of a full-width
ResNet-18's training state, next to a bare ``torch.save``.

    .venv/bin/python benchmarks/checkpoint_cost.py [--repeats 3] [--model resnet18]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fastres import checkpoint
from fastres.models import build_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    model = build_model(args.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # so the momentum buffers exist, as in a real checkpoint
    state = checkpoint.to_cpu(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": 1,
            "rng": checkpoint.capture_rng(),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        last, plain = Path(tmp) / "last.pt", Path(tmp) / "plain.pt"
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            checkpoint.save(state, last)
            t1 = time.perf_counter()
            torch.save(state, plain)
            t2 = time.perf_counter()
            checkpoint.load(last)
            t3 = time.perf_counter()
            print(
                f"{args.model}: fastres save {t1 - t0:.3f}s (digest, fsync, rename), bare "
                "torch.save "
                f"{t2 - t1:.3f}s, verified load {t3 - t2:.3f}s, {last.stat().st_size / 1e6:.1f} MB",
                flush=True,
            )


if __name__ == "__main__":
    main()
