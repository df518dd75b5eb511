"""The run directory: the one place its layout is defined, for the writer and every reader.

::

    <run_dir>/
      config.json          resolved TrainConfig
      recipe.sha256        SHA-256 of its recipe and preset when the run started: a config.json
                           edited since is named and refused by resume, report and ablate --reuse
                           (runs from before it was kept have none and count as unverified)
      metrics.jsonl        one JSON object per finished epoch
      summary.json         written when the run ends (also after an interruption)
      val_split.json       with --val-split: the held-out training images' indices and their hash
      tensorboard/         event files with the same scalars as metrics.jsonl
      checkpoints/last.pt  full training state after the latest epoch
      checkpoints/best.pt  the same, for the epoch with the best val accuracy (of the held-out
                           split with --val-split, else of the test set)
      .lock                locked (lockf) by the one process training the run; never removed
      .lock-holder.json    that process's PID, host and start time, for messages only

Accuracies are fractions in [0, 1] in every file. A study (``fastres ablate``) is a folder of
run directories, ``<out>/<preset>/seed<S>/``, with ``<out>/study.json`` recording its plan and
every launch of it (with the job id of each run a scheduler took), and ``<out>/jobs/`` holding
the scheduler's logs.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import FastresError
from .files import (
    FileLock,
    atomic_write_text,
    ensure_writable_dir,
    write_failure,
    writing,
)

CONFIG = "config.json"
RECIPE_DIGEST = "recipe.sha256"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
VAL_SPLIT = "val_split.json"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
LOCK = ".lock"
HOLDER = ".lock-holder.json"

RUNS_ROOT = "runs"  # where runs go unless --run-dir says otherwise
STUDY_ROOT = (
    "runs/ablations"  # fastres ablate's default --out: one run directory per (preset, seed)
)
STUDY = "study.json"  # in a study's folder: its plan and every launch of it
STUDY_LOCK = ".study.lock"
STUDY_JOBS = "jobs"  # in a study's folder: submitit's job scripts, pickles and one log per task

# Keys every metrics.jsonl row carries; TensorBoard gets the same scalars.
METRIC_KEYS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "images_per_s",
    "epoch_time_s",
)
# metrics.jsonl keys that are wall times, so differ between two runs of one recipe (the rest of
# a row is the same for the same seed). loop_time_s: seconds per part of the training loop
# (load, augment, step, other), measured on a CPU only (None elsewhere: see loop_clock.LoopClock).
# cpu_wait: how many of the process's threads waited for a CPU on average (contention.py).
TIMING_KEYS = (
    "images_per_s",
    "epoch_time_s",
    "epoch_train_s",
    "loop_time_s",
    "checkpoint_time_s",
    "cpu_wait",
)
# summary.json's "finished": when the run ended, local time with its UTC offset.
FINISHED_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
# metrics.jsonl key -> TensorBoard tag (grouped so train and val curves share a chart section).
TB_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "acc/train",
    "val_acc": "acc/val",
    "lr": "lr",
    "images_per_s": "perf/images_per_s",
    "epoch_time_s": "perf/epoch_time_s",
}


class RunDirBusy(FastresError):
    """Another process is training the run: this one refused, having written nothing."""

    exit_code = 75  # EX_TEMPFAIL (sysexits.h): not an error in the request; try again later


def finished_stamp() -> str:
    """Now, as summary.json's "finished" records it."""
    return time.strftime(FINISHED_FORMAT)


def training_interval(summary: dict[str, Any]) -> tuple[float, float] | None:
    """When a finished run trained, as (start, end) in seconds since the epoch: its
    "finished" stamp (to the second) minus ``train_time_s``; None when either is missing."""
    stamp, seconds = summary.get("finished"), summary.get("train_time_s")
    if not stamp or seconds is None:
        return None
    try:
        end = datetime.datetime.strptime(stamp, FINISHED_FORMAT).timestamp()
    except ValueError:
        return None
    return end - float(seconds), end


