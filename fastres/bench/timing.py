"""How long a benchmark measures, and how its clock is read.

Every measurement follows one protocol: the first step alone (that is where torch.compile,
cuDNN autotuning and allocator warm-up go, so it is reported apart and never mixed into the
throughput), untimed warm-up steps, then several timed repeats, with the GPU synchronised
before and after each. The reported rate is the median repeat.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import FastresError

FULL_ENV = "FASTRES_BENCH_FULL"  # =1: the benchmark suites run the full sweep, not the smoke test


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
                "timing needs warmup >= 0, repeats >= 1 and min-time >= 0, got warmup "
                f"{self.warmup}, "
                f"repeats {self.repeats}, min-time {self.min_repeat_s}"
            )


FULL_TIMING = Timing()
# One step per repeat: a smoke test of the code paths, not a measurement.
QUICK_TIMING = Timing(warmup=1, repeats=2, min_repeat_s=0.0, max_steps=1)


def full_mode() -> bool:
    """Whether the benchmark suites run the full sweep (``FASTRES_BENCH_FULL=1``)."""
    return os.environ.get(FULL_ENV, "") not in ("", "0")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer read afterwards covers it; a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
