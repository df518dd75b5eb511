"""The run directory: the one place its layout is defined, for the writer and every reader.

::

    <run_dir>/
      config.json          resolved TrainConfig
      metrics.jsonl        one JSON object per finished epoch
      summary.json         written when the run ends (also after an interruption)
      tensorboard/         event files with the same scalars as metrics.jsonl
      checkpoints/last.pt  full training state after the latest epoch
      checkpoints/best.pt  the same, for the epoch with the best val accuracy

Accuracies are fractions in [0, 1] in every file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .errors import FastresError
from .files import atomic_write_text, ensure_writable_dir

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"

RUNS_ROOT = "runs"  # where runs go unless --run-dir says otherwise
STUDY_ROOT = "runs/ablations"  # fastres ablate's default --out: one run directory per (preset, seed)

# Keys every metrics.jsonl row carries; TensorBoard gets the same scalars.
METRIC_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "epoch_time_s")
# metrics.jsonl key -> TensorBoard tag (grouped so train and val curves share a chart section).
TB_TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "acc/train", "val_acc": "acc/val",
    "lr": "lr", "images_per_s": "perf/images_per_s", "epoch_time_s": "perf/epoch_time_s",
}


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
    metrics = property(lambda self: self.path / METRICS)
    summary = property(lambda self: self.path / SUMMARY)
    tensorboard = property(lambda self: self.path / TENSORBOARD)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    last_checkpoint = property(lambda self: self.path / CHECKPOINTS / LAST)
    best_checkpoint = property(lambda self: self.path / CHECKPOINTS / BEST)

    def holds_run(self) -> bool:
        return self.config.exists()

    def require_run(self, flag: str = "--resume") -> RunDir:
        """This run directory, or a one-line error naming ``flag`` when it holds no run."""
        if not self.holds_run():
            raise FastresError(f"{flag} {self.path}: no fastres run there (no {CONFIG}); "
                               f"start one with fastres train --run-dir {self.path}")
        return self

    def create(self) -> None:
        """Create a fresh run directory; refuse one that already holds a run."""
        if self.holds_run():
            raise FastresError(
                f"{self.path} already holds a run: pass --resume {self.path} to continue it, "
                "or a new --run-dir"
            )
        ensure_writable_dir(self.checkpoints, "run directory", "--run-dir")

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config, json.dumps(config, indent=2) + "\n")

    def read_config(self) -> dict[str, Any]:
        return _read_json(self.config, "config")

    def append_metrics(self, row: dict[str, Any]) -> None:
        missing = [k for k in METRIC_KEYS if k not in row]
        if missing:
            raise ValueError(f"metrics row lacks {missing}")
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

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
        """``'new'`` (no run here), ``'completed'`` (every planned epoch done), or why not.

        Otherwise the summary's status (``interrupted``, ``diverged``, ``failed``), or
        ``'incomplete'`` when no summary was written (killed, or still running). A summary
        that says completed with fewer epochs than the config plans also counts as incomplete.
        """
        if not self.holds_run():
            return "new"
        if not self.summary.exists():
            return "incomplete"
        summary = self.read_summary()
        status = summary.get("status", "incomplete")
        planned = self.read_config().get("epochs")
        if status == "completed" and planned is not None and (summary.get("epochs") or 0) < planned:
            return "incomplete"
        return status


def find_runs(root: str | Path) -> list[RunDir]:
    """Every run directory at or below ``root``, sorted by path."""
    root = Path(root)
    return [RunDir(p.parent) for p in sorted(root.rglob(CONFIG)) if p.is_file()]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FastresError(f"{path.parent} holds no fastres run ({path.name} is missing)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise FastresError(f"the {what} file {path} is unreadable ({exc})") from None
