"""The local launcher's pool: the planned runs as ``fastres train`` child processes of this
one, a few at a time, each pinned to its device; skip, resume, retry after a GPU fault, and
stop cleanly on Ctrl-C or a scheduler's signal."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import contention
from ..errors import DeviceFault
from ..formatting import duration
from ..rundir import RunDir, RunDirBusy
from .devices import expand_slots
from .planning import PlannedRun, refresh


@dataclass
class RunResult:
    run: PlannedRun
    status: (
        str  # "skipped", "finished", "failed", "interrupted", "elsewhere" (held by another process)
    )
    seconds: float = 0.0
    returncode: int | None = None
    message: str = ""


@dataclass
class PoolResult:
    results: list[RunResult] = field(default_factory=list)
    interrupted: bool = False
    signum: int = (
        0  # the signal that stopped the study (SIGINT, SIGTERM, SIGUSR1/2), when interrupted
    )

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.results if r.status == "failed"]


class _Eta:
    """Time left, from the epoch times the study's runs have logged so far.

    A preset not yet seen is assumed to cost the mean of the seen ones, so the estimate is
    rough until every preset has run an epoch. Start-up (interpreter, data, first epoch's
    warm-up) is added per run from the runs measured so far.
    """

    def __init__(self, runs: Sequence[PlannedRun], slots: int) -> None:
        self.runs, self.slots = list(runs), max(1, slots)
        self.overheads: list[float] = []

    def epoch_seconds(self) -> dict[str, list[float]]:
        seen: dict[str, list[float]] = {}
        for run in self.runs:
            for row in RunDir(run.run_dir).read_metrics():
                seen.setdefault(run.group, []).append(float(row["epoch_time_s"]))
        return seen

    def left(self, pending: Sequence[PlannedRun]) -> float | None:
        seen = self.epoch_seconds()
        if not seen:
            return None
        per_preset = {p: sum(v) / len(v) for p, v in seen.items()}
        fallback = sum(per_preset.values()) / len(per_preset)
        overhead = sum(self.overheads) / len(self.overheads) if self.overheads else 0.0
        total = 0.0
        for run in pending:
            left_epochs = run.config.epochs - len(RunDir(run.run_dir).read_metrics())
            total += max(0, left_epochs) * per_preset.get(run.group, fallback) + overhead
        return total / self.slots


class _Child:
    """A running ``fastres train``: its process, output readers and last error line."""

    def __init__(
        self,
        run: PlannedRun,
        device: str | None,
        log: Callable[[str], None],
        on_epoch: Callable[[], None],
    ) -> None:
        self.run, self.device, self.started = run, device, time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        # A session of its own: a Ctrl-C in the terminal reaches only the ablation, which then
        # stops every child exactly once (a second SIGINT would make a child skip its summary).
        self.proc = subprocess.Popen(
            run.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
            bufsize=1,
        )
        self.last_error = ""
        tag = f"  {run.name}" + (f" @GPU{device}" if device is not None else "") + " | "

        def pump(stream: Any, is_err: bool) -> None:
            for line in stream:
                line = line.rstrip()
                if not line:
                    continue
                if is_err:
                    self.last_error = line
                log(tag + line)
                if not is_err and line.startswith("epoch "):
                    on_epoch()

        self.readers = [
            threading.Thread(target=pump, args=(s, e), daemon=True)
            for s, e in ((self.proc.stdout, False), (self.proc.stderr, True))
        ]
        for t in self.readers:
            t.start()

    def finish(self) -> int:
        code = self.proc.wait()
        for t in self.readers:
            t.join(timeout=10)
        return code


def run_pool(
    runs: Sequence[PlannedRun],
    *,
    devices: Sequence[str] | None = None,
    runs_per_device: int = 1,
    log: Callable[[str], None] = print,
    poll_s: float = 0.2,
    retries: int = 1,
) -> PoolResult:
    """Run the planned runs: skip finished ones, resume interrupted ones, train the rest.

    With ``devices`` (CUDA_VISIBLE_DEVICES values), up to ``runs_per_device`` runs per device
    go at a time, each pinned to its device; otherwise ``runs_per_device`` runs at a time on
    the default device (on the CPU, give them their share of the cores with ``share_cores``).
    A run the GPU failed under (exit status ``DeviceFault.exit_code``) is resumed from its last
    checkpoint, at the back of the queue, up to ``retries`` times; any other failed run is
    reported with its last error line and the others go on. Each run's directory is read again
    just before it starts, so several studies on one folder share out the runs (a run held by
    another process is left to it). Ctrl-C, SIGTERM, SIGUSR1 or SIGUSR2 stops the running
    children cleanly (they can be resumed by running the same study again) and sets
    ``interrupted``.
    """
    pool = _Pool(runs, expand_slots(devices, runs_per_device), log, retries)
    pool.announce()
    try:
        while pool.queue or pool.running:
            pool.start_free_slots()
            time.sleep(poll_s)
            pool.report_progress()
            pool.collect_finished()
    except KeyboardInterrupt as exc:
        pool.result.interrupted = True
        sig = getattr(exc, "signum", signal.SIGINT)
        pool.result.signum = int(sig)
        pool.say(f"ablation: stopping {len(pool.running)} running run(s) cleanly ...")
        pool.result.results += _stop(list(pool.running.values()), sig)
    return pool.result


class _Pool:
    """The state of ``run_pool``: the queue, the children by slot, the results so far."""

    def __init__(
        self,
        runs: Sequence[PlannedRun],
        slots: list[str | None],
        log: Callable[[str], None],
        retries: int,
    ) -> None:
        self.runs, self.slots, self.log, self.retries = list(runs), slots, log, retries
        self.lock = threading.Lock()
        self.result = PoolResult()
        for r in runs:
            if r.action == "skip":
                self.result.results.append(RunResult(r, "skipped", message="already finished"))
            elif r.action == "reuse":
                self.result.results.append(
                    RunResult(r, "skipped", message=f"finished in {r.run_dir}, reused")
                )
            elif r.action == "elsewhere":
                self.result.results.append(
                    RunResult(r, "elsewhere", message=f"running elsewhere ({r.holder})")
                )
        self.total = len(runs)
        self.eta = _Eta(runs, len(slots))
        self.queue = [r for r in runs if r.runs_here]
        self.retried: dict[Path, int] = {}  # by run directory: resumes after a device fault so far
        self.running: dict[int, _Child] = {}  # by slot index: a GPU may hold several runs
        # Reader threads only raise this flag; the main loop (which owns `running`) prints.
        self.epoch_seen = threading.Event()
        self.last_progress = time.monotonic()

    def say(self, message: str) -> None:
        with self.lock:
            self.log(message)

    def progress(self) -> str:
        result = self.result
        done = result.count("finished") + result.count("skipped")
        left = self.eta.left([c.run for c in self.running.values()] + self.queue)
        text = f"{done}/{self.total} done"
        if result.failed:
            text += f", {len(result.failed)} failed"
        if left is None:
            return text + ", time left: after the first epoch"
        return text + f", about {duration(left)} left"

    def announce(self) -> None:
        """What the study skips, before it starts anything."""
        reused = [r for r in self.runs if r.action == "reuse"]
        if reused:
            self.say(
                f"ablation: reusing {len(reused)} run(s) finished in earlier studies: "
                + ", ".join(f"{r.name} ({r.run_dir})" for r in reused)
            )
        for status, what in (("skipped", "finished"), ("elsewhere", "running elsewhere")):
            passed = [
                r for r in self.result.results if r.status == status and r.run.action != "reuse"
            ]
            if passed:
                self.say(
                    f"ablation: skipping {len(passed)} {what} run(s): "
                    + ", ".join(r.run.name for r in passed)
                )

    def start_free_slots(self) -> None:
        for index, slot in enumerate(self.slots):
            if index in self.running or not self.queue:
                continue
            run = refresh(self.queue.pop(0))
            if not run.runs_here:  # finished or taken by another study since it was planned
                skip = run.action == "skip"
                self.result.results.append(
                    RunResult(
                        run,
                        "skipped" if skip else "elsewhere",
                        message="finished meanwhile"
                        if skip
                        else f"running elsewhere ({run.holder})",
                    )
                )
                self.say(_result_line(self.result.results[-1]) + f" ({self.progress()})")
                continue
            what = (
                f"resuming after epoch {run.done_epochs}/{run.config.epochs}"
                if run.action == "resume"
                else f"training {run.config.epochs} epochs"
            )
            where = f" on GPU {slot}" if slot is not None else ""
            number = self.total - len(self.queue) - len(self.running)
            with self.lock:  # the header comes before the child's first line
                self.running[index] = _Child(run, slot, self.say, self.epoch_seen.set)
                self.log(
                    f"[{number}/{self.total}] {run.name}: {what}{where} -> {run.run_dir} "
                    f"({self.progress()})"
                )

    def report_progress(self) -> None:
        # A progress line after an epoch, at most every 30 s, keeps long runs readable.
        if self.epoch_seen.is_set() and time.monotonic() - self.last_progress >= 30:
            self.epoch_seen.clear()
            self.last_progress = time.monotonic()
            self.say(f"ablation: {self.progress()}")

    def collect_finished(self) -> None:
        for index, child in list(self.running.items()):
            if child.proc.poll() is None:
                continue
            code = child.finish()
            del self.running[index]
            seconds = time.monotonic() - child.started
            run_dir = child.run.run_dir
            if code == DeviceFault.exit_code and self.retried.get(run_dir, 0) < self.retries:
                self.retried[run_dir] = self.retried.get(run_dir, 0) + 1
                self.queue.append(child.run)  # refreshed when it starts again: a resume
                self.say(
                    f"retrying {child.run.name} (resume {self.retried[run_dir]} of "
                    f"{self.retries}) after a GPU fault: "
                    f"{child.last_error or f'exit status {code}'}"
                )
                continue
            _record(self.result, child, code, seconds, self.eta)
            self.say(_result_line(self.result.results[-1]) + f" ({self.progress()})")


def _stop(children: Sequence[_Child], sig: int) -> list[RunResult]:
    """Pass the study's signal on to each running child (which checkpoints and writes its
    summary) and wait for them; one that does not stop within two minutes is killed."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(sig)
    results = []
    for child in children:
        try:
            code = child.proc.wait(timeout=120)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            child.proc.kill()
            code = child.proc.wait()
        child.finish()
        results.append(
            RunResult(
                child.run,
                "interrupted",
                time.monotonic() - child.started,
                code,
                f"stopped after epoch {len(RunDir(child.run.run_dir).read_metrics())}",
            )
        )
    return results


