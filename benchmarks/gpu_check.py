"""The GPU check: train-step sweep and GPU data path, on a machine that has only torch.

Run through ``benchmarks/gpu_check.sh OUTDIR`` (which sets PYTHONPATH to the repository, so
nothing needs installing; ffcv is not used). Writes ``OUTDIR/gpu_check.json`` after every
measurement, so a run stopped by its time limit still leaves what it measured
(``"complete": false``).

Full mode (a CUDA GPU), in priority order so the most wanted numbers come first:

1. ResNet-18 at batch 512, the fastres path with torch.compile (bf16, channels_last):
   the headline number (aim: >= 30,000 images/s on an H100).
2. The eager sweep: every model and batch size, ``baseline`` (fp32, NCHW, eager) and
   ``fastres_eager`` (fastres' precision and channels_last, no compile).
3. The data path: synthetic uint8 batches already on the GPU -> BatchAugment -> train step,
   bf16 and fp16 with GradScaler, next to the same step without augmentation.
4. Muon's optimizer step on full-width ResNet-18 (``benchmarks/muon_cost.py``): fastres'
   batched ``FilterMuon`` against ``torch.optim.Muon`` stepping each filter (fastres before
   the batching) and SGD, in ms, with the matrix products each launches per step.
5. CUDA graphs: ResNet-18 compiled with ``mode="reduce-overhead"`` at batch 512 and 128 (on a
   GPU whose kernel launches are slow the step waits on the host; a graph is one launch).
6. ResNet-34 and ResNet-50 compiled at batch 512, while the time budget allows.

Compilation happens once per model (ResNet-18: also twice for CUDA graphs), at one batch
size, so the whole check fits in five minutes; what the budget leaves out is recorded as
skipped.

7. End to end, with its own time budget (``--e2e-budget-s``, default 240 s): one seed of the
   GPU preset ``fast`` through ``fastres train --loader memory`` (no ffcv needed), reading the
   CIFAR-10 source named by ``--cifar`` (a ``cifar-10-batches-py`` folder, its parent, or a
   ``.tar.gz`` of it, read by fastres as any source; docs/benchmarks.md says how to get it
   there in pieces). Recorded under
   ``end_to_end``: final accuracy, epochs, ``train_time_s``, compile time and compiles, each
   epoch's time and the time outside the epochs (``time``: start-up included). A run the
   budget stops is stopped cleanly (SIGTERM: it keeps its summary) and recorded with the
   epochs it reached. ``--e2e-only`` skips sections 1-6; ``--e2e-seed N`` trains seed N
   (default 0), so a later check adds a seed to those already measured.

``--tiny`` (or FASTRES_GPU_CHECK_TINY=1) runs every code path above on the CPU in seconds:
width-8 models, batch sizes 2 and 4, one step per repeat, torch.compile with the "eager"
backend (dynamo's graph capture without inductor's C++ build, which takes minutes on CPU);
the end-to-end run is ``fast`` at width 8 for 2 epochs of 500 images, without compile.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from gpu_budget import TINY_TRAIN_ARGS, BudgetedDoc, run_stopping_cleanly

SCHEMA = "fastres-gpu-check/1"
TARGET_IMAGES_PER_S = 30_000  # ResNet-18, batch 512, bf16 + channels_last + compile, H100
COMPILE_BATCH = 512
COMPILE_RESERVE_S = 75.0  # do not start a compile with less budget left than this
CUDAGRAPHS = "fastres_cudagraphs"  # the compiled fastres path with mode="reduce-overhead"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", help="folder for gpu_check.json")
    p.add_argument(
        "--tiny",
        action="store_true",
        default=os.environ.get("FASTRES_GPU_CHECK_TINY", "") == "1",
        help="run every code path on the CPU in seconds (width 8, tiny batches)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=float(os.environ.get("FASTRES_GPU_CHECK_BUDGET_S", 270)),
        help="stop starting new measurements after this many seconds (default 270)",
    )
    p.add_argument(
        "--cifar",
        default=os.environ.get("FASTRES_GPU_CHECK_CIFAR", ""),
        help="CIFAR-10 source for the end-to-end run: cifar-10-batches-py, its parent folder, or a "
        ".tar.gz of it (default $FASTRES_GPU_CHECK_CIFAR; none: the section is skipped)",
    )
    p.add_argument(
        "--e2e-budget-s",
        type=float,
        default=float(os.environ.get("FASTRES_GPU_CHECK_E2E_BUDGET_S", 240)),
        help="time limit of the end-to-end run (default 240)",
    )
    p.add_argument("--e2e-only", action="store_true", help="run only the end-to-end section")
    p.add_argument(
        "--e2e-seed",
        type=int,
        default=0,
        help=(
            "the seed the end-to-end run trains (default 0; another adds a seed to those measured)"
        ),
    )
    return p.parse_args(argv)


E2E_PRESET = "fast"
E2E_FIELDS = (
    "status",
    "epochs",
    "epochs_planned",
    "final_val_acc",
    "best_val_acc",
    "train_time_s",
    "images_per_s",
    "compile",
    "compile_time_s",
    "compiles",
    "recompile_limit_hit",
    "precision",
    "device",
    "loader",
    "cpu_wait",
)


class Check(BudgetedDoc):
    """Collects records and rewrites the JSON after each, against a time budget."""

    def __init__(self, outdir: Path, tiny: bool, budget_s: float) -> None:
        import torch

        from fastres import bench

        super().__init__(outdir / "gpu_check.json", budget_s)
        self.bench = bench
        self.tiny = tiny
        if tiny:
            torch.set_num_threads(1)  # a smoke test: one thread never stalls on shared cores
            self.device = torch.device("cpu")
            self.models, self.batch_sizes, self.width = list(bench.MODEL_NAMES), [2, 4], 8
            self.timing = bench.QUICK_TIMING
            self.compile_backend, self.compile_batch, self.data_batch = "eager", 4, 4
            self.cudagraph_batches = (4, 2)
        else:
            if not torch.cuda.is_available():
                raise SystemExit(
                    "gpu_check: no CUDA GPU is visible; run with --tiny for the CPU mode"
                )
            self.device = torch.device("cuda", torch.cuda.current_device())
            self.models, self.batch_sizes, self.width = (
                list(bench.MODEL_NAMES),
                list(bench.DEFAULT_BATCH_SIZES),
                64,
            )
            # GPU steps take milliseconds: short repeats give a stable median and keep the sweep
            # short.
            self.timing = bench.Timing(warmup=3, repeats=5, min_repeat_s=0.15, max_steps=100)
            self.compile_backend, self.compile_batch, self.data_batch = (
                "inductor",
                COMPILE_BATCH,
                COMPILE_BATCH,
            )
            self.cudagraph_batches = (COMPILE_BATCH, 128)
        fast = bench.fastres_runtime(self.device)
        if tiny:
            fast = dataclasses.replace(
                fast, precision="bf16"
            )  # the GPU's precision, whatever this CPU has
        self.fast_eager = dataclasses.replace(fast, compile=False)
        self.fast_compiled = dataclasses.replace(fast, compile=True)
        self.doc: dict[str, Any] = {
            "schema": SCHEMA,
            "mode": "tiny" if tiny else "full",
            "complete": False,
            "machine": bench.machine_info(self.device),
            "settings": {
                "models": self.models,
                "batch_sizes": self.batch_sizes,
                "width": self.width,
                "warmup": self.timing.warmup,
                "repeats": self.timing.repeats,
                "min_repeat_s": self.timing.min_repeat_s,
                "compile_batch_size": self.compile_batch,
                "compile_backend": self.compile_backend,
                "budget_s": budget_s,
                "fastres": {"precision": fast.precision, "channels_last": fast.channels_last},
            },
            "target": {
                "model": "resnet18",
                "batch_size": COMPILE_BATCH,
                "images_per_s": TARGET_IMAGES_PER_S,
            },
            "records": [],
            "data_path": [],
            "errors": [],
            "elapsed_s": 0.0,
        }
        self.write()

    def skipped(
        self, model: str, batch: int, config: str, runtime: Any, reason: str, **extra: Any
    ) -> dict:
        record = self.bench.base_record(
            model, batch, "train", config, runtime, self.width, extra.get("augment", False)
        )
        record.update(status="skipped", reason=reason)
        return record

    def measure(
        self,
        model: str,
        batch: int,
        config: str,
        runtime: Any,
        *,
        augment: bool = False,
        needs_s: float = 0.0,
        compile_mode: str | None = None,
    ) -> dict:
        label = f"{model} b{batch} {config}{' +augment' if augment else ''}"
        if self.left() < needs_s:
            record = self.skipped(
                model,
                batch,
                config,
                runtime,
                f"skipped: time budget ({self.budget_s:.0f}s) spent",
                augment=augment,
            )
        else:
            try:
                record = self.bench.measure_step(
                    model,
                    batch,
                    "train",
                    config,
                    device=self.device,
                    width=self.width,
                    timing=self.timing,
                    runtime=runtime,
                    compile_backend=self.compile_backend,
                    augment=augment,
                    compile_mode=compile_mode,
                )
            except Exception as exc:  # noqa: BLE001 - one failure must not lose the rest of the check
                record = self.skipped(
                    model,
                    batch,
                    config,
                    runtime,
                    f"error: {type(exc).__name__}: {exc}"[:300],
                    augment=augment,
                )
                record["status"] = "error"
                self.error(label)
        self.say(f"{label}: {self.bench.short_result(record)}")
        return record

    def add(self, record: dict) -> dict:
        self.doc["records"].append(record)
        self.write()
        return record

    def run(self) -> None:
        first, *others = self.models
        # 1. The headline: the fastres path, compiled, at the compile batch size.
        self.add(self.measure(first, self.compile_batch, "fastres", self.fast_compiled))
        # 2. The eager sweep, baseline and fastres side by side.
        baseline = self.bench.baseline_runtime(self.device)
        for model in self.models:
            for batch in self.batch_sizes:
                self.add(self.measure(model, batch, "baseline", baseline, needs_s=5))
                self.add(self.measure(model, batch, "fastres_eager", self.fast_eager, needs_s=5))
        # 3. The data path: augmentation on the device, then the step; bf16, and fp16 with
        # GradScaler.
        for precision in ("bf16", "fp16"):
            runtime = dataclasses.replace(self.fast_eager, precision=precision)
            step = self.measure(first, self.data_batch, f"data_{precision}", runtime, needs_s=5)
            full = self.measure(
                first, self.data_batch, f"data_{precision}", runtime, augment=True, needs_s=5
            )
            entry = {
                "model": first,
                "batch_size": self.data_batch,
                "precision": precision,
                "grad_scaler": runtime.grad_scaler,
                "channels_last": runtime.channels_last,
                "status": "ok" if step["status"] == full["status"] == "ok" else "not measured",
                "step_images_per_s": step["images_per_s"],
                "augment_step_images_per_s": full["images_per_s"],
                "kept": (
                    full["images_per_s"] / step["images_per_s"]
                    if step["images_per_s"] and full["images_per_s"]
                    else None
                ),
                "records": [step, full],
            }
            self.doc["data_path"].append(entry)
            self.write()
        # 4. Muon's optimizer step: the launches fast's epochs waited on (BENCHMARKS.md, H200).
        self.muon_step()
        # 5. CUDA graphs (inductor's "reduce-overhead"): on a GPU machine whose kernel launches
        # are slow (an H200 VM, BENCHMARKS.md) the step waits on the host; graphs replay it in
        # one launch. At the compile batch and at 128, where launches weigh most.
        for batch in self.cudagraph_batches:
            self.add(
                self.measure(
                    first,
                    batch,
                    CUDAGRAPHS,
                    self.fast_compiled,
                    compile_mode="reduce-overhead",
                    needs_s=0 if self.tiny else COMPILE_RESERVE_S,
                )
            )
        # 6. The other models compiled, as long as a compile still fits in the budget.
        for model in others:
            self.add(
                self.measure(
                    model,
                    self.compile_batch,
                    "fastres",
                    self.fast_compiled,
                    needs_s=0 if self.tiny else COMPILE_RESERVE_S,
                )
            )
        self.doc["complete"] = True
        self.write()

    def muon_step(self) -> None:
        from muon_cost import optimizer_step

        try:
            entry = {
                "status": "ok",
                **optimizer_step(
                    self.device,
                    width=self.width,
                    repeats=2 if self.tiny else 7,
                    steps=1 if self.tiny else 10,
                ),
            }
        except Exception as exc:  # noqa: BLE001 - one failure must not lose the rest of the check
            entry = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
            self.error("muon_step")
        self.doc["muon_step"] = entry
        self.say(f"muon step: {self.muon_line()}")
        self.write()

    def muon_line(self) -> str:
        m = self.doc.get("muon_step") or {}
        if m.get("status") != "ok":
            return m.get("reason", "not measured")
        return (
            f"batched {m['muon_batched_step_ms'][0]} ms ({m['muon_batched_matrix_products']} "
            "matrix products)"
            f" vs per filter {m['muon_per_filter_step_ms'][0]} ms "
            f"({m['muon_per_filter_matrix_products']}),"
            f" SGD {m['sgd_step_ms'][0]} ms; ResNet-18 width {m['width']}, medians of "
            f"{m['repeats']}"
        )

    def end_to_end(self, outdir: Path, cifar: str, budget_s: float, seed: int = 0) -> None:
        """One seed of the GPU preset from the CIFAR-10 source to its final accuracy."""
        run_dir = outdir / "e2e"
        command = [
            sys.executable,
            "-m",
            "fastres",
            "train",
            "--preset",
            E2E_PRESET,
            "--loader",
            "memory",
            "--seed",
            str(seed),
            "--no-progress",
            "--run-dir",
            str(run_dir),
            *(TINY_TRAIN_ARGS if self.tiny else []),
        ]
        entry: dict[str, Any] = {
            "preset": E2E_PRESET,
            "seed": seed,
            "command": command[1:],
            "budget_s": budget_s,
            "status": "skipped",
            "wall_s": None,
        }
        self.doc["end_to_end"] = entry
        if not cifar:
            entry["reason"] = "no CIFAR-10 source: pass --cifar PATH (or FASTRES_GPU_CHECK_CIFAR)"
            self.say(f"end to end: skipped ({entry['reason']})")
            self.write()
            return
        # fastres itself reads the folder, its parent or the .tar.gz, and names what is wrong.
        env = {**os.environ, "FASTRES_CIFAR10": str(Path(cifar).resolve())}
        returncode, wall = run_stopping_cleanly(command, outdir / "e2e.log", env, budget_s)
        entry["wall_s"] = round(wall, 1)
        entry["returncode"] = returncode
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        entry.update({k: summary.get(k) for k in E2E_FIELDS})
        entry["status"] = summary.get("status") or "failed"
        entry["time"] = time_breakdown(run_dir, summary.get("train_time_s"))
        if entry["status"] != "completed":
            tail = (outdir / "e2e.log").read_text()[-2000:]
            self.doc["errors"].append({"what": f"end to end: {entry['status']}", "traceback": tail})
        self.say(
            f"end to end: {E2E_PRESET} {entry['status']} after "
            f"{entry['epochs']}/{entry['epochs_planned']} epochs, final accuracy "
            f"{100 * (entry['final_val_acc'] or 0):.2f}%, train_time_s {entry['train_time_s']}, "
            f"compile {entry['compile_time_s']}s, compiles {entry['compiles']}"
        )
        self.write()

    def summary(self) -> str:
        records = self.doc["records"]
        lines = [self.bench.format_table(records, ("baseline", "fastres_eager", "fastres"))]
        head = next(
            (r for r in records if r["config"] == "fastres" and r["model"] == self.models[0]), None
        )
        if self.tiny:
            lines.append(
                "\n(tiny mode: every code path on the CPU; the numbers are not measurements)"
            )
        if head and head["status"] == "ok":
            lines.append(
                f"\nheadline: {head['model']} b{head['batch_size']} train, {head['precision']} + "
                "channels_last"
                f" + compile: {head['images_per_s']:,.0f} images/s (aim >= "
                f"{TARGET_IMAGES_PER_S:,}), "
                f"compile {head['compile_s']:.1f}s"
            )
        for r in records:
            if r["config"] == CUDAGRAPHS and r["status"] == "ok":
                lines.append(
                    f"CUDA graphs: {r['model']} b{r['batch_size']} train {r['images_per_s']:,.0f} "
                    "images/s, "
                    f"compile {r['compile_s']:.1f}s"
                )
        if "muon_step" in self.doc:
            lines.append(f"Muon optimizer step: {self.muon_line()}")
        for d in self.doc["data_path"]:
            if d["status"] == "ok":
                lines.append(
                    f"data path {d['precision']}{' + GradScaler' if d['grad_scaler'] else ''}: "
                    f"augment+step {d['augment_step_images_per_s']:,.0f} vs step "
                    f"{d['step_images_per_s']:,.0f}"
                    f" images/s ({100 * d['kept']:.1f}% kept)"
                )
        return "\n".join(lines)


def time_breakdown(run_dir: Path, train_time_s: float | None) -> dict[str, Any]:
    """Where the run's time went: each epoch (training and its test pass) and what lies outside
    the epochs (start-up: reading the source, the device's start; the last writes)."""
    from fastres.rundir import RunDir

    rows = RunDir(run_dir).read_metrics()
    epochs = [round(r["epoch_time_s"], 3) for r in rows]
    return {
        "epoch_time_s": epochs,
        "train_images_per_s": [round(r["images_per_s"]) for r in rows],
        "outside_epochs_s": round(train_time_s - sum(epochs), 3)
        if train_time_s is not None and rows
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    check = Check(outdir, args.tiny, args.budget_s)
    check.doc["sections"] = (
        ["end_to_end"] if args.e2e_only else ["sweep", "data_path", "end_to_end"]
    )
    if not args.e2e_only:
        check.run()
    check.end_to_end(outdir, args.cifar, args.e2e_budget_s, args.e2e_seed)
    check.doc["complete"] = True  # every section asked for ran (each records what it skipped)
    check.write()
    print(check.summary(), flush=True)
    print(f"wrote {check.path} ({check.elapsed():.0f}s)", flush=True)
    return 1 if check.doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
