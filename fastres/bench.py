"""Throughput benchmarks: the train step and inference, the data path, and a whole epoch.

Every measurement follows the same protocol: build the configuration, time its first step
on its own (that is where torch.compile, cuDNN autotuning and allocator warm-up go, so it
is reported as ``first_step_s``/``compile_s`` and never mixed into the throughput), run
untimed warm-up steps, then time several repeats of ``steps_per_repeat`` steps each, with
``torch.cuda.synchronize()`` before and after every timed region on a GPU. The reported
rate is the median repeat.

Two configurations are measured side by side in the same process, same thread count,
same input already in memory:

* ``baseline``: what a plain PyTorch script does: fp32, NCHW, eager, the same SGD.
* ``fastres``: the trainer's own default fast path, from ``resolve_runtime(TrainConfig())``:
  its precision (bf16 where supported), channels_last, and torch.compile on CUDA.

Both go through ``fastres.train.train_step``, so the benchmarked step is the trained one.

Torch, matplotlib and the data modules are imported inside the functions that need them,
so that ``fastres bench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FastresError

if TYPE_CHECKING:
    import torch

    from .runtime import Runtime

MODEL_NAMES = ("resnet18", "resnet34", "resnet50")
MODES = ("train", "infer")
CONFIGS = ("baseline", "fastres")
DEFAULT_BATCH_SIZES = (32, 64, 128, 256, 512)
QUICK_BATCH_SIZES = (8, 16)
QUICK_WIDTH = 8
FULL_ENV = "FASTRES_BENCH_FULL"  # =1: the benchmark suites run the full sweep, not the smoke test

# Every record carries these keys (None where they do not apply), in this order in the CSV.
RECORD_KEYS = (
    "model", "batch_size", "mode", "config", "status", "images_per_s", "step_ms",
    "steps_per_repeat", "repeats", "warmup_steps", "repeat_images_per_s", "first_step_s",
    "compile_s", "peak_memory_mb", "estimated_memory_mb", "precision", "channels_last",
    "compile", "augment", "width", "device", "threads", "reason",
)
CSV_KEYS = tuple(k for k in RECORD_KEYS if k != "repeat_images_per_s")


@dataclass(frozen=True)
class Timing:
    """How long to measure: warm-up steps, repeats, and the least time one repeat takes."""

    warmup: int = 2
    repeats: int = 5
    min_repeat_s: float = 1.0
    max_steps: int = 200  # per repeat, a cap for very fast steps (tiny models on a big GPU)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 1 or self.min_repeat_s < 0 or self.max_steps < 1:
            raise FastresError(
                f"timing needs warmup >= 0, repeats >= 1 and min-time >= 0, got warmup {self.warmup}, "
                f"repeats {self.repeats}, min-time {self.min_repeat_s}"
            )


FULL_TIMING = Timing()
# One step per repeat: a smoke test of the code paths, not a measurement.
QUICK_TIMING = Timing(warmup=1, repeats=2, min_repeat_s=0.0, max_steps=1)


def full_mode() -> bool:
    """Whether the benchmark suites run the full sweep (``FASTRES_BENCH_FULL=1``)."""
    return os.environ.get(FULL_ENV, "") not in ("", "0")


# --- runtimes --------------------------------------------------------------------------


def baseline_runtime(device: torch.device) -> Runtime:
    """A plain PyTorch script: fp32, NCHW, eager."""
    from .runtime import Runtime, cpu_name

    return Runtime(device, _device_name(device) if device.type == "cuda" else cpu_name(), "fp32",
                   compile=False, channels_last=False)


def fastres_runtime(device: torch.device) -> Runtime:
    """The trainer's default fast path on this device (precision, channels_last, compile)."""
    from .config import TrainConfig
    from .runtime import resolve_runtime

    return resolve_runtime(TrainConfig(device=device.type))


def runtime_for(config: str, device: torch.device) -> Runtime:
    if config == "baseline":
        return baseline_runtime(device)
    if config == "fastres":
        return fastres_runtime(device)
    raise FastresError(f"unknown configuration {config!r}: choose one of {', '.join(CONFIGS)}")


def _device_name(device: torch.device) -> str:
    import torch

    return torch.cuda.get_device_name(device)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer read afterwards covers it; a no-op on CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- memory ----------------------------------------------------------------------------


