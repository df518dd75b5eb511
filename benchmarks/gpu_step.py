"""The prepared GPU calls of the captured step (docs/gpu-step.md), each at most 8 minutes.

Run through ``benchmarks/gpu_step.sh OUTDIR step|epoch`` (PYTHONPATH set to the repository;
only torch is needed). Each call rewrites its JSON after every measurement, so a call stopped
by its time limit keeps what it measured (``"complete": false``).

``step`` (call a): ResNet-18's training step at batch 512, 128 and 32 (that order: most wanted
first), bf16 + channels_last, synthetic input already on the GPU, for every lever in LEVERS.
Per batch size every lever is built and run once (its first call apart: compile, and for the
graph levers the warm-up and capture, reported as ``first_step_s`` and ``setup_s``), then the
levers take turns, A B C ... A B C ..., ``--rounds`` times; the rate is the median round.
Levers that compile (the model, or Muon's Newton-Schulz) are skipped once less than
COMPILE_RESERVE_S of the budget is left.

``epoch`` (call b): the GPU preset ``fast`` trained from the CIFAR-10 source (``--cifar``) with
``--cuda-graph off`` and ``on``, alternating, for each of ``--seeds``; final accuracy, epoch
times and each epoch's training rate, set against call (a)'s rate of the same step at batch
512 when OUTDIR holds its gpu_step.json (``kept``: the epoch's rate over the step's).

``--tiny`` runs either on the CPU in seconds (width 8, batch 4, torch.compile's "eager"
backend, the graph levers uncaptured; ``fast`` at width 8 for 2 epochs of 500 images).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_budget import TINY_TRAIN_ARGS, BudgetedDoc, run_stopping_cleanly

SCHEMA = "fastres-gpu-step/1"
COMPILE_RESERVE_S = 60.0  # do not start a compiled lever with less budget left than this
RUN_RESERVE_S = 120.0  # do not start a training run of call (b) with less left than this


@dataclass(frozen=True)
class Lever:
    optimizer: str = "sgd"
    compile: bool = False
    compile_mode: str | None = None  # inductor's mode; None: its default (no CUDA graphs)
    fused: bool = False  # SGD's fused implementation in the eager step
    graph: bool = False  # fastres.step.GraphStep: one CUDA graph per step
    newton_schulz: str = "eager"  # Muon's form of it (fastres.muon.NewtonSchulz)

    @property
    def compiles(self) -> bool:
        return self.compile or self.newton_schulz == "compiled"


# The step as the trainer runs it (train_step), or as --cuda-graph on runs it (GraphStep).
LEVERS = {
    "eager": Lever(),
    "fused": Lever(fused=True),
    "graph": Lever(graph=True),
    "compile": Lever(compile=True),
    "compile_graph": Lever(compile=True, graph=True),
    "compile_reduce_overhead": Lever(compile=True, compile_mode="reduce-overhead"),
    "muon": Lever(optimizer="muon"),
    "muon_graph": Lever(optimizer="muon", graph=True),
    "muon_compile": Lever(optimizer="muon", compile=True),
    "muon_compile_graph": Lever(optimizer="muon", compile=True, graph=True),
    # Fewer launches without a graph: Newton-Schulz as one compiled graph, or in one padded stack.
    "muon_ns_compiled": Lever(optimizer="muon", newton_schulz="compiled"),
    "muon_ns_padded": Lever(optimizer="muon", newton_schulz="padded"),
}
# Call (b)'s runs and the lever of call (a) that is the same step (fast compiles on CUDA).
EPOCH_LEVERS = {"off": "muon_compile", "on": "muon_compile_graph"}
EPOCH_FIELDS = (
    "status",
    "epochs",
    "epochs_planned",
    "final_val_acc",
    "train_time_s",
    "images_per_s",
    "compile",
    "compile_time_s",
    "compiles",
    "precision",
    "device",
    "cpu_wait",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_step", description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", help="folder for gpu_step.json / gpu_epoch.json")
    p.add_argument("call", choices=("step", "epoch"), help="step: call (a); epoch: call (b)")
    p.add_argument("--tiny", action="store_true", help="every code path on the CPU in seconds")
    p.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="stop starting measurements (runs) after this many seconds (default 420)",
    )
    p.add_argument(
        "--batch-sizes", type=int, nargs="+", help="call (a)'s batch sizes (default 512 128 32)"
    )
    p.add_argument(
        "--levers", nargs="+", choices=list(LEVERS), help="call (a)'s levers (default all)"
    )
    p.add_argument("--rounds", type=int, help="call (a)'s turns of every lever (default 5; tiny 2)")
    p.add_argument(
        "--cifar",
        default=os.environ.get("FASTRES_GPU_CHECK_CIFAR", ""),
        help="call (b): the CIFAR-10 source (cifar-10-batches-py, its parent, or a .tar.gz of it)",
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="call (b)'s seeds (default 0 1)"
    )
    p.add_argument(
        "--run-budget-s",
        type=float,
        default=170.0,
        help="call (b): a run still going after this long is stopped cleanly (default 170)",
    )
    return p.parse_args(argv)


def new_doc(path: Path, call: str, tiny: bool, budget_s: float, device: Any) -> BudgetedDoc:
    """The call's JSON, rewritten after every measurement, and its clock."""
    from fastres.bench import machine_info

    doc = BudgetedDoc(path, budget_s)
    doc.doc = {
        "schema": SCHEMA,
        "call": call,
        "mode": "tiny" if tiny else "full",
        "complete": False,
        "machine": machine_info(device),
        "settings": {},
        "records": [],
        "errors": [],
        "elapsed_s": 0.0,
    }
    doc.write()
    return doc


