"""``fastres report DIR``: aggregate every run below DIR into report.md, plots and JSON.

Runs are grouped by preset and recipe (everything but the seed), so seeds of one setting
are averaged and nothing else is. Only runs that finished all their planned epochs enter
the statistics; the others are listed as unfinished, never mixed in. Run directories are
read through ``fastres.rundir`` only. One module per job, read top-down:

* ``markdown``: report.md, section by section, and the terminal's summary table;
* ``plots``: the PNG plots;
* ``numbers``: each setting's statistics, its difference and time ratio against the
  reference: the report's data, as report.json holds it;
* ``times``: a setting's training time against the reference's, paired by seed where their
  runs ran next to each other;
* ``settings``: runs grouped into settings, and the reference setting among them;
* ``runs``: loading the runs of one folder or of several studies, and what each study's
  study.json says.

``write_report`` (here) writes them all; ``fastres.cli`` and the tests use the names
exported here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import FastresError
from ..files import atomic_write_text
from .markdown import render_markdown, summary_table
from .numbers import (
    LR_PLOT,
    ORIGINAL_EPOCHS,
    ORIGINAL_STUDY,
    REPORT_JSON,
    REPORT_MD,
    TIME_PLOT,
    VAL_PLOT,
    aggregate,
    difference,
    stats,
    time_accuracy_points,
)
from .plots import plot_lr, plot_time_accuracy, plot_val_acc
from .runs import (
    Run,
    folders,
    load_runs,
    load_studies,
    machine_variants,
    study_reference,
    study_rules,
    study_variants,
)
from .settings import Group, find_reference, group_runs
from .times import NEIGHBOURS, shared_cpu, time_comparison

__all__ = [
    "LR_PLOT",
    "NEIGHBOURS",
    "ORIGINAL_EPOCHS",
    "ORIGINAL_STUDY",
    "REPORT_JSON",
    "REPORT_MD",
    "TIME_PLOT",
    "VAL_PLOT",
    "Group",
    "Run",
    "aggregate",
    "difference",
    "find_reference",
    "group_runs",
    "load_runs",
    "load_studies",
    "machine_variants",
    "plot_lr",
    "plot_time_accuracy",
    "plot_val_acc",
    "render_markdown",
    "shared_cpu",
    "stats",
    "study_reference",
    "study_rules",
    "study_variants",
    "summary_table",
    "time_accuracy_points",
    "time_comparison",
    "write_report",
]


def write_report(
    roots: str | Path | Sequence[str | Path],
    reference: str | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Write report.md, report.json and the plots into ``out`` (default: the one folder
    reported), every setting compared with ``reference`` (default ``baseline``); return the
    report's data. Several folders are reported as one study (``load_studies``): seeds of a
    setting run in different studies, on different days or machines, count together."""
    paths = folders(roots)
    if out is None and len(paths) > 1:
        raise FastresError(
            f"a report of {len(paths)} folders needs --out DIR: the folder its report.md goes to"
        )
    target = Path(out) if out is not None else paths[0]
    if target.exists() and not target.is_dir():
        raise FastresError(f"--out {target} is a file, not a folder: pass a folder for the report")
    skipped: list[dict[str, str]] = []
    runs = load_studies(paths, skipped)
    data = aggregate(paths, runs, reference, skipped)
    variants, apart = study_variants(*paths), machine_variants(*paths)
    try:
        target.mkdir(parents=True, exist_ok=True)
        plot_val_acc(runs, target / VAL_PLOT, variants, apart)
        plot_lr(runs, target / LR_PLOT, variants, apart)
        plot_time_accuracy(data, target / TIME_PLOT)
        atomic_write_text(target / REPORT_MD, render_markdown(data))
        atomic_write_text(target / REPORT_JSON, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise FastresError(
            f"cannot write the report into {target} ({exc.strerror or exc}): "
            "check that you can write there"
        ) from None
    return data