def available_memory_bytes() -> int | None:
    """Host memory a new allocation can get: MemAvailable, capped by a cgroup limit."""
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    # In a container the cgroup limit, not the host's free memory, decides when the OOM killer fires.
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            in_cgroup = int(limit) - used
            free = in_cgroup if free is None else min(free, in_cgroup)
    except (OSError, ValueError):
        pass
    return free


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def release_host_memory() -> None:
    """Return freed heap to the OS, so the next configuration's RSS starts from a clean base."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a block: CUDA's max_memory_allocated, or the RSS high-water mark on CPU.

    On CPU the kernel's high-water mark (VmHWM) is reset through /proc/self/clear_refs, so
    the peak belongs to this block alone; where that is not allowed, the process-wide
    ``ru_maxrss`` is used, which only shows blocks that set a new record.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = 0
            return self
        release_host_memory()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5: reset the peak RSS to the current RSS
            self._hwm = True
        except OSError:
            self._hwm = False
        self._base = (_proc_status_kb("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        if self._hwm:
            peak = (_proc_status_kb("VmHWM") or 0) * 1024
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_bytes = max(0, peak - self._base)


@functools.cache
def _activation_profile(model: str, width: int) -> tuple[int, int, int]:
    """(parameters, activation elements per image summed over layers, largest layer's per image).

    Counted with a batch-1 forward on the meta device: shapes only, no memory, no compute.
    """
    import torch

    from .models import build_model

    with torch.device("meta"):
        net = build_model(model, width=width)
    total = largest = 0

    def hook(module: Any, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total, largest
        total += output.numel()
        largest = max(largest, output.numel())

    for module in net.modules():
        if not list(module.children()):
            module.register_forward_hook(hook)
    net(torch.empty(1, 3, 32, 32, device="meta"))
    params = sum(p.numel() for p in net.parameters())
    return params, total, largest


def estimate_memory_bytes(model: str, batch_size: int, mode: str, precision: str, width: int = 64) -> int:
    """Rough peak memory of one configuration, to skip those that cannot fit before trying.

    Training keeps most layers' outputs for the backward pass, plus gradient buffers of the
    largest layers and fp32 weights, gradients and momentum; inference keeps a few layers
    alive at a time. Deliberately on the high side: on the 2-core CPU the measured peaks of
    ResNet-18/50 at batch 16-64 were 70-90% of this estimate, and an underestimate there
    means the OOM killer. ResNet-50 at batch 512 in fp32 comes out at ~22 GB.
    """
    params, per_image, largest = _activation_profile(model, width)
    elem = 4 if precision == "fp32" else 2
    overhead = 150 * 2**20  # allocator arenas, oneDNN/cuDNN workspaces
    if mode == "train":
        weights = params * 4 * 3 + (params * 2 if precision != "fp32" else 0)
        acts = per_image * batch_size * elem * 0.85 + largest * batch_size * 4 * 4
        return int(weights + acts + overhead)
    return int(params * 4 + largest * batch_size * 4 * 6 + overhead)


# --- the step benchmark ----------------------------------------------------------------


class StepBench:
    """One model, batch size, mode and runtime, ready to time, with its input in memory.

    The input is what the trainer feeds its model: the uint8 batch through BatchAugment's
    normaliser, i.e. the runtime's dtype and memory format (fp32 NCHW for the baseline).
    """

    def __init__(self, model: str, batch_size: int, mode: str, runtime: Runtime, *, width: int = 64,
                 seed: int = 0, compile_backend: str = "inductor", autotune: bool = True,
                 augment: bool = False) -> None:
        import torch
        from torch import nn

        from .augment import BatchAugment
        from .config import TrainConfig
        from .models import build_model

        if mode not in MODES:
            raise FastresError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        self.model_name, self.batch_size, self.mode, self.runtime = model, batch_size, mode, runtime
        device = runtime.device
        self.device = device
        torch.manual_seed(seed)
        net = build_model(model, width=width).to(device)
        if runtime.channels_last:
            net = net.to(memory_format=torch.channels_last)
        net.train(mode == "train")
        if runtime.compile:
            # A fresh compile per configuration: dynamo's per-code-object recompile limit would
            # otherwise fall back to eager after a few batch sizes, and automatic dynamic shapes
            # would compile a slower shape-generic graph.
            torch._dynamo.reset()
            self.forward: nn.Module = torch.compile(net, backend=compile_backend)
        else:
            self.forward = net
        if device.type == "cuda":
            # The trainer autotunes cuDNN (set_deterministic(False)); a plain script keeps the default.
            torch.backends.cudnn.benchmark = autotune
        gen = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (batch_size, 32, 32, 3), dtype=torch.uint8, generator=gen).to(device)
        self.images = images
        # augment=True times the trainer's data path: the uint8 batch already on the device goes
        # through the random crop + flip + normalise of BatchAugment.train before every step.
        self.augment = BatchAugment(device, runtime.amp_dtype, channels_last=runtime.channels_last, seed=seed)
        self.augment_each_step = augment
        self.x = self.augment.test(images)
        self.labels = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
        defaults = TrainConfig()
        self.optimizer = torch.optim.SGD(net.parameters(), lr=defaults.lr, momentum=defaults.momentum,
                                         nesterov=defaults.nesterov, weight_decay=defaults.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=runtime.grad_scaler)
        self.criterion = nn.CrossEntropyLoss()
        self.net = net
        self.times: list[float] = []  # seconds of every run() call, synchronised
        self.last_loss: torch.Tensor | None = None

    def step(self) -> None:
        import torch

        from .train import train_step

        x = self.augment.train(self.images) if self.augment_each_step else self.x
        if self.mode == "train":
            self.last_loss, _ = train_step(self.forward, self.criterion, self.optimizer, self.scaler,
                                           self.runtime, x, self.labels)
            return
        rt = self.runtime
        with torch.no_grad(), torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.autocast):
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

    def measure(self, timing: Timing,
                repeat: Callable[[Callable[[int], float], int, int], object] | None = None) -> dict[str, Any]:
        """First step, warm-up, then ``timing.repeats`` timed repeats; a record's timing fields.

        ``repeat(run, steps, repeats)`` runs the timed repeats (pytest-benchmark's pedantic);
        by default they are plain calls.
        """
        first = self.run(1)
        per_step = self.run(timing.warmup) / timing.warmup if timing.warmup else first
        steps = max(1, min(timing.max_steps, math.ceil(timing.min_repeat_s / max(per_step, 1e-9))))
        start = len(self.times)
        if repeat is None:
            for _ in range(timing.repeats):
                self.run(steps)
        else:
            repeat(self.run, steps, timing.repeats)
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
        }


def base_record(model: str, batch_size: int, mode: str, config: str, runtime: Runtime, width: int,
                augment: bool = False) -> dict[str, Any]:
    import torch

    record: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    record.update(model=model, batch_size=batch_size, mode=mode, config=config,
                  precision=runtime.precision, channels_last=runtime.channels_last,
                  compile=runtime.compile, augment=augment, width=width, device=runtime.device.type,
                  threads=torch.get_num_threads())
    return record


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator refusing (when overcommit says no)."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def measure_step(model: str, batch_size: int, mode: str, config: str, *, device: torch.device,
                 width: int = 64, timing: Timing = FULL_TIMING, mem_limit_bytes: int | None = None,
                 compile_backend: str = "inductor", runtime: Runtime | None = None, augment: bool = False,
                 repeat: Callable[[Callable[[int], float], int, int], object] | None = None,
                 ) -> dict[str, Any]:
    """Measure one configuration; a record with status ok, skipped (would not fit) or oom.

    On CPU, a configuration whose estimated memory exceeds ``mem_limit_bytes`` (default: what
    is free now) is skipped: there an out-of-memory ends in the kernel's OOM killer, which
    takes the whole sweep with it. On a GPU the attempt is safe: CUDA raises, and it is
    recorded as ``oom``.
    """
    import torch

    runtime = runtime or runtime_for(config, device)
    record = base_record(model, batch_size, mode, config, runtime, width, augment)
    estimate = estimate_memory_bytes(model, batch_size, mode, runtime.precision, width)
    record["estimated_memory_mb"] = round(estimate / 2**20, 1)
    if device.type == "cpu":
        free = mem_limit_bytes if mem_limit_bytes is not None else available_memory_bytes()
        what = "allowed by --mem-limit" if mem_limit_bytes is not None else "free"
        if free is not None and estimate > 0.9 * free:
            record.update(status="skipped",
                          reason=f"skipped: needs ~{estimate / 1e9:.1f} GB, {free / 1e9:.1f} GB {what}")
            return record
    bench = None
    try:
        with PeakMemory(device) as peak:
            bench = StepBench(model, batch_size, mode, runtime, width=width, compile_backend=compile_backend,
                              autotune=config != "baseline", augment=augment)
            record.update(bench.measure(timing, repeat=repeat))
        record["peak_memory_mb"] = round(peak.peak_bytes / 2**20, 1) if peak.peak_bytes is not None else None
        record["status"] = "ok"
        if bench.last_loss is not None and not bool(torch.isfinite(bench.last_loss)):
            # Random data at the trainer's lr can diverge; NaN arithmetic can be slower on CPU.
            record["reason"] = "loss became non-finite during the measurement"
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is recorded; the rest re-raises
        if not is_out_of_memory(exc):
            raise
        record.update(status="oom", images_per_s=None,
                      reason=f"out of memory: {str(exc).strip().splitlines()[0][:200]}")
    finally:
        del bench
        if device.type == "cuda":
            torch.cuda.empty_cache()
        release_host_memory()
    return record


def sweep(models: Sequence[str], batch_sizes: Sequence[int], modes: Sequence[str], *,
          device: torch.device, width: int = 64, timing: Timing = FULL_TIMING,
          configs: Sequence[str] = CONFIGS, mem_limit_bytes: int | None = None,
          progress: bool | None = None, compile_backend: str = "inductor",
          log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every model x mode x batch size, baseline and fastres back to back; one record each.

    A configuration that is skipped or runs out of memory is recorded and the sweep goes on.
    ``progress``: a bar (True), a line per configuration on stderr (None), or nothing (False).
    """
    plan = [(m, mode, b, c) for m in models for mode in modes for b in batch_sizes for c in configs]
    records: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(plan), desc="fastres bench", unit="config", file=sys.stderr, dynamic_ncols=True)
    try:
        for i, (model, mode, batch, config) in enumerate(plan, 1):
            label = f"{model} b{batch} {mode} {config}"
            if bar is not None:
                bar.set_postfix_str(label, refresh=True)
            record = measure_step(model, batch, mode, config, device=device, width=width, timing=timing,
                                  mem_limit_bytes=mem_limit_bytes, compile_backend=compile_backend)
            records.append(record)
            if bar is not None:
                bar.update(1)
            elif progress is None:
                print(f"[{i}/{len(plan)}] {label}: {_short_result(record)}", file=sys.stderr, flush=True)
            if log is not None:
                log(f"{label}: {_short_result(record)}")
    finally:
        if bar is not None:
            bar.close()
    return records


def _short_result(record: dict[str, Any]) -> str:
    if record["status"] == "ok":
        extra = f", compile {record['compile_s']:.1f}s" if record.get("compile_s") else ""
        return f"{record['images_per_s']:.1f} img/s{extra}"
    return record["reason"] or record["status"]


# --- data loading and end to end ---------------------------------------------------------


# repeat(run_one, repeats) runs the timed epochs; pytest-benchmark's pedantic in the suites.
EpochRepeat = Callable[[Callable[[], object], int], object]


def measure_ffcv_loader(data_dir: str | Path, batch_size: int, *, device: torch.device, subset: int = 0,
                        repeats: int = 3, seed: int = 0, repeat: EpochRepeat | None = None) -> dict[str, Any]:
    """Images/s of fastres' FFCV loader plus its device-side augmentation, per epoch.

    Each repeat is one epoch over ``subset`` training images; the first epoch (FFCV
    compiles its pipeline with numba then) is warm-up and not timed.
    """
    from .augment import BatchAugment
    from .data import open_data

    runtime = fastres_runtime(device)
    data = open_data(loader="ffcv", data_dir=data_dir, batch_size=batch_size, device=device, seed=seed,
                     train_subset=subset, log=lambda m: None)
    augment = BatchAugment(device, runtime.amp_dtype, channels_last=runtime.channels_last, seed=seed)

    def epoch() -> int:
        seen = 0
        for images, _labels in data.train:
            augment.train(images)
            seen += images.shape[0]
        return seen

    return _time_epochs(epoch, device, repeats, repeat) | {
        "loader": "ffcv", "augmentation": "fastres BatchAugment (crop+flip+normalise on the device)",
        "batch_size": batch_size, "workers": data.train.loader.num_workers,
        "precision": runtime.precision, "channels_last": runtime.channels_last,
    }


class _PILImages:
    """CIFAR-10 arrays served as PIL images, like torchvision.datasets.CIFAR10 does."""

    def __init__(self, images: Any, labels: Any, transform: Callable[[Any], Any]) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def measure_torchvision_loader(source: str | Path, batch_size: int, *, device: torch.device, subset: int = 0,
                               repeats: int = 3, workers: int = 2, seed: int = 0,
                               repeat: EpochRepeat | None = None) -> dict[str, Any]:
    """Images/s of a plain torchvision DataLoader (persistent workers, PIL transforms).

    RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor + Normalize over the same training
    images, moved to ``device`` in the loop as a plain script would. First epoch is warm-up.
    """
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from . import cifar
    from .augment import CIFAR10_MEAN, CIFAR10_STD

    data = cifar.load_source(source, expect_full=False)
    n = subset or len(data.train)
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
    ])
    dataset = _PILImages(data.train.images[:n], data.train.labels[:n], transform)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda", generator=gen)

    def epoch() -> int:
        seen = 0
        for images, labels in loader:
            images.to(device, non_blocking=True)
            labels.to(device, non_blocking=True)
            seen += images.shape[0]
        return seen

    try:
        result = _time_epochs(epoch, device, repeats, repeat)
    finally:
        loader = None  # dropping the last reference shuts the persistent workers down
    return result | {"loader": "torchvision", "augmentation": "RandomCrop(32, 4) + RandomHorizontalFlip + Normalize (PIL, in workers)",
                     "batch_size": batch_size, "workers": workers}