def default_run_dir(preset: str, root: str | Path = RUNS_ROOT) -> Path:
    """``runs/<preset>-<timestamp>``, made unique if two runs start in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{preset or 'custom'}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


class RunDir:
    """Paths and typed read/write helpers for one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / CONFIG)
    recipe_digest = property(lambda self: self.path / RECIPE_DIGEST)
    metrics = property(lambda self: self.path / METRICS)
    summary = property(lambda self: self.path / SUMMARY)
    tensorboard = property(lambda self: self.path / TENSORBOARD)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    last_checkpoint = property(lambda self: self.path / CHECKPOINTS / LAST)
    best_checkpoint = property(lambda self: self.path / CHECKPOINTS / BEST)
    lock_file = property(lambda self: self.path / LOCK)
    holder_file = property(lambda self: self.path / HOLDER)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold this run directory for the block: one process at a time may train or resume it.

        Taken before anything in the folder is read or changed. A second process gets
        ``RunDirBusy`` at once, naming the holder, and has written nothing. A folder this call
        created and left without a run (the run failed before it began) is removed again.
        """
        lock = FileLock(self.lock_file)
        try:
            created = not self.path.exists()  # a name too long for the file system fails here
            self.path.mkdir(parents=True, exist_ok=True)
            acquired = lock.acquire(wait=False)
        except OSError:
            ensure_writable_dir(self.path, "run directory", "--run-dir")  # raises, naming the cause
            raise
        if not acquired:
            raise RunDirBusy(
                f"{self.path} is being trained by another process ({self.describe_holder()}): "
                "wait for it to finish, or stop it and run the same command again"
            )
        try:
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_text(self.holder_file, json.dumps(holder) + "\n")
            yield
        finally:
            self.holder_file.unlink(
                missing_ok=True
            )  # before the lock goes: the next holder writes its own
            if created and not self.holds_run():
                shutil.rmtree(self.path, ignore_errors=True)
            lock.release()

    def holder_pid(self) -> int | None:
        """The PID of the process training this run now, or None."""
        return FileLock(self.lock_file).holder_pid()

    def describe_holder(self) -> str:
        """``pid 1234 on host, since 2026-11-29T10:00:00+0000`` for messages."""
        pid = self.holder_pid()
        try:
            info = json.loads(self.holder_file.read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("pid") not in (None, pid) and pid not in (None, -1):
            info = {}  # left by an earlier holder: only the kernel's PID is current
        pid = info.get("pid", pid)
        where = f" on {info['host']}" if info.get("host") else ""
        since = f", since {info['started']}" if info.get("started") else ""
        return f"pid {pid}{where}{since}" if pid not in (None, -1) else "a process on this machine"

    def holds_run(self) -> bool:
        return self.config.exists()

    def require_run(self, flag: str = "--resume") -> RunDir:
        """This run directory, or a one-line error naming ``flag`` when it holds no run."""
        if not self.holds_run():
            raise FastresError(
                f"{flag} {self.path}: no fastres run there (no {CONFIG}); "
                f"start one with fastres train --run-dir {self.path}"
            )
        return self

    def create(self) -> None:
        """Create a fresh run directory; refuse one that already holds a run."""
        if self.holds_run():
            raise FastresError(
                f"{self.path} already holds a run: pass --resume {self.path} to continue it, "
                "or a new --run-dir"
            )
        ensure_writable_dir(self.checkpoints, "run directory", "--run-dir")

    def write_config(self, config: dict[str, Any], recipe_digest: str | None = None) -> None:
        """config.json, and the digest of its recipe that readers check it against (first, so
        that no config.json of a new run is ever without it)."""
        if recipe_digest is not None:
            atomic_write_text(self.recipe_digest, recipe_digest + "\n")
        atomic_write_text(self.config, json.dumps(config, indent=2) + "\n")

    def recorded_digest(self) -> str | None:
        """The recipe digest written when the run started; None for runs from before it was kept."""
        try:
            return self.recipe_digest.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FastresError(f"{self.recipe_digest} is unreadable ({exc})") from None

    def read_config(self) -> dict[str, Any]:
        return _read_json(self.config, "config")

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one row; if the disk refuses it, cut the file back so earlier rows stay whole."""
        missing = [k for k in METRIC_KEYS if k not in row]
        if missing:
            raise ValueError(f"metrics row lacks {missing}")
        with writing(self.metrics), open(self.metrics, "a") as f:
            size = f.tell()
            try:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:
                with contextlib.suppress(OSError):
                    f.truncate(size)  # shrinking needs no space
                raise write_failure(self.metrics, exc) from None

    def rewrite_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete row; a torn last line (killed mid-write) is ignored."""
        if not self.metrics.exists():
            return []
        rows = []
        for line in self.metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return rows

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary, json.dumps(summary, indent=2) + "\n")

    def read_summary(self) -> dict[str, Any]:
        return _read_json(self.summary, "summary")

    def state(self) -> str:
        """``'new'`` (no run here), ``'running'`` (a process holds it now), ``'completed'``
        (every planned epoch done), or why not.

        Otherwise the summary's status (``interrupted``, ``diverged``, ``failed``), or
        ``'incomplete'`` when no summary was written (killed, or still running). A summary
        that says completed with fewer epochs than the config plans also counts as incomplete.
        """
        if not self.holds_run():
            return "new"
        if self.holder_pid() is not None:
            return "running"
        if not self.summary.exists():
            return "incomplete"
        summary = self.read_summary()
        status = summary.get("status", "incomplete")
        planned = self.read_config().get("epochs")
        if status == "completed" and planned is not None and (summary.get("epochs") or 0) < planned:
            return "incomplete"
        return status


def record_study(out: str | Path, plan: dict[str, Any], launch: dict[str, Any]) -> None:
    """Write ``OUT/study.json``: the study's plan (its runs joined with those of earlier
    launches on the same folder) and one more entry in its list of launches. Studies that
    share the folder take turns, so none loses another's entry."""
    out = Path(out)
    with FileLock(out / STUDY_LOCK):
        try:
            old = json.loads((out / STUDY).read_text())
        except (OSError, ValueError):
            old = {}
        runs = {r["run_dir"]: r for r in [*old.get("runs", []), *plan["runs"]]}
        # The same launch recorded again (now with its job ids) replaces its first entry.
        key = (launch.get("host"), launch.get("pid"), launch.get("started"))
        earlier = [
            e
            for e in old.get("launches", [])
            if (e.get("host"), e.get("pid"), e.get("started")) != key
        ]
        # Variants of earlier launches stay named: a later study may add variants to the folder.
        variants = {**old.get("variants", {}), **plan.get("variants", {})}
        doc = {**plan, "runs": list(runs.values()), "launches": [*earlier, launch]}
        if variants:
            doc["variants"] = variants
        atomic_write_text(out / STUDY, json.dumps(doc, indent=2) + "\n")


