"""What the prepared GPU calls share (``gpu_check.py``, ``gpu_step.py``): a JSON document
rewritten after every measurement against a time budget, so a call stopped by its limit keeps
what it measured; and a training run that a budget stops cleanly.

Imported by those scripts from their own folder (the GPU machine has the repository on
PYTHONPATH and torch, nothing installed); standard library only.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

# A run of `fast` at width 8 for 2 epochs of 500 images on the CPU, without compile: what the
# calls' --tiny mode trains instead of the GPU preset.
TINY_TRAIN_ARGS = [
    "--width",
    "8",
    "--epochs",
    "2",
    "--warmup-epochs",
    "0.5",
    "--batch-size",
    "50",
    "--train-subset",
    "500",
    "--test-subset",
    "100",
    "--device",
    "cpu",
    "--compile",
    "off",
    "--threads",
    "1",
]
STOP_GRACE_S = 60  # after SIGTERM, how long a run has to write its summary before it is killed


class BudgetedDoc:
    """A call's JSON document at ``path`` and its clock, which starts here: ``doc`` is filled
    by the call and written (with ``elapsed_s``) by :meth:`write` after every measurement."""

    def __init__(self, path: Path, budget_s: float) -> None:
        self.path, self.budget_s, self.started = path, budget_s, time.perf_counter()
        self.doc: dict[str, Any] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def write(self) -> None:
        from fastres.files import atomic_write_text

        self.doc["elapsed_s"] = round(self.elapsed(), 2)
        atomic_write_text(self.path, json.dumps(self.doc, indent=2) + "\n")

    def error(self, what: str) -> None:
        """Record the exception being handled under ``errors``."""
        self.doc["errors"].append({"what": what, "traceback": traceback.format_exc()[-4000:]})

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {text}", flush=True)


def run_stopping_cleanly(
    command: list[str], log: Path, env: dict[str, str], budget_s: float
) -> tuple[int, float]:
    """Run ``command`` with its output in ``log``; still going after ``budget_s`` it gets
    SIGTERM (fastres then stops cleanly, keeping its checkpoint and summary), and is killed only
    if that takes longer than STOP_GRACE_S. Returns the exit code and the wall time in s."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return proc.returncode, time.perf_counter() - started