def _time_epochs(epoch: Callable[[], int], device: torch.device, repeats: int,
                 repeat: EpochRepeat | None = None) -> dict[str, Any]:
    """One untimed warm-up epoch, then ``repeats`` synchronised epochs; the median rate."""
    t0 = time.perf_counter()
    epoch()
    synchronize(device)
    warmup_s = time.perf_counter() - t0
    rates: list[float] = []
    images = 0

    def run_one() -> None:
        nonlocal images
        synchronize(device)
        t0 = time.perf_counter()
        images = epoch()
        synchronize(device)
        rates.append(images / (time.perf_counter() - t0))

    if repeat is None:
        for _ in range(repeats):
            run_one()
    else:
        repeat(run_one, repeats)
    return {"images_per_s": statistics.median(rates), "repeat_images_per_s": rates,
            "images_per_epoch": images, "repeats": len(rates), "warmup_epoch_s": warmup_s}


def measure_data_loading(data_dir: str | Path, source: str | Path, batch_size: int, *, device: torch.device,
                         subset: int = 0, repeats: int = 3, workers: int = 2) -> dict[str, Any]:
    """fastres' loader and a torchvision DataLoader over the same images, in one session."""
    fast = measure_ffcv_loader(data_dir, batch_size, device=device, subset=subset, repeats=repeats)
    plain = measure_torchvision_loader(source, batch_size, device=device, subset=subset, repeats=repeats,
                                       workers=workers)
    return {"fastres": fast, "torchvision": plain, "speedup": fast["images_per_s"] / plain["images_per_s"]}


