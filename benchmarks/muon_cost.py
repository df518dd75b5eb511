"""What Muon costs: the train step with SGD against ``--optimizer muon`` (width-16 ResNet-18,
batch 256, bf16 + channels_last, synthetic input), alternating, 6 repeats of 10 steps each;
then the optimizer step alone for SGD, fastres' batched ``FilterMuon`` and ``per_filter``
(``torch.optim.Muon`` stepping each filter's flattened copy, what fastres ran before the
batching), alternating repeats, with the matrix products each runs per step. Times in ms.

    .venv/bin/python benchmarks/muon_cost.py [RES]      # RES: input size, default 32
    .venv/bin/python benchmarks/muon_cost.py forms [WIDTH ...]   # default 16 64

``forms`` times ``FilterMuon``'s step alone in each form of its Newton-Schulz (eager, compiled,
padded: ``--muon-newton-schulz``), alternating, with each form's matrix-product GFLOP.

``optimizer_step`` is also the GPU check's Muon section (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fastres import recipe
from fastres.config import TrainConfig
from fastres.config_checks import MUON_NEWTON_SCHULZ
from fastres.models import build_model
from fastres.muon import FilterMuon
from fastres.runtime import resolve_runtime
from fastres.train import train_step

MUON = {"lr": 0.05, "momentum": 0.95, "weight_decay": 5e-4}


class PerFilterMuon(torch.optim.Muon):
    """The reference: ``torch.optim.Muon`` on a flat copy of each filter, refreshed from the
    model before every step and written back after it (fastres' Muon before ``FilterMuon``)."""

    def __init__(self, filters: list[nn.Parameter], **options: Any) -> None:
        self.filters = list(filters)
        self.flat = [p.detach().reshape(p.shape[0], -1).clone() for p in self.filters]
        super().__init__(self.flat, **options)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for p, flat in zip(self.filters, self.flat, strict=True):
            flat.copy_(p.reshape(flat.shape))
            flat.grad = None if p.grad is None else p.grad.reshape(flat.shape)
        super().step()
        for p, flat in zip(self.filters, self.flat, strict=True):
            p.copy_(flat.view(p.shape))
            flat.grad = None


class _MatrixProducts(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.overloadpacket in (
            torch.ops.aten.mm,
            torch.ops.aten.addmm,
            torch.ops.aten.bmm,
            torch.ops.aten.baddbmm,
        ):
            self.count += 1
        return func(*args, **(kwargs or {}))


def _copies(
    device: torch.device, width: int, makers: dict[str, Any]
) -> dict[str, tuple[list[nn.Parameter], torch.optim.Optimizer]]:
    """For each maker, ResNet-18's parameters (channels_last, the same weights and fixed random
    gradients for all) and the optimizer ``make(params, filters)`` builds over them."""
    torch.manual_seed(0)
    base = build_model("resnet18", width=width).to(device, memory_format=torch.channels_last)
    grads = [torch.randn_like(p) for p in base.parameters()]
    setups = {}
    for name, make in makers.items():
        model = build_model("resnet18", width=width).to(device, memory_format=torch.channels_last)
        model.load_state_dict(base.state_dict())
        params = list(model.parameters())
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        setups[name] = (params, make(params, [p for p in params if p.ndim >= 2]))
    return setups


def _max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a, b, strict=True))


def _alternate(
    optimizers: dict[str, torch.optim.Optimizer], device: torch.device, repeats: int, steps: int
) -> dict[str, list[float]]:
    """Each optimizer's step time in ms, [median, min, max] of ``repeats`` of ``steps`` steps,
    the optimizers taking turns (one untimed step before each timed repeat)."""
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(repeats):
        for name, optimizer in optimizers.items():
            optimizer.step()
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                optimizer.step()
            sync()
            times[name].append((time.perf_counter() - start) / steps * 1000)
    return {
        name: [round(statistics.median(ms), 3), round(min(ms), 3), round(max(ms), 3)]
        for name, ms in times.items()
    }


