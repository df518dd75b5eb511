"""Benchmark results for people and files: the machine they were measured on, the
side-by-side table, and JSON, CSV and PNG writers (each file written atomically)."""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import FastresError
from ..files import atomic_path, atomic_write_text
from ..models import model_names
from ..provenance import git_commit, package_version
from ..runtime import cpu_name, cpu_supports_bf16
from .step import CONFIGS, MODES, RECORD_KEYS

CSV_KEYS = tuple(k for k in RECORD_KEYS if k != "repeat_images_per_s")


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on, for the JSON and BENCHMARKS.md."""
    total = None
    try:
        with open("/proc/meminfo") as f:
            total = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "memory_gb": total,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_bf16": cpu_supports_bf16(),
        "ffcv": package_version("ffcv"),
        "git_commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def pair_rows(
    records: Iterable[dict[str, Any]], configs: Sequence[str] = CONFIGS
) -> list[dict[str, Any]]:
    """One row per (model, batch size, mode) with each config's record side by side.

    ``speedup`` is the last measured config's images/s over the first's (fastres over baseline).
    Rows come in model, mode, batch size order.
    """
    rows: dict[tuple[str, int, str], dict[str, Any]] = {}
    for r in records:
        row = rows.setdefault(
            (r["model"], r["batch_size"], r["mode"]),
            {"model": r["model"], "batch_size": r["batch_size"], "mode": r["mode"]},
        )
        row[r["config"]] = r
    for row in rows.values():
        first = row.get(configs[0])
        last = next(
            (row[c] for c in reversed(configs[1:]) if c in row and row[c]["status"] == "ok"), None
        )
        ok = first and last and first["status"] == "ok"
        row["speedup"] = last["images_per_s"] / first["images_per_s"] if ok else None
    order = {m: i for i, m in enumerate(model_names())}
    return sorted(
        rows.values(),
        key=lambda r: (
            order.get(r["model"], len(order)),
            r["model"],
            MODES.index(r["mode"]) if r["mode"] in MODES else 9,
            r["batch_size"],
        ),
    )


_SHORT = {"baseline": "base", "fastres": "fast"}  # other configurations keep their names


def _cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return "-"
    if record["status"] == "ok":
        return f"{record['images_per_s']:.1f}"
    return {"skipped": "skipped", "oom": "out of memory"}.get(record["status"], record["status"])


def _mem(record: dict[str, Any] | None) -> str:
    if record is None or record.get("peak_memory_mb") is None:
        return "-"
    return f"{record['peak_memory_mb']:.0f}"


def format_table(records: Sequence[dict[str, Any]], configs: Sequence[str] = CONFIGS) -> str:
    """The side-by-side table, then one line per configuration that was not measured."""
    header = (
        "model",
        "batch",
        "mode",
        *(f"{c} img/s" for c in configs),
        "speedup",
        f"peak MB {'/'.join(_SHORT.get(c, c) for c in configs)}",
        "compile s",
    )
    lines = []
    for row in pair_rows(records, configs):
        recs = [row.get(c) for c in configs]
        compile_s = next(
            (r["compile_s"] for r in recs if r and r.get("compile_s") is not None), None
        )
        lines.append(
            (
                row["model"],
                str(row["batch_size"]),
                row["mode"],
                *(_cell(r) for r in recs),
                f"{row['speedup']:.2f}x" if row["speedup"] else "-",
                " / ".join(_mem(r) for r in recs),
                f"{compile_s:.1f}" if compile_s is not None else "-",
            )
        )
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
        for i, h in enumerate(header)
    ]
    left = {0, 2}  # text columns; numbers right-aligned

    def fmt(cols: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        )

    out = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(line) for line in lines]
    notes = [
        f"  {r['model']} b{r['batch_size']} {r['mode']} {r['config']}: {r['reason']}"
        for r in records
        if r["status"] != "ok" or r.get("reason")
    ]
    if notes:
        out += ["", "not measured / notes:", *notes]
    return "\n".join(out)


def _write(path: Path, flag: str, writer: Callable[[Path], None]) -> None:
    try:
        writer(path)
    except OSError as exc:
        raise FastresError(f"cannot write {flag} {path}: {exc.strerror or exc}") from None


def write_json(
    path: str | Path,
    machine: dict[str, Any],
    records: Sequence[dict[str, Any]],
    settings: dict[str, Any] | None = None,
) -> None:
    doc = {"machine": machine, "settings": settings or {}, "records": list(records)}
    _write(Path(path), "--json", lambda p: atomic_write_text(p, json.dumps(doc, indent=2) + "\n"))


def write_csv(path: str | Path, records: Sequence[dict[str, Any]]) -> None:
    def writer(p: Path) -> None:
        with atomic_path(p) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_KEYS, extrasaction="ignore")
            w.writeheader()
            for r in records:
                w.writerow({k: "" if r.get(k) is None else r.get(k) for k in CSV_KEYS})

    _write(Path(path), "--csv", writer)


def write_plot(path: str | Path, records: Sequence[dict[str, Any]], title: str = "") -> None:
    """PNG: images/s against batch size, one panel per model, a line per config and mode."""
    # The Agg canvas directly: no pyplot, so no global backend switch and no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r["model"] for r in records))
    fig = Figure(figsize=(4.2 * max(1, len(models)), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(models)), squeeze=False)[0]
    styles = {"baseline": ("tab:gray", "o"), "fastres": ("tab:blue", "s")}
    for ax, model in zip(axes, models, strict=False):
        for mode in MODES:
            for config in CONFIGS:
                pts = sorted(
                    (r["batch_size"], r["images_per_s"])
                    for r in records
                    if r["model"] == model
                    and r["mode"] == mode
                    and r["config"] == config
                    and r["status"] == "ok"
                )
                if not pts:
                    continue
                color, marker = styles[config]
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    color=color,
                    marker=marker,
                    linestyle="-" if mode == "train" else "--",
                    label=f"{config} {mode}",
                )
        sizes = sorted({r["batch_size"] for r in records if r["model"] == model})
        ax.set_ylim(bottom=0)  # ratios read true only from zero
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_title(model)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")

    def writer(p: Path) -> None:
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format="png", dpi=110)

    _write(Path(path), "--plot", writer)