# --- call (a): the step ------------------------------------------------------------------


class LeverStep:
    """One lever at one batch size: its own model, optimizer and fixed input, ready to step."""

    def __init__(self, lever: Lever, batch: int, device: Any, width: int, backend: str) -> None:
        import torch
        from torch import nn

        from fastres import recipe
        from fastres.models import build_model
        from fastres.presets import get_preset
        from fastres.runtime import Runtime, compile_module
        from fastres.step import GraphStep

        self.torch, self.device = torch, device
        torch.manual_seed(0)
        config = get_preset("fast").replace(
            optimizer=lever.optimizer,
            width=width,
            batch_size=batch,
            muon_newton_schulz=lever.newton_schulz,
        )
        self.runtime = Runtime(
            device, str(device), "bf16", compile=lever.compile, channels_last=True
        )
        net = self.runtime.place(build_model(config.model, norm=config.norm, width=width))
        self.optimizer = recipe.build_optimizer(net, config, compile_backend=backend)
        if lever.fused:
            for group in self.optimizer.param_groups:
                if "fused" in group:
                    group["fused"], group["foreach"] = True, False
        self.forward = (
            compile_module(net, backend, mode=lever.compile_mode) if lever.compile else net
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.graph = (
            GraphStep(
                self.forward,
                net,
                self.criterion,
                self.optimizer,
                self.runtime,
                batch_size=batch,
                log=lambda line: print(f"        {line}", flush=True),
            )
            if lever.graph
            else None
        )
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 3, 32, 32, generator=gen).to(
            device, torch.bfloat16, memory_format=torch.channels_last
        )
        self.labels = torch.randint(0, 10, (batch,), generator=gen).to(device)

    def run(self, steps: int) -> float:
        """``steps`` steps; the synchronised wall time in seconds."""
        from fastres.bench import synchronize
        from fastres.step import train_step

        synchronize(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            if self.graph is not None:
                self.graph(self.x, self.labels)
            else:
                train_step(
                    self.forward,
                    self.criterion,
                    self.optimizer,
                    self.scaler,
                    self.runtime,
                    self.x,
                    self.labels,
                )
        synchronize(self.device)
        return time.perf_counter() - t0


def call_step(args: argparse.Namespace, outdir: Path) -> int:
    import torch

    from fastres.runtime import set_deterministic

    tiny = args.tiny
    if tiny:
        torch.set_num_threads(1)
        device, width, backend, batches = torch.device("cpu"), 8, "eager", [4]
        rounds, min_round_s, warmup, max_steps = 2, 0.0, 5, 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_step: no CUDA GPU is visible; run with --tiny for the CPU mode")
        device, width, backend, batches = (
            torch.device("cuda", torch.cuda.current_device()),
            64,
            "inductor",
            [512, 128, 32],
        )
        rounds, min_round_s, warmup, max_steps = 5, 0.2, 8, 200
    batches = args.batch_sizes or batches
    rounds = args.rounds or rounds
    names = args.levers or list(LEVERS)
    set_deterministic(False)  # the trainer's setting: cuDNN autotunes
    doc = new_doc(outdir / "gpu_step.json", "step", tiny, args.budget_s, device)
    doc.doc["settings"] = {
        "model": "resnet18",
        "width": width,
        "precision": "bf16",
        "channels_last": True,
        "batch_sizes": batches,
        "levers": names,
        "rounds": rounds,
        "min_round_s": min_round_s,
        "warmup_steps": warmup,
        "compile_backend": backend,
        "budget_s": args.budget_s,
        "levers_defined": {n: dataclasses.asdict(LEVERS[n]) for n in names},
    }
    doc.write()
    for batch in batches:
        built: dict[str, tuple[LeverStep, dict[str, Any], int]] = {}
        for name in names:
            lever = LEVERS[name]
            record: dict[str, Any] = {
                "batch_size": batch,
                "lever": name,
                "status": "skipped",
                "reason": None,
                "first_step_s": None,
                "setup_s": None,
                "steps_per_round": None,
                "round_images_per_s": [],
                "images_per_s": None,
                "step_ms": None,
            }
            doc.doc["records"].append(record)
            if doc.left() < (COMPILE_RESERVE_S if lever.compiles and not tiny else 5):
                record["reason"] = f"time budget ({args.budget_s:.0f}s) spent"
                doc.say(f"b{batch} {name}: skipped ({record['reason']})")
                doc.write()
                continue
            try:
                step = LeverStep(lever, batch, device, width, backend)
                record["first_step_s"] = round(step.run(1), 4)  # compile included
                t = step.run(warmup)  # graph levers warm up and capture here
                record["setup_s"] = round(record["first_step_s"] + t, 4)
                per_step = step.run(2) / 2
                steps = max(1, min(max_steps, math.ceil(min_round_s / max(per_step, 1e-9))))
                record["steps_per_round"] = steps
                if step.graph is not None:
                    record["graph"] = step.graph.describe()
                built[name] = (step, record, steps)
                record["status"] = "built"
            except Exception as exc:  # noqa: BLE001 - one lever failing must not lose the others
                record.update(status="error", reason=f"{type(exc).__name__}: {exc}"[:300])
                doc.error(f"b{batch} {name}")
            doc.say(
                f"b{batch} {name}: {record['status']}, first step {record['first_step_s']}s, "
                f"setup {record['setup_s']}s"
            )
            doc.write()
        for _ in range(rounds):  # A B C ... A B C ...: drift of the machine spreads over all levers
            for name, (step, record, steps) in built.items():
                if record["status"] == "error":
                    continue
                try:
                    seconds = step.run(steps)
                    record["round_images_per_s"].append(round(batch * steps / seconds, 1))
                    rate = statistics.median(record["round_images_per_s"])
                    record.update(
                        status="ok",
                        images_per_s=round(rate, 1),
                        step_ms=round(1000 * batch / rate, 4),
                    )
                except Exception as exc:  # noqa: BLE001
                    record.update(status="error", reason=f"{type(exc).__name__}: {exc}"[:300])
                    doc.error(f"b{batch} {name} round")
                doc.write()
        for name, (step, record, _) in built.items():
            if step.graph is not None:
                record["graph"] = step.graph.describe()
            doc.say(
                f"b{batch} {name}: {record['images_per_s']} img/s "
                f"(rounds {record['round_images_per_s']})"
            )
        built.clear()
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    doc.doc["complete"] = True
    doc.write()
    if tiny:
        print("(tiny mode: every code path on the CPU; the numbers are not measurements)")
    return 1 if doc.doc["errors"] else 0


# --- call (b): the epoch ------------------------------------------------------------------


def step_rates(outdir: Path) -> dict[str, float]:
    """Call (a)'s batch-512 rates by lever, when OUTDIR holds its JSON."""
    path = outdir / "gpu_step.json"
    if not path.is_file():
        return {}
    records = json.loads(path.read_text()).get("records", [])
    return {
        r["lever"]: r["images_per_s"]
        for r in records
        if r["batch_size"] == 512 and r["images_per_s"]
    }


def call_epoch(args: argparse.Namespace, outdir: Path) -> int:
    import torch

    device = torch.device("cpu") if args.tiny else torch.device("cuda")
    doc = new_doc(outdir / "gpu_epoch.json", "epoch", args.tiny, args.budget_s, device)
    doc.doc["settings"] = {
        "preset": "fast",
        "seeds": args.seeds,
        "run_budget_s": args.run_budget_s,
        "budget_s": args.budget_s,
        "step_levers": EPOCH_LEVERS,
    }
    doc.write()
    if not args.cifar:
        raise SystemExit(
            "gpu_step epoch: pass --cifar PATH (the CIFAR-10 source) or set FASTRES_GPU_CHECK_CIFAR"
        )
    rates = step_rates(outdir)
    env = {**os.environ, "FASTRES_CIFAR10": str(Path(args.cifar).resolve())}
    for seed in args.seeds:
        for graph in EPOCH_LEVERS:  # off, on: alternating, seed by seed
            run_dir = outdir / f"fast-s{seed}-graph-{graph}"
            command = [
                sys.executable,
                "-m",
                "fastres",
                "train",
                "--preset",
                "fast",
                "--loader",
                "memory",
                "--seed",
                str(seed),
                "--cuda-graph",
                graph,
                "--no-progress",
                "--run-dir",
                str(run_dir),
                *(TINY_TRAIN_ARGS if args.tiny else []),
            ]
            entry: dict[str, Any] = {
                "seed": seed,
                "cuda_graph": graph,
                "command": command[1:],
                "status": "skipped",
            }
            doc.doc["records"].append(entry)
            if doc.left() < (RUN_RESERVE_S if not args.tiny else 5):
                entry["reason"] = f"time budget ({args.budget_s:.0f}s) spent"
                doc.write()
                continue
            returncode, wall = run_stopping_cleanly(
                command, outdir / f"{run_dir.name}.log", env, args.run_budget_s
            )
            entry["wall_s"], entry["returncode"] = round(wall, 1), returncode
            summary_path = run_dir / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
            entry.update({k: summary.get(k) for k in EPOCH_FIELDS})
            entry["cuda_graph_steps"] = summary.get(
                "cuda_graph_steps"
            )  # how the steps ran: replays, eager
            entry["status"] = summary.get("status") or "failed"
            rows = (
                [
                    json.loads(line)
                    for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                    if line.strip()
                ]
                if (run_dir / "metrics.jsonl").is_file()
                else []
            )
            entry["epoch_time_s"] = [round(r["epoch_time_s"], 3) for r in rows]
            entry["epoch_images_per_s"] = [round(r["images_per_s"]) for r in rows]
            step_rate = rates.get(EPOCH_LEVERS[graph])
            later = entry["epoch_images_per_s"][1:]  # the first epoch compiles and captures
            entry["step_images_per_s"] = step_rate
            entry["kept"] = (
                round(statistics.median(later) / step_rate, 3) if step_rate and later else None
            )
            if entry["status"] != "completed":
                doc.doc["errors"].append(
                    {
                        "what": f"fast seed {seed} --cuda-graph {graph}: {entry['status']}",
                        "traceback": (outdir / f"{run_dir.name}.log").read_text()[-2000:],
                    }
                )
            doc.say(
                f"fast seed {seed} --cuda-graph {graph}: {entry['status']}, final accuracy "
                f"{entry['final_val_acc']}, train_time_s {entry['train_time_s']}, "
                f"epochs {entry['epoch_time_s']}"
            )
            doc.write()
    doc.doc["complete"] = True
    doc.write()
    return 1 if doc.doc["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    return call_step(args, outdir) if args.call == "step" else call_epoch(args, outdir)


if __name__ == "__main__":
    sys.exit(main())