def optimizer_step(
    device: torch.device, width: int = 64, repeats: int = 7, steps: int = 10
) -> dict[str, Any]:
    """ResNet-18's optimizer step alone (channels_last filters, fixed random gradients) for SGD,
    ``FilterMuon`` and ``PerFilterMuon``, each on its own copy of the model, alternating
    ``repeats`` times ``steps`` steps: median and range in ms, matrix products per step, and
    how far the two Muons' weights are apart after the same first step."""
    setups = _copies(
        device,
        width,
        {
            "sgd": lambda ps, fs: torch.optim.SGD(
                ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
            ),
            "muon_batched": lambda ps, fs: FilterMuon(fs, **MUON),
            "muon_per_filter": lambda ps, fs: PerFilterMuon(fs, **MUON),
        },
    )
    out: dict[str, Any] = {
        "device": str(device),
        "width": width,
        "repeats": repeats,
        "steps": steps,
        "filters": sum(p.ndim >= 2 for p in setups["sgd"][0]),
    }
    for name, (_, optimizer) in setups.items():
        with _MatrixProducts() as products:
            optimizer.step()
        out[f"{name}_matrix_products"] = products.count
    out["muon_max_abs_difference_after_one_step"] = _max_difference(
        setups["muon_batched"][0], setups["muon_per_filter"][0]
    )
    optimizers = {name: optimizer for name, (_, optimizer) in setups.items()}
    for name, ms in _alternate(optimizers, device, repeats, steps).items():
        out[f"{name}_step_ms"] = ms
    return out


def _muon_in(form: str) -> Any:
    return lambda params, filters: FilterMuon(filters, newton_schulz=form, **MUON)


def newton_schulz_forms(
    device: torch.device, width: int = 64, repeats: int = 6, steps: int = 3
) -> dict[str, Any]:
    """``FilterMuon``'s step in each Newton-Schulz form (``MUON_NEWTON_SCHULZ``) as
    :func:`optimizer_step` times it: the first step apart (the compiled form compiles there),
    then ``repeats`` alternating; with the matrix products' GFLOP of each form and how far its
    weights are from the eager form's after the first step."""
    setups = _copies(device, width, {form: _muon_in(form) for form in MUON_NEWTON_SCHULZ})
    out: dict[str, Any] = {
        "device": str(device),
        "width": width,
        "repeats": repeats,
        "steps": steps,
    }
    for form, (params, optimizer) in setups.items():
        start = time.perf_counter()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[f"{form}_first_step_s"] = round(time.perf_counter() - start, 3)
        out[f"{form}_newton_schulz_gflop"] = round(optimizer.newton_schulz_flops() / 1e9, 2)
        out[f"{form}_max_abs_difference_to_eager"] = _max_difference(setups["eager"][0], params)
    optimizers = {form: optimizer for form, (_, optimizer) in setups.items()}
    for form, ms in _alternate(optimizers, device, repeats, steps).items():
        out[f"{form}_step_ms"] = ms
    return out


def train_steps(res: int) -> dict[str, Any]:
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
    return {
        "res": res,
        **{
            f"{name}_step_ms": [round(statistics.median(v), 1), round(min(v), 1), round(max(v), 1)]
            for name, v in steps.items()
        },
    }


def main() -> None:
    cpu = torch.device("cpu")
    if sys.argv[1:2] == ["forms"]:  # Newton-Schulz's forms alone, at each WIDTH
        widths = [int(w) for w in sys.argv[2:]] or [16, 64]
        # As main's optimizer_step: more steps per repeat where a step takes milliseconds.
        forms = [newton_schulz_forms(cpu, width=w, steps=20 if w <= 16 else 3) for w in widths]
        print(json.dumps(forms, indent=1))
        return
    res = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    print(
        json.dumps(
            {
                "train_step": train_steps(res),
                "optimizer_step_width16": optimizer_step(cpu, width=16, repeats=6, steps=20),
                "optimizer_step_width64": optimizer_step(cpu, width=64, repeats=6, steps=3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
