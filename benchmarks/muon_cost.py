"""The train step with SGD against ``--optimizer muon`` (width-16 ResNet-18, batch 256, bf16 +
channels_last, synthetic input), alternating, 6 repeats of 10 steps each; and the optimizer
step alone (mean of 20). Times in ms.

    .venv/bin/python benchmarks/muon_cost.py [RES]      # RES: input size, default 32
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from fastres import recipe
from fastres.config import TrainConfig
from fastres.models import build_model
from fastres.runtime import resolve_runtime
from fastres.train import train_step


def main() -> None:
    res = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    torch.manual_seed(0)
    setups = {}
    for name in ("sgd", "muon"):
        config = TrainConfig(width=16, batch_size=256, optimizer=name, device="cpu")
        model = build_model("resnet18", width=16).to(memory_format=torch.channels_last)
        setups[name] = (model, recipe.build_optimizer(model, config), resolve_runtime(config))
    criterion = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = torch.randn(256, 3, res, res).to(memory_format=torch.channels_last, dtype=torch.bfloat16)
    y = torch.randint(0, 10, (256,))
    steps: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(6):
        for name, (model, optimizer, runtime) in setups.items():
            for _ in range(2):
                train_step(model, criterion, optimizer, scaler, runtime, x, y)
            t = time.perf_counter()
            for _ in range(10):
                train_step(model, criterion, optimizer, scaler, runtime, x, y)
            steps[name].append((time.perf_counter() - t) / 10 * 1000)
    out: dict[str, object] = {"res": res}
    for name, (model, optimizer, _runtime) in setups.items():
        out[f"{name}_step_ms"] = [round(statistics.median(steps[name]), 1), round(min(steps[name]), 1),
                                  round(max(steps[name]), 1)]
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        t = time.perf_counter()
        for _ in range(20):
            optimizer.step()
        out[f"{name}_optimizer_step_ms"] = round((time.perf_counter() - t) / 20 * 1000, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
