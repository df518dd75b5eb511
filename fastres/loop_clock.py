"""Where a training epoch's time goes on a CPU: the loader, augmentation, the step and the
rest, timed in the loop (``LoopClock``) and summed over a run (``loop_account``)."""

from __future__ import annotations

import time
from typing import Any


class LoopClock:
    """Wall time of each part of the training loop, summed over an epoch: waiting for the
    loader, augmentation (resizing included), the train step, and the rest (scheduler, EMA,
    bookkeeping). Only on a CPU, where an operation has finished when it returns, so each part
    is exact and measured in the same epoch as the others: drift of a shared machine's speed
    cancels in their ratios. On a GPU the host runs ahead of the device and the parts would
    say where the host waited, not what cost what; timing them would need a sync per part."""

    PARTS = ("load", "augment", "step", "other")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        self.last = time.perf_counter()

    def lap(self, part: str) -> None:
        if self.enabled:
            now = time.perf_counter()
            self.seconds[part] += now - self.last
            self.last = now

    def totals(self) -> dict[str, float] | None:
        return dict(self.seconds) if self.enabled else None


def loop_account(rows: list[dict[str, Any]]) -> str | None:
    """Where the training epochs' time went, over the whole run (CPU runs only: see LoopClock)."""
    parts = [r["loop_time_s"] for r in rows if r.get("loop_time_s")]
    total = sum(sum(p.values()) for p in parts)
    if not parts or total <= 0:
        return None
    shares = ", ".join(
        f"{name} {100 * sum(p[name] for p in parts) / total:.1f}%" for name in LoopClock.PARTS
    )
    return f"training time by part of the loop: {shares}"