def measure_end_to_end(model: str, batch_size: int, data_dir: str | Path, run_dir: str | Path, *,
                       device: torch.device, width: int = 64, train_subset: int = 0, epochs: int = 2,
                       test_subset: int = 500, timing: Timing = FULL_TIMING,
                       run_training: Callable[[Callable[[], dict[str, Any]]], dict[str, Any]] | None = None,
                       ) -> dict[str, Any]:
    """A real training run's epoch rate against the pure train-step rate of the same setup.

    The run is ``fastres.train.train`` with the FFCV loader; its last epoch is compared
    (the first one includes FFCV's pipeline compilation and, on CUDA, torch.compile).
    ``kept`` = epoch images/s / step images/s: how much of the step rate the whole loop keeps.
    ``run_training(fn)`` calls ``fn`` (pytest-benchmark's pedantic times it in the suite).
    """
    from .config import TrainConfig
    from .rundir import RunDir
    from .runtime import resolve_runtime
    from .train import train

    config = TrainConfig(model=model, width=width, batch_size=batch_size, epochs=epochs,
                         lr_schedule="none", train_subset=train_subset, test_subset=test_subset,
                         loader="ffcv", data_dir=str(data_dir), run_dir=str(run_dir),
                         device=device.type, preset="bench")
    runtime = resolve_runtime(config)
    step = measure_step(model, batch_size, "train", "fastres", device=device, width=width, timing=timing,
                        runtime=runtime)
    t0 = time.perf_counter()

    def training() -> dict[str, Any]:
        return train(config, log=lambda m: None, progress=False)

    summary = run_training(training) if run_training is not None else training()
    wall = time.perf_counter() - t0
    rows = RunDir(run_dir).read_metrics()
    epoch_rate = rows[-1]["images_per_s"]
    return {
        "model": model, "batch_size": batch_size, "width": width, "epochs": epochs,
        "train_images": (train_subset or 50_000) // batch_size * batch_size,
        "step_images_per_s": step["images_per_s"], "epoch_images_per_s": epoch_rate,
        "epoch_images_per_s_all": [r["images_per_s"] for r in rows],
        "run_images_per_s": summary["images_per_s"], "kept": epoch_rate / step["images_per_s"],
        "run_wall_s": wall, "precision": runtime.precision, "channels_last": runtime.channels_last,
        "compile": runtime.compile, "step": step,
    }


