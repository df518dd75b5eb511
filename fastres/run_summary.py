"""A run's summary (summary.json and the return value of ``train``): its results, what it ran
on, and the line the console ends with."""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from . import contention, seedstats, split
from .config import TrainConfig
from .data import DataSource
from .distributed import Dist
from .provenance import git_commit, versions
from .rundir import RunDir, finished_stamp
from .runtime import Runtime, compile_stats


class TrainedRun(Protocol):
    """What a summary is made of: the training loop's ``Trainer`` as it stands."""

    config: TrainConfig
    runtime: Runtime
    data: DataSource
    run: RunDir
    dist: Dist
    rows: list[dict[str, Any]]  # metrics of the finished epochs
    epoch: int
    best_epoch: int
    params: int
    graph_step: Any  # step.GraphStep or None
    trained_images: int
    train_seconds: float
    checkpoint_seconds: float

    def train_time_s(self) -> float: ...


def run_summary(trained: TrainedRun, status: str) -> dict[str, Any]:
    """The summary of ``trained`` as it stands, with its ``status`` (completed, interrupted,
    diverged, failed)."""
    rows = trained.rows
    last = rows[-1] if rows else {}
    rt, config = trained.runtime, trained.config
    no_compile = {"compile_time_s": None, "compiles": None, "recompile_limit_hit": None}
    images_per_s = trained.trained_images / trained.train_seconds if trained.train_seconds else None
    return {
        "status": status,
        "preset": config.preset,
        "model": config.model,
        "epochs": trained.epoch,
        "epochs_planned": config.epochs,
        "best_val_acc": max((r["val_acc"] for r in rows if r["val_acc"] is not None), default=None),
        "best_epoch": trained.best_epoch or None,
        **_val_split_summary(trained.data, rows),
        "final_val_acc": last.get("val_acc"),
        "final_val_loss": last.get("val_loss"),
        "final_train_acc": last.get("train_acc"),
        "final_train_loss": last.get("train_loss"),
        "train_time_s": trained.train_time_s(),
        "images_per_s": images_per_s,
        "checkpoint_time_s": trained.checkpoint_seconds,
        "cpu_wait": contention.run_average(rows),
        "params": trained.params,
        "device": rt.device_name,
        "device_type": rt.device.type,
        "precision": rt.precision,
        "channels_last": rt.channels_last,
        "compile": rt.compile,
        "cuda_graph_steps": (
            trained.graph_step.describe() if trained.graph_step is not None else None
        ),
        **(compile_stats() if rt.compile else no_compile),
        "loader": trained.data.loader,
        "data_hash": trained.data.data_hash,
        "seed": config.seed,
        "versions": versions() | {"threads": str(torch.get_num_threads())},
        "git_commit": git_commit(),
        "finished": finished_stamp(),
        "run_dir": str(trained.run.path),
        "world_size": trained.dist.world_size,
    }


def _val_split_summary(data: DataSource, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The held-out split's numbers (final_val_acc and best_val_acc stay the test set's), and
    which split chose best_epoch."""
    if data.val_indices is None:
        return {"best_on": "test"}
    accs = [r.get("val_split_acc") for r in rows]
    return {
        "best_on": "val_split",
        "val_split": len(data.val_indices),
        "val_split_digest": split.digest(data.val_indices),
        "val_split_acc": accs[-1] if accs else None,
        "best_val_split_acc": max((a for a in accs if a is not None), default=None),
    }


def finished_line(summary: dict[str, Any], run: RunDir) -> str:
    """The console's last line about a completed run: its accuracy, best epoch and time."""
    if summary["best_on"] == "val_split":
        best = (
            f"held-out acc {100 * summary['val_split_acc']:.2f}%, "
            f"best {100 * summary['best_val_split_acc']:.2f}% "
            f"at epoch {summary['best_epoch']}, which best.pt holds"
        )
        return (
            f"finished: test acc {100 * summary['final_val_acc']:.2f}% ({best}), "
            f"{summary['train_time_s']:.0f}s; logs in {run.path}"
        )
    return (
        f"finished: final val acc {100 * summary['final_val_acc']:.2f}% "
        f"(best {100 * summary['best_val_acc']:.2f}% at epoch {summary['best_epoch']}), "
        f"{summary['train_time_s']:.0f}s; logs in {run.path}"
    )


def chance_note(summary: dict[str, Any], test_images: int) -> str | None:
    """A line for a run that finished without learning: its accuracy is what guessing gives.
    None for a run that learned (or was never evaluated)."""
    accuracy = summary.get("final_val_acc")
    if accuracy is None or not seedstats.at_chance(accuracy, test_images):
        return None
    loss = summary.get("final_train_loss")
    losses = (
        ""
        if loss is None
        else f" (final train loss {loss:.4f}; ln {seedstats.CLASSES} = "
        f"{math.log(seedstats.CLASSES):.4f})"
    )
    return (
        f"note: this run did not learn: {100 * accuracy:.2f}% is what guessing one of "
        f"{seedstats.CLASSES} classes gives{losses}; a learning rate too high for the recipe "
        "ends this way: try a lower --lr"
    )
