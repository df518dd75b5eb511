"""What the machine decides: device, precision, torch.compile, determinism."""

from __future__ import annotations

import os
import platform
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .errors import FastresError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    device_name: str
    precision: str  # bf16 | fp16 | fp32, resolved
    compile: bool
    channels_last: bool

    @property
    def amp_dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def autocast(self) -> bool:
        return self.precision != "fp32"

    @property
    def grad_scaler(self) -> bool:
        # fp16 has too little range for small gradients; bf16 has fp32's exponent and needs none.
        return self.precision == "fp16"

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on this runtime's device, in its memory format: how every model is set up."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def describe(self) -> str:
        return (
            f"{self.device_name} ({self.device.type}), precision {self.precision}, "
            f"channels_last {'on' if self.channels_last else 'off'}, compile "
            f"{'on' if self.compile else 'off'}"
        )


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX-512 BF16 / AMX), where it pays."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def resolve_device(requested: str, local_rank: int | None = None) -> torch.device:
    """CUDA when present (the process's own GPU under torchrun), else CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise FastresError(
            "--device cuda was asked for but no CUDA GPU is visible: use --device auto or cpu"
        )
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device() if local_rank is None else local_rank)


def resolve_precision(requested: str, device: torch.device) -> str:
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return "bf16" if bf16 else "fp16"
        if requested == "bf16" and not bf16:
            raise FastresError("this GPU has no bf16 support: use --precision fp16 or auto")
        return requested
    if requested == "auto":
        return "bf16" if cpu_supports_bf16() else "fp32"
    if requested == "fp16":
        raise FastresError(
            "fp16 training is not supported on the CPU: use --precision bf16, fp32 or auto"
        )
    return requested


def resolve_runtime(config: TrainConfig, local_rank: int | None = None) -> Runtime:
    device = resolve_device(config.device, local_rank)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    # compile pays on CUDA; on the CPU it costs a long cold compile and gains nothing for bf16
    # (BENCHMARKS.md, "torch.compile for `quick`, with a warm inductor cache").
    compile_ = config.compile == "on" or (config.compile == "auto" and device.type == "cuda")
    return Runtime(
        device, name, resolve_precision(config.precision, device), compile_, config.channels_last
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (and no cuDNN autotuning) when asked; fastest kernels otherwise."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception and those it wraps (torch.compile re-raises errors from inside its graphs
    as its own), each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_out_of_memory(exc: BaseException | None) -> bool:
    """CUDA's OutOfMemoryError or the CPU allocator refusing, also when wrapped."""
    return any(
        isinstance(e, torch.cuda.OutOfMemoryError)
        or (
            isinstance(e, RuntimeError)
            and ("out of memory" in str(e) or "can't allocate memory" in str(e))
        )
        for e in _chain(exc)
    )


# What CUDA's runtime and libraries say when a kernel or the device itself failed (not out of
# memory, which is told apart first): the process's CUDA context is unusable afterwards.
_DEVICE_FAULT_MARKS = ("CUDA error", "CUBLAS_STATUS_", "CUDNN_STATUS_", "cuDNN error")


def device_fault(exc: BaseException | None) -> str | None:
    """The first line of a GPU fault's message (a failed kernel launch, an illegal address, a
    library's execution failure), also when wrapped; None otherwise."""
    accelerator_error = getattr(torch, "AcceleratorError", ())  # torch >= 2.8
    for e in _chain(exc):
        text = str(e).strip()
        if isinstance(e, accelerator_error) or (
            isinstance(e, RuntimeError) and any(m in text for m in _DEVICE_FAULT_MARKS)
        ):
            return text.splitlines()[0][:300] if text else type(e).__name__
    return None


def compile_stats() -> dict[str, Any]:
    """What torch.compile did in this process so far: seconds spent compiling (dynamo's own
    accounting: graph capture and the backend, forward and backward), how many frames it
    compiled (every new input shape or mode past the first compile is one more: each
    progressive-resizing size, a last partial test batch, train -> eval), and whether it hit
    its recompile limit, past which it silently runs the function eagerly."""
    from torch._dynamo.utils import calculate_time_spent, counters

    limit_hit = any("recompile limit" in str(reason) for reason in counters["unimplemented"])
    return {
        "compile_time_s": round(calculate_time_spent().get("total_wall_time", 0.0), 3),
        "compiles": int(counters["frames"]["ok"]),
        "recompile_limit_hit": limit_hit,
    }


# A run's input sizes are few and known (progressive resizing: at most 7, plus evaluation), so
# each gets its own static graph. Left to dynamo, the second size switches to one
# shape-generic graph, which ran much slower on the CPU (BENCHMARKS.md, "torch.compile and
# progressive resizing"); the limit leaves room for every size before dynamo gives up.
RECOMPILE_LIMIT = 16


def compile_module(
    module: nn.Module, backend: str = "inductor", mode: str | None = None
) -> nn.Module:
    """``torch.compile`` with one static graph per input shape (see RECOMPILE_LIMIT). ``mode``
    is inductor's (e.g. "reduce-overhead": CUDA graphs); other backends ignore it."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(
        torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT
    )
    return torch.compile(
        module, dynamic=False, backend=backend, mode=mode if backend == "inductor" else None
    )
