"""Whether a run had its CPU cores to itself.

Another process on the same cores slows a run without changing its results, so its times then
measure the machine's load, not the recipe. Linux counts, per thread, how long the thread was
runnable but waiting for a CPU (``/proc/self/task/*/schedstat``); summed over the process's
threads and divided by the wall time, that is the average number of its threads kept waiting:
near 0 for a run alone, near 1 beside busy processes (BENCHMARKS.md, "Sharing the CPU").
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Threads kept waiting on average, over a run, from which its times are reported as shared
# (a run alone stays far below it: its own threads rarely outnumber free cores).
SHARED = 0.25
TASKS = Path("/proc/self/task")


def thread_waits() -> dict[int, float] | None:
    """Seconds each live thread of this process has spent waiting for a CPU; None where the
    kernel does not say (not Linux, or built without scheduler statistics)."""
    try:
        tids = os.listdir(TASKS)
    except OSError:
        return None
    waits = {}
    for tid in tids:
        try:
            waits[int(tid)] = int((TASKS / tid / "schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue  # the thread ended while being read
    return waits or None


class CpuWait:
    """The average number of this process's threads waiting for a CPU since it was made (or
    since the last :meth:`lap`). A thread that ends between two laps takes its waiting with it,
    so this errs low."""

    def __init__(self) -> None:
        self.waits, self.time = thread_waits(), time.perf_counter()

    def lap(self) -> float | None:
        waits, now = thread_waits(), time.perf_counter()
        before, start = self.waits, self.time
        self.waits, self.time = waits, now
        if waits is None or before is None or now <= start:
            return None
        # max(0, ...): a new thread may have the number of one that ended.
        return sum(max(0.0, w - before.get(tid, 0.0)) for tid, w in waits.items()) / (now - start)


def run_average(rows: Iterable[Mapping[str, Any]]) -> float | None:
    """A run's ``cpu_wait`` from its epochs' (metrics.jsonl rows), weighted by their time, so a
    resumed run's value covers every epoch; None when no epoch measured it."""
    measured = [
        (r["cpu_wait"], r["epoch_time_s"])
        for r in rows
        if r.get("cpu_wait") is not None and r.get("epoch_time_s")
    ]
    total = sum(t for _, t in measured)
    return sum(w * t for w, t in measured) / total if total > 0 else None


def is_shared(cpu_wait: float | None) -> bool:
    """Whether a ``cpu_wait`` says other processes used the cores (None: not measured)."""
    return cpu_wait is not None and cpu_wait >= SHARED


def shared_note(cpu_wait: float | None) -> str | None:
    """The line a run ends with when it shared its CPU, else None."""
    if not is_shared(cpu_wait):
        return None
    return (
        f"note: {cpu_wait:.2f} of this run's threads waited for a CPU on average (other processes "
        "used "
        "its cores): its times measure the machine's load, not the recipe's cost; the results are "
        "unaffected"
    )
