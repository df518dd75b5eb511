"""The report's PNG plots: validation accuracy per epoch, the learning-rate schedules, and
final accuracy against time. matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..files import atomic_path
from ..schedule import lr_factor
from .numbers import time_accuracy_points
from .runs import Run
from .settings import group_runs


def plot_val_acc(
    runs: list[Run],
    path: Path,
    variants: frozenset[str] = frozenset(),
    apart: frozenset[str] = frozenset(),
) -> None:
    """Val accuracy per epoch for each setting: mean over finished seeds, min-max band."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    for i, g in enumerate(group_runs(runs, variants, apart)):
        curves = [[row["val_acc"] for row in r.metrics] for r in g.done]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        # Epochs some seed did not evaluate (--eval-every) are left out of the curve.
        per_epoch_all = zip(*(c[:length] for c in curves), strict=True)
        evaluated = [(e, v) for e, v in enumerate(per_epoch_all, 1) if None not in v]
        epochs = [e for e, _ in evaluated]
        per_epoch = [v for _, v in evaluated]
        length = len(epochs)
        mean = [100 * statistics.fmean(v) for v in per_epoch]
        color = f"C{i % 10}"
        ax.plot(
            epochs,
            mean,
            color=color,
            marker="o" if length < 20 else None,
            markersize=3,
            label=f"{g.label} (n={len(curves)})",
        )
        if len(curves) > 1:
            ax.fill_between(
                epochs,
                [100 * min(v) for v in per_epoch],
                [100 * max(v) for v in per_epoch],
                color=color,
                alpha=0.2,
                linewidth=0,
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title("Validation accuracy: mean over seeds, band = min-max")
    ax.grid(alpha=0.3)
    _legend(ax)
    _save_png(fig, path)


def plot_lr(
    runs: list[Run],
    path: Path,
    variants: frozenset[str] = frozenset(),
    apart: frozenset[str] = frozenset(),
) -> None:
    """The learning rate against (fractional) epoch for each setting, as the trainer applies it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    # Settings with the same schedule share one curve (and one legend entry).
    # Colours follow the settings' order, as in the accuracy plot.
    curves: dict[str, tuple[TrainConfig, int, list[str]]] = {}
    for i, g in enumerate(group_runs(runs, variants, apart)):
        c = g.config
        key = json.dumps(
            [c.lr, c.lr_schedule, list(c.milestones), c.lr_gamma, c.warmup_epochs, c.epochs]
        )
        curves.setdefault(key, (c, i, []))[2].append(g.label)
    resolution = 100  # nominal steps per epoch: the schedule's shape, whatever the data size
    for c, i, labels in curves.values():
        steps = range(c.epochs * resolution)
        lrs = [c.lr * lr_factor(c, s, resolution) for s in steps]
        # Step s holds its lr from s to s+1: a post-step line shows milestone drops as
        # vertical edges.
        ax.step(
            [s / resolution for s in steps] + [c.epochs],
            lrs + lrs[-1:],
            where="post",
            color=f"C{i % 10}",
            label=", ".join(labels),
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedules")
    ax.grid(alpha=0.3)
    _legend(ax)
    _save_png(fig, path)


def plot_time_accuracy(data: dict[str, Any], path: Path) -> None:
    """Final accuracy against time per setting (``time_accuracy_points``): what a recipe buys
    for what it costs. Hollow markers: times not paired with the reference's."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    reference = data["reference"]
    for i, p in enumerate(time_accuracy_points(data)):
        color = f"C{i % 10}"
        ax.errorbar(
            [p["time"]],
            [p["acc"]],
            yerr=[p["acc_sd"]],
            fmt="o",
            color=color,
            capsize=3,
            markerfacecolor=color if p["paired"] else "none",
        )
        ax.annotate(
            f"{p['label']} (n={p['n']})",
            (p["time"], p["acc"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize="small",
            color=color,
        )
    if reference is not None:
        ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel(
            f"train_time_s / {reference}'s (hollow: medians of runs that did not run next to it)"
        )
    else:
        ax.set_xlabel("train_time_s, median over seeds (s)")
    ax.set_ylabel("final val accuracy (%), mean ± sd")
    ax.set_title("Accuracy against time")
    ax.margins(x=0.15, y=0.1)
    ax.grid(alpha=0.3)
    _save_png(fig, path)


def _legend(ax: Any) -> None:
    # A study stopped before any run evaluated an epoch has no curve to name.
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _save_png(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