def read_study(out: str | Path) -> dict[str, Any]:
    path = Path(out) / STUDY
    if not path.exists():
        raise FastresError(
            f"{out} holds no fastres study (no {STUDY}): studies record themselves when "
            f"fastres ablate runs with --out {out}"
        )
    return _read_json(path, "study")


def reused_runs(out: str | Path) -> list[tuple[str, int, Path]]:
    """The finished runs of earlier studies that the study in ``out`` counts as its own
    (``fastres ablate --reuse``): (setting, seed, run directory); none without a study."""
    path = Path(out) / STUDY
    if not path.exists():
        return []
    study = _read_json(path, "study")
    return [
        (
            r.get("setting", r["preset"]),
            int(r["seed"]),
            Path(os.path.normpath(Path(out) / r["run_dir"])),
        )
        for r in study.get("runs", [])
        if r.get("reused")
    ]


def find_runs(root: str | Path) -> list[RunDir]:
    """Every run directory at or below ``root``, sorted by path."""
    root = Path(root)
    return [RunDir(p.parent) for p in sorted(root.rglob(CONFIG)) if p.is_file()]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FastresError(f"{path.parent} holds no fastres run ({path.name} is missing)") from None
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise FastresError(f"the {what} file {path} is unreadable ({exc})") from None