# --- machine, table, files -------------------------------------------------------------


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on, for the JSON and BENCHMARKS.md."""
    import torch

    from .runtime import cpu_name, cpu_supports_bf16, package_version
    from .train import git_commit

    total = None
    try:
        with open("/proc/meminfo") as f:
            total = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "memory_gb": total, "gpu": _device_name(device) if device.type == "cuda" else None,
        "device": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu_bf16": cpu_supports_bf16(), "ffcv": package_version("ffcv"), "git_commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def pair_rows(records: Iterable[dict[str, Any]], configs: Sequence[str] = CONFIGS) -> list[dict[str, Any]]:
    """One row per (model, batch size, mode) with each config's record side by side.

    ``speedup`` is the last measured config's images/s over the first's (fastres over baseline).
    Rows come in model, mode, batch size order.
    """
    rows: dict[tuple[str, int, str], dict[str, Any]] = {}
    for r in records:
        row = rows.setdefault((r["model"], r["batch_size"], r["mode"]),
                              {"model": r["model"], "batch_size": r["batch_size"], "mode": r["mode"]})
        row[r["config"]] = r
    for row in rows.values():
        first = row.get(configs[0])
        last = next((row[c] for c in reversed(configs[1:]) if c in row and row[c]["status"] == "ok"), None)
        ok = first and last and first["status"] == "ok"
        row["speedup"] = last["images_per_s"] / first["images_per_s"] if ok else None
    order = {m: i for i, m in enumerate(MODEL_NAMES)}
    return sorted(rows.values(), key=lambda r: (order.get(r["model"], len(order)), r["model"],
                                                 MODES.index(r["mode"]) if r["mode"] in MODES else 9, r["batch_size"]))


_SHORT = {"baseline": "base", "fastres": "fast", "fastres_eager": "eager"}


def _cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return "-"
    if record["status"] == "ok":
        return f"{record['images_per_s']:.1f}"
    return {"skipped": "skipped", "oom": "out of memory"}.get(record["status"], record["status"])


def _mem(record: dict[str, Any] | None) -> str:
    if record is None or record.get("peak_memory_mb") is None:
        return "-"
    return f"{record['peak_memory_mb']:.0f}"


def format_table(records: Sequence[dict[str, Any]], configs: Sequence[str] = CONFIGS) -> str:
    """The side-by-side table, then one line per configuration that was not measured."""
    header = ("model", "batch", "mode", *(f"{c} img/s" for c in configs), "speedup",
              f"peak MB {'/'.join(_SHORT.get(c, c) for c in configs)}", "compile s")
    lines = []
    for row in pair_rows(records, configs):
        recs = [row.get(c) for c in configs]
        compile_s = next((r["compile_s"] for r in recs if r and r.get("compile_s") is not None), None)
        lines.append((
            row["model"], str(row["batch_size"]), row["mode"], *(_cell(r) for r in recs),
            f"{row['speedup']:.2f}x" if row["speedup"] else "-",
            " / ".join(_mem(r) for r in recs), f"{compile_s:.1f}" if compile_s is not None else "-",
        ))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    left = {0, 2}  # text columns; numbers right-aligned

    def fmt(cols: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths, strict=True)))

    out = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(line) for line in lines]
    notes = [f"  {r['model']} b{r['batch_size']} {r['mode']} {r['config']}: {r['reason']}"
             for r in records if r["status"] != "ok" or r.get("reason")]
    if notes:
        out += ["", "not measured / notes:", *notes]
    return "\n".join(out)


def check_writable(path: str | Path, flag: str) -> Path:
    """Fail before the sweep, not after it, when an output file cannot be written."""
    p = Path(path)
    if p.is_dir():
        raise FastresError(f"cannot write {flag} {p}: it is a directory; pass a file path")
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FastresError(f"cannot write {flag} {p}: {ancestor} is a file, not a folder; pass a path in a folder")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FastresError(f"cannot write {flag} {p}: cannot create its folder ({exc.strerror or exc})") from None
    if not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise FastresError(f"cannot write {flag} {p}: permission denied; pass a path you can write")
    return p


def _write(path: Path, flag: str, writer: Callable[[Path], None]) -> None:
    try:
        writer(path)
    except OSError as exc:
        raise FastresError(f"cannot write {flag} {path}: {exc.strerror or exc}") from None


def write_json(path: str | Path, machine: dict[str, Any], records: Sequence[dict[str, Any]],
               settings: dict[str, Any] | None = None) -> None:
    from .files import atomic_write_text

    doc = {"machine": machine, "settings": settings or {}, "records": list(records)}
    _write(Path(path), "--json", lambda p: atomic_write_text(p, json.dumps(doc, indent=2) + "\n"))


def write_csv(path: str | Path, records: Sequence[dict[str, Any]]) -> None:
    def writer(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_KEYS, extrasaction="ignore")
            w.writeheader()
            for r in records:
                w.writerow({k: "" if r.get(k) is None else r.get(k) for k in CSV_KEYS})

    _write(Path(path), "--csv", writer)


def write_plot(path: str | Path, records: Sequence[dict[str, Any]], title: str = "") -> None:
    """PNG: images/s against batch size, one panel per model, a line per config and mode."""
    # The Agg canvas directly: no pyplot, so no global backend switch and no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r["model"] for r in records))
    fig = Figure(figsize=(4.2 * max(1, len(models)), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(models)), squeeze=False)[0]
    styles = {"baseline": ("tab:gray", "o"), "fastres": ("tab:blue", "s")}
    for ax, model in zip(axes, models, strict=False):
        for mode in MODES:
            for config in CONFIGS:
                pts = sorted((r["batch_size"], r["images_per_s"]) for r in records
                             if r["model"] == model and r["mode"] == mode and r["config"] == config
                             and r["status"] == "ok")
                if not pts:
                    continue
                color, marker = styles[config]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker,
                        linestyle="-" if mode == "train" else "--", label=f"{config} {mode}")
        sizes = sorted({r["batch_size"] for r in records if r["model"] == model})
        ax.set_ylim(bottom=0)  # ratios read true only from zero
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_title(model)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    _write(Path(path), "--plot", lambda p: fig.savefig(p, format="png", dpi=110))


# --- command line ------------------------------------------------------------------------


def _split_words(values: Sequence[str]) -> list[str]:
    return [w for v in values for w in v.replace(",", " ").split()]


def parse_models(values: Sequence[str]) -> list[str]:
    names = _split_words(values)
    for name in names:
        if name not in MODEL_NAMES:
            raise FastresError(f"unknown model {name!r}: choose from {', '.join(MODEL_NAMES)}")
    if not names:
        raise FastresError(f"--models needs at least one of {', '.join(MODEL_NAMES)}")
    return list(dict.fromkeys(names))


def parse_batch_sizes(values: Sequence[str]) -> list[int]:
    sizes = []
    for word in _split_words(values):
        try:
            size = int(word)
        except ValueError:
            raise FastresError(f"batch size {word!r} is not an integer: pass e.g. --batch-sizes 32 64 128") from None
        if size < 1:
            raise FastresError(f"batch sizes must be positive, got {size}: pass e.g. --batch-sizes 32 64 128")
        sizes.append(size)
    if not sizes:
        raise FastresError("--batch-sizes needs at least one size")
    return list(dict.fromkeys(sizes))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fastres bench`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "bench", help="measure training/inference throughput: baseline vs fastres",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Images/s of the train step (forward, loss, backward, SGD step) and of inference, for each\n"
            "model and batch size, in two configurations measured back to back in this process:\n"
            "  baseline  fp32, NCHW, eager: what a plain PyTorch script does\n"
            "  fastres   the trainer's default fast path (bf16 where supported, channels_last, compile on CUDA)\n"
            "Same threads, same input already in memory: the ratio measures the step alone.\n"
            "Timing: the first step alone (compile time), warm-up steps, then the median of --repeats\n"
            "repeats of at least --min-time seconds each (synchronised on a GPU)."),
        epilog="examples:\n  fastres bench --quick\n"
               "  fastres bench --models resnet18 --batch-sizes 32 64 128 256 512 --mode train --json bench.json --plot bench.png\n"
               "  fastres bench --models resnet18,resnet34,resnet50 --batch-sizes 128 --csv bench.csv")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help=f"models to measure (space or comma separated; default: all of {', '.join(MODEL_NAMES)})")
    p.add_argument("--batch-sizes", nargs="+", default=None, metavar="N",
                   help=f"batch sizes (default: {' '.join(map(str, DEFAULT_BATCH_SIZES))}; "
                        f"--quick: {' '.join(map(str, QUICK_BATCH_SIZES))})")
    p.add_argument("--mode", choices=("train", "infer", "both"), default="both",
                   help="train step, inference, or both (default: both)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: width-{QUICK_WIDTH} models, tiny batches, one step per repeat (numbers are not meaningful)")
    p.add_argument("--width", type=int, default=None, metavar="N",
                   help=f"first-stage channels (default 64, the real models; --quick: {QUICK_WIDTH})")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto (CUDA when present, else CPU), cuda or cpu")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads for both configurations (default: torch's default; --quick: 1)")
    p.add_argument("--warmup", type=int, default=None, metavar="N",
                   help=f"untimed steps after the first (default {FULL_TIMING.warmup})")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help=f"timed repeats; the median counts (default {FULL_TIMING.repeats})")
    p.add_argument("--min-time", type=float, default=None, metavar="S",
                   help=f"least seconds per timed repeat (default {FULL_TIMING.min_repeat_s:g})")
    p.add_argument("--mem-limit", type=float, default=None, metavar="GB",
                   help="on CPU, skip configurations estimated to need more than this (default: the memory free now)")
    p.add_argument("--json", metavar="PATH", help="write machine info and every record as JSON")
    p.add_argument("--csv", metavar="PATH", help="write one CSV row per record")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of images/s against batch size per model")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: a bar on a terminal, a line per configuration otherwise)")
    return p


def run(args: argparse.Namespace) -> int:
    """``fastres bench``: validate everything first, sweep, print the table, write the files."""
    models = parse_models(args.models) if args.models else list(MODEL_NAMES)
    batch_sizes = (parse_batch_sizes(args.batch_sizes) if args.batch_sizes
                   else list(QUICK_BATCH_SIZES if args.quick else DEFAULT_BATCH_SIZES))
    modes = list(MODES) if args.mode == "both" else [args.mode]
    width = args.width if args.width is not None else (QUICK_WIDTH if args.quick else 64)
    if width < 1:
        raise FastresError(f"--width must be a positive integer, got {width}")
    if args.threads is not None and args.threads < 1:
        raise FastresError(f"--threads must be a positive integer, got {args.threads}")
    if args.mem_limit is not None and not (args.mem_limit > 0 and math.isfinite(args.mem_limit)):
        raise FastresError(f"--mem-limit must be a positive number of GB, got {args.mem_limit}")
    base = QUICK_TIMING if args.quick else FULL_TIMING
    timing = Timing(warmup=base.warmup if args.warmup is None else args.warmup,
                    repeats=base.repeats if args.repeats is None else args.repeats,
                    min_repeat_s=base.min_repeat_s if args.min_time is None else args.min_time,
                    max_steps=base.max_steps if args.min_time is None else FULL_TIMING.max_steps)
    outputs = {flag: check_writable(path, flag) for flag, path in
               (("--json", args.json), ("--csv", args.csv), ("--plot", args.plot)) if path}

    import torch

    from .runtime import resolve_device

    device = resolve_device(args.device)
    # --quick defaults to one thread: its tiny steps are mostly OpenMP barriers, which stall
    # for whole scheduler slices when the cores are shared; it is a smoke test, not a measurement.
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    machine = machine_info(device)
    fast = fastres_runtime(device)
    n = machine["threads"]
    print(f"fastres bench on {machine['gpu'] or machine['cpu']} ({device.type}, {n} thread{'s' * (n != 1)}, "
          f"torch {machine['torch']}); width {width}{' (quick: not a measurement)' if args.quick else ''}", flush=True)
    print(f"baseline: fp32, NCHW, eager   fastres: {fast.precision}, "
          f"{'channels_last' if fast.channels_last else 'NCHW'}, compile {'on' if fast.compile else 'off'}", flush=True)
    mem_limit = int(args.mem_limit * 1e9) if args.mem_limit is not None else None
    records = sweep(models, batch_sizes, modes, device=device, width=width, timing=timing,
                    mem_limit_bytes=mem_limit, progress=args.progress)
    print(format_table(records), flush=True)
    settings = {"models": models, "batch_sizes": batch_sizes, "modes": modes, "width": width,
                "quick": bool(args.quick), "warmup": timing.warmup, "repeats": timing.repeats,
                "min_repeat_s": timing.min_repeat_s, "threads": torch.get_num_threads(),
                "mem_limit_gb": args.mem_limit}
    if "--json" in outputs:
        write_json(outputs["--json"], machine, records, settings)
    if "--csv" in outputs:
        write_csv(outputs["--csv"], records)
    if "--plot" in outputs:
        write_plot(outputs["--plot"], records, title=f"{machine['gpu'] or machine['cpu']}, torch {machine['torch']}")
    if outputs:
        print()
    for flag, path in outputs.items():
        print(f"wrote {flag[2:]}: {path}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fastres.bench``: the same as ``fastres bench``."""
    from .cli import main as cli_main

    return cli_main(["bench", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
