"""Memory: what the host has free, the peak a measurement used, and what a configuration
will need, so that one that cannot fit is skipped before it starts (on a CPU an attempt that
does not fit ends in the kernel's OOM killer, which takes the whole sweep with it)."""

from __future__ import annotations

import functools
import gc
from pathlib import Path
from typing import Any

import torch

from ..models import build_model


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
    # In a container the cgroup limit, not the host's free memory, decides when the OOM killer
    # fires.
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


def estimate_memory_bytes(
    model: str, batch_size: int, mode: str, precision: str, width: int = 64
) -> int:
    """Rough peak memory of one configuration, to skip those that cannot fit before trying.

    Training keeps most layers' outputs for the backward pass, plus gradient buffers of the
    largest layers and fp32 weights, gradients and momentum; inference keeps a few layers
    alive at a time. Deliberately on the high side, since an underestimate on a CPU means the
    OOM killer (measured peaks against it: docs/benchmarks.md, "Method").
    """
    params, per_image, largest = _activation_profile(model, width)
    elem = 4 if precision == "fp32" else 2
    overhead = 150 * 2**20  # allocator arenas, oneDNN/cuDNN workspaces
    if mode == "train":
        weights = params * 4 * 3 + (params * 2 if precision != "fp32" else 0)
        acts = per_image * batch_size * elem * 0.85 + largest * batch_size * 4 * 4
        return int(weights + acts + overhead)
    return int(params * 4 + largest * batch_size * 4 * 6 + overhead)