def _record(result: PoolResult, child: _Child, code: int, seconds: float, eta: _Eta) -> None:
    run = child.run
    state = RunDir(run.run_dir).state()
    if code == 0 and state == "completed":
        summary = RunDir(run.run_dir).read_summary()
        epoch_s = sum(
            float(r["epoch_time_s"]) for r in RunDir(run.run_dir).read_metrics()[run.done_epochs :]
        )
        eta.overheads.append(max(0.0, seconds - epoch_s))
        result.results.append(RunResult(run, "finished", seconds, code, finished_message(summary)))
        return
    reason = child.last_error or f"exit status {code}, run state {state}"
    if code == RunDirBusy.exit_code:  # another process took the run directory first
        result.results.append(RunResult(run, "elsewhere", seconds, code, reason))
        return
    result.results.append(RunResult(run, "failed", seconds, code, reason))


def finished_message(summary: dict[str, Any]) -> str:
    """What a finished run's line says: its final accuracy, and whether it shared its CPU."""
    wait = summary.get("cpu_wait")
    shared = (
        f" (shared its CPU: {wait:.2f} threads kept waiting; its time is not a measurement)"
        if contention.is_shared(wait)
        else ""
    )
    return f"final val acc {100 * summary['final_val_acc']:.2f}%{shared}"


def _result_line(r: RunResult) -> str:
    if r.status == "finished":
        return f"done {r.run.name} in {duration(r.seconds)}: {r.message}"
    if r.status == "elsewhere":
        return f"left {r.run.name} to the process that holds it: {r.message}"
    if r.status == "skipped":
        return f"skipped {r.run.name}: {r.message}"
    return f"FAILED {r.run.name} after {duration(r.seconds)} (exit {r.returncode}): {r.message}"
