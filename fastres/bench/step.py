"""The train-step and inference benchmark: one model, batch size and mode, measured as
``baseline`` (what a plain PyTorch script does: fp32, NCHW, eager, the same SGD) and as
``fastres`` (the trainer's own fast path from ``resolve_runtime``: bf16 where supported,
channels_last, torch.compile on CUDA), back to back in one process, with the same threads
and the same input already in memory.

Both go through ``fastres.train.train_step``, so the benchmarked step is the trained one.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..augment import BatchAugment
from ..config import TrainConfig
from ..contention import CpuWait, is_shared
from ..errors import FastresError
from ..models import IMAGENET_MODELS, build_model, standard_width
from ..runtime import Runtime, compile_module, cpu_name, is_out_of_memory, resolve_runtime
from ..train import train_step
from .memory import (
    PeakMemory,
    available_memory_bytes,
    estimate_memory_bytes,
    release_host_memory,
)
from .timing import FULL_TIMING, Timing, synchronize

MODEL_NAMES = tuple(IMAGENET_MODELS)  # the default sweep; the paper's CIFAR ResNets when named
MODES = ("train", "infer")
CONFIGS = ("baseline", "fastres")
DEFAULT_BATCH_SIZES = (32, 64, 128, 256, 512)
QUICK_BATCH_SIZES = (8, 16)
QUICK_WIDTH = 8

# Every record carries these keys (None where they do not apply), in this order in the CSV.
RECORD_KEYS = (
    "model",
    "batch_size",
    "mode",
    "config",
    "status",
    "images_per_s",
    "step_ms",
    "steps_per_repeat",
    "repeats",
    "warmup_steps",
    "repeat_images_per_s",
    "first_step_s",
    "compile_s",
    "peak_memory_mb",
    "estimated_memory_mb",
    "precision",
    "channels_last",
    "compile",
    "augment",
    "width",
    "device",
    "threads",
    "cpu_wait",
    "reason",
)


# --- the two configurations ---------------------------------------------------------


def baseline_runtime(device: torch.device) -> Runtime:
    """A plain PyTorch script: fp32, NCHW, eager."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return Runtime(device, name, "fp32", compile=False, channels_last=False)


def fastres_runtime(device: torch.device) -> Runtime:
    """The trainer's default fast path on this device (precision, channels_last, compile)."""
    return resolve_runtime(TrainConfig(device=device.type))


def runtime_for(config: str, device: torch.device) -> Runtime:
    if config == "baseline":
        return baseline_runtime(device)
    if config == "fastres":
        return fastres_runtime(device)
    raise FastresError(f"unknown configuration {config!r}: choose one of {', '.join(CONFIGS)}")


# --- one configuration ----------------------------------------------------------------


class StepBench:
    """One model, batch size, mode and runtime, ready to time, with its input in memory.

    The input is what the trainer feeds its model: the uint8 batch through BatchAugment's
    normaliser, i.e. the runtime's dtype and memory format (fp32 NCHW for the baseline).
    """

    def __init__(
        self,
        model: str,
        batch_size: int,
        mode: str,
        runtime: Runtime,
        *,
        width: int = 64,
        seed: int = 0,
        compile_backend: str = "inductor",
        compile_mode: str | None = None,
        autotune: bool = True,
        augment: bool = False,
    ) -> None:
        if mode not in MODES:
            raise FastresError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        self.model_name, self.batch_size, self.mode, self.runtime = model, batch_size, mode, runtime
        device = runtime.device
        self.device = device
        torch.manual_seed(seed)
        net = runtime.place(build_model(model, width=width))
        net.train(mode == "train")
        if runtime.compile:
            # A fresh compile per configuration: dynamo's per-code-object recompile limit would
            # otherwise fall back to eager after a few batch sizes.
            torch._dynamo.reset()
            self.forward: nn.Module = compile_module(net, compile_backend, mode=compile_mode)
        else:
            self.forward = net
        if device.type == "cuda":
            # The trainer autotunes cuDNN (set_deterministic(False)); a plain script keeps the
            # default.
            torch.backends.cudnn.benchmark = autotune
        gen = torch.Generator().manual_seed(seed)
        images = torch.randint(
            0, 256, (batch_size, 32, 32, 3), dtype=torch.uint8, generator=gen
        ).to(device)
        self.images = images
        # augment=True times the trainer's data path: the uint8 batch already on the device goes
        # through the random crop + flip + normalise of BatchAugment.train before every step.
        self.augment = BatchAugment(
            device, runtime.amp_dtype, channels_last=runtime.channels_last, seed=seed
        )
        self.augment_each_step = augment
        self.x = self.augment.test(images)
        self.labels = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
        defaults = TrainConfig()
        self.optimizer = torch.optim.SGD(
            net.parameters(),
            lr=defaults.lr,
            momentum=defaults.momentum,
            nesterov=defaults.nesterov,
            weight_decay=defaults.weight_decay,
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=runtime.grad_scaler)
        self.criterion = nn.CrossEntropyLoss()
        self.net = net
        self.times: list[float] = []  # seconds of every run() call, synchronised
        self.last_loss: torch.Tensor | None = None

    def step(self) -> None:
        x = self.augment.train(self.images) if self.augment_each_step else self.x
        if self.mode == "train":
            self.last_loss, _ = train_step(
                self.forward,
                self.criterion,
                self.optimizer,
                self.scaler,
                self.runtime,
                x,
                self.labels,
            )
            return
        rt = self.runtime
        with (
            torch.no_grad(),
            torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.autocast),
        ):
            self.forward(x)

    def run(self, steps: int) -> float:
        """Run ``steps`` steps; the synchronised wall time in seconds."""
        synchronize(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        elapsed = time.perf_counter() - t0
        self.times.append(elapsed)
        return elapsed

    def measure(
        self,
        timing: Timing,
        repeat: Callable[[Callable[[int], float], int, int], object] | None = None,
    ) -> dict[str, Any]:
        """First step, warm-up, then ``timing.repeats`` timed repeats; a record's timing fields.

        ``repeat(run, steps, repeats)`` runs the timed repeats (pytest-benchmark's pedantic);
        by default they are plain calls.
        """
        first = self.run(1)
        per_step = self.run(timing.warmup) / timing.warmup if timing.warmup else first
        steps = max(1, min(timing.max_steps, math.ceil(timing.min_repeat_s / max(per_step, 1e-9))))
        start = len(self.times)
        waiting = CpuWait()
        if repeat is None:
            for _ in range(timing.repeats):
                self.run(steps)
        else:
            repeat(self.run, steps, timing.repeats)
        cpu_wait = waiting.lap()
        times = self.times[start:]
        median = statistics.median(times)
        step_s = median / steps
        return {
            "images_per_s": self.batch_size * steps / median,
            "step_ms": 1000 * step_s,
            "steps_per_repeat": steps,
            "repeats": len(times),
            "warmup_steps": timing.warmup,
            "repeat_images_per_s": [self.batch_size * steps / t for t in times],
            "first_step_s": first,
            # The first call compiles (and autotunes); what it took beyond a normal step is compile.
            "compile_s": max(0.0, first - step_s) if self.runtime.compile else None,
            # Threads kept waiting for a CPU during the timed repeats: other processes' share.
            "cpu_wait": cpu_wait,
        }


def base_record(
    model: str,
    batch_size: int,
    mode: str,
    config: str,
    runtime: Runtime,
    width: int,
    augment: bool = False,
) -> dict[str, Any]:
    """A record of one configuration with every key present, before it is measured."""
    record: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    record.update(
        model=model,
        batch_size=batch_size,
        mode=mode,
        config=config,
        precision=runtime.precision,
        channels_last=runtime.channels_last,
        compile=runtime.compile,
        augment=augment,
        width=width,
        device=runtime.device.type,
        threads=torch.get_num_threads(),
    )
    return record


def measure_step(
    model: str,
    batch_size: int,
    mode: str,
    config: str,
    *,
    device: torch.device,
    width: int = 64,
    timing: Timing = FULL_TIMING,
    mem_limit_bytes: int | None = None,
    compile_backend: str = "inductor",
    runtime: Runtime | None = None,
    augment: bool = False,
    repeat: Callable[[Callable[[int], float], int, int], object] | None = None,
    compile_mode: str | None = None,
) -> dict[str, Any]:
    """Measure one configuration; a record with status ok, skipped (would not fit) or oom.

    On CPU, a configuration whose estimated memory exceeds ``mem_limit_bytes`` (default: what
    is free now) is skipped: there an out-of-memory ends in the kernel's OOM killer, which
    takes the whole sweep with it. On a GPU the attempt is safe: CUDA raises, and it is
    recorded as ``oom``.
    """
    runtime = runtime or runtime_for(config, device)
    record = base_record(model, batch_size, mode, config, runtime, width, augment)
    estimate = estimate_memory_bytes(model, batch_size, mode, runtime.precision, width)
    record["estimated_memory_mb"] = round(estimate / 2**20, 1)
    if device.type == "cpu":
        free = mem_limit_bytes if mem_limit_bytes is not None else available_memory_bytes()
        what = "allowed by --mem-limit" if mem_limit_bytes is not None else "free"
        if free is not None and estimate > 0.9 * free:
            record.update(
                status="skipped",
                reason=f"skipped: needs ~{estimate / 1e9:.1f} GB, {free / 1e9:.1f} GB {what}",
            )
            return record
    bench = None
    try:
        with PeakMemory(device) as peak:
            bench = StepBench(
                model,
                batch_size,
                mode,
                runtime,
                width=width,
                compile_backend=compile_backend,
                compile_mode=compile_mode,
                autotune=config != "baseline",
                augment=augment,
            )
            record.update(bench.measure(timing, repeat=repeat))
        record["peak_memory_mb"] = (
            round(peak.peak_bytes / 2**20, 1) if peak.peak_bytes is not None else None
        )
        record["status"] = "ok"
        if bench.last_loss is not None and not bool(torch.isfinite(bench.last_loss)):
            # Random data at the trainer's lr can diverge; NaN arithmetic can be slower on CPU.
            record["reason"] = "loss became non-finite during the measurement"
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is recorded; the rest re-raises
        if not is_out_of_memory(exc):
            raise
        record.update(
            status="oom",
            images_per_s=None,
            reason=f"out of memory: {str(exc).strip().splitlines()[0][:200]}",
        )
    finally:
        del bench
        if device.type == "cuda":
            torch.cuda.empty_cache()
        release_host_memory()
    return record


def sweep(
    models: Sequence[str],
    batch_sizes: Sequence[int],
    modes: Sequence[str],
    *,
    device: torch.device,
    width: int | None = None,
    timing: Timing = FULL_TIMING,
    configs: Sequence[str] = CONFIGS,
    mem_limit_bytes: int | None = None,
    progress: bool | None = None,
    compile_backend: str = "inductor",
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every model x mode x batch size, baseline and fastres back to back; one record each.

    A configuration that is skipped or runs out of memory is recorded and the sweep goes on.
    ``width`` None measures each model at its published width (``models.standard_width``).
    ``progress``: a bar (True), a line per configuration on stderr (None), or nothing (False).
    """
    plan = [(m, mode, b, c) for m in models for mode in modes for b in batch_sizes for c in configs]
    records: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=len(plan),
            desc="fastres bench",
            unit="config",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    try:
        for i, (model, mode, batch, config) in enumerate(plan, 1):
            label = f"{model} b{batch} {mode} {config}"
            if bar is not None:
                bar.set_postfix_str(label, refresh=True)
            record = measure_step(
                model,
                batch,
                mode,
                config,
                device=device,
                width=standard_width(model) if width is None else width,
                timing=timing,
                mem_limit_bytes=mem_limit_bytes,
                compile_backend=compile_backend,
            )
            records.append(record)
            if bar is not None:
                bar.update(1)
            elif progress is None:
                print(
                    f"[{i}/{len(plan)}] {label}: {short_result(record)}",
                    file=sys.stderr,
                    flush=True,
                )
            if log is not None:
                log(f"{label}: {short_result(record)}")
    finally:
        if bar is not None:
            bar.close()
    return records


def short_result(record: dict[str, Any]) -> str:
    """A record in a few words: its rate (and compile time), or why it was not measured."""
    if record["status"] == "ok":
        extra = f", compile {record['compile_s']:.1f}s" if record.get("compile_s") else ""
        if is_shared(record.get("cpu_wait")):
            extra += (
                f", shared CPU: {record['cpu_wait']:.2f} threads kept waiting (the rate is "
                "the machine's load)"
            )
        return f"{record['images_per_s']:.1f} img/s{extra}"
    return record["reason"] or record["status"]
