"""The report's numbers: each setting's statistics (its runs grouped by ``settings``), its
difference from the reference setting (``fastres.seedstats``) and its time against the
reference's (``times``), all gathered into the plain data that report.json holds.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import seedstats
from ..errors import FastresError
from ..presets import PRESETS
from .runs import (
    Run,
    folders,
    load_studies,
    machine_variants,
    study_reference,
    study_rules,
    study_variants,
)
from .settings import Group, find_reference, group_runs
from .times import shared_cpu, time_comparison

# The original study: one run per setting, 100 epochs, best-epoch test accuracy (percent).
ORIGINAL_STUDY = {
    "cosine": 94.1,
    "baseline": 93.9,
    "no_schedule": 90.9,
    "resnet34": 89.9,
    "resnet50": 88.3,
    "no_batchnorm": 87.0,
    "small_batch": 88.4,
}
ORIGINAL_EPOCHS = 100
# The files a report writes into its folder.
REPORT_MD, REPORT_JSON = "report.md", "report.json"
VAL_PLOT, LR_PLOT, TIME_PLOT = "val_acc.png", "lr_schedule.png", "acc_vs_time.png"


def stats(values: list[float]) -> dict[str, Any]:
    """mean, sample std (ddof 1; None for fewer than 2 values), median, min, max, n, values."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {
            "n": 0,
            "mean": None,
            "std": None,
            "median": None,
            "min": None,
            "max": None,
            "values": [],
        }
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def difference(group: Group, reference: Group) -> dict[str, Any] | None:
    """Final accuracy of ``group`` minus ``reference``'s: paired by seed when at least two
    seeds ran in both (seed noise then cancels as far as it is shared), else the difference
    of the means; with its standard error, its 95% interval from Student's t for the n at hand
    and the seeds that would separate it at the spread measured (``seedstats``). Fewer than two
    runs on a side give no interval (its keys are then None)."""
    mine = {r.config.seed: r.summary["final_val_acc"] for r in group.done}
    theirs = {r.config.seed: r.summary["final_val_acc"] for r in reference.done}
    if not mine or not theirs:
        return None
    common = sorted(set(mine) & set(theirs))
    base = {
        "reference": reference.label,
        "n_setting": len(mine),
        "n_reference": len(theirs),
        "power": seedstats.POWER,
        "rule": seedstats.RULE,
    }
    if len(common) >= 2:
        diffs = [mine[s] - theirs[s] for s in common]
        return (
            base
            | seedstats.paired_difference(diffs)
            | {"paired": True, "seeds": common, "values": diffs}
        )
    a, b = list(mine.values()), list(theirs.values())
    if len(a) >= 2 and len(b) >= 2:
        return (
            base | seedstats.welch_difference(a, b) | {"paired": False, "seeds": [], "values": []}
        )
    none = dict.fromkeys(
        ("stderr", "df", "t", "half_width", "low", "high", "sd", "seeds_to_separate")
    )
    return (
        base
        | none
        | {
            "paired": False,
            "n": min(len(a), len(b)),
            "seeds": [],
            "values": [],
            "mean": statistics.fmean(a) - statistics.fmean(b),
            "confidence": seedstats.CONFIDENCE,
            "significant": False,
        }
    )


def aggregate(
    roots: str | Path | Sequence[str | Path],
    runs: list[Run] | None = None,
    reference: str | None = None,
    skipped: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as plain data (accuracies as fractions, like summary.json),
    for the runs of one folder or of several taken as one study (``load_studies``). Every
    setting is compared with ``reference`` (see ``find_reference``); ``skipped`` are the
    folders that were not counted, and why."""
    paths = folders(roots)
    skipped = [] if skipped is None else skipped
    runs = load_studies(paths, skipped) if runs is None else runs
    groups = group_runs(runs, study_variants(*paths), machine_variants(*paths))
    if reference is None and (varied := study_reference(*paths)) is not None:
        with contextlib.suppress(FastresError):  # the varied preset's runs may not be there
            find_reference(groups, varied)
            reference = varied
    ref = find_reference(groups, reference)
    return {
        "root": " + ".join(str(f) for f in paths),
        "reference": ref.label if ref is not None else None,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": [_setting_entry(g, ref) for g in groups],
        "runs": [_run_entry(r) for r in runs],
        "unfinished": [_unfinished(r) for r in runs if not r.complete],
        "skipped": skipped,
        "common_changes": _common_changes(runs),
        "rules": study_rules(*paths),
        "provenance": _provenance(runs),
        "files": {
            "markdown": REPORT_MD,
            "json": REPORT_JSON,
            "val_plot": VAL_PLOT,
            "lr_plot": LR_PLOT,
            "time_plot": TIME_PLOT,
        },
    }


def _setting_entry(g: Group, ref: Group | None) -> dict[str, Any]:
    """One setting's row of the report: its statistics over finished seeds, and how it
    compares with the reference ``ref``."""
    done = [r.summary for r in g.done]
    # A setting of the original study run on a base (ablate --base) is named by its folder.
    original = g.name if g.name in ORIGINAL_STUDY else g.preset
    original_acc = ORIGINAL_STUDY[original] / 100 if original in ORIGINAL_STUDY else None
    final = stats([s["final_val_acc"] for s in done])
    entry = {
        "preset": g.preset,
        "label": g.label,
        "n": len(done),
        "seeds": [r.config.seed for r in g.done],
        "final_val_acc": final,
        "test_set_stderr": _test_set_stderr(g, final["mean"]),
        "best_val_acc": stats([s["best_val_acc"] for s in done]),
        **_held_out_stats(done),
        "final_train_acc": stats([s["final_train_acc"] for s in done]),
        "epochs": sorted({int(s["epochs"]) for s in done}),
        "train_time_s": stats([s["train_time_s"] for s in done]),
        "images_per_s": stats([s["images_per_s"] for s in done]),
        "name": g.name,
        "changes": _changes_from_preset(g),
        "diff_vs_reference": None,
        "original_best_acc": None,
        "original_best_acc_reference": original_acc,
        "recipe": g.recipe,
        "runs": [r.rel for r in g.done],
        "shared_cpu": [
            {"run": r.rel, "cpu_wait": r.summary["cpu_wait"]}
            for r in g.done
            if shared_cpu(r.summary)
        ],
        "unfinished": [_unfinished(r) for r in g.unfinished],
        "at_chance": [r.rel for r in g.done if _at_chance(r)],
    }
    if (
        original_acc is not None
        and done
        and all(int(s["epochs_planned"]) == ORIGINAL_EPOCHS for s in done)
    ):
        entry["original_best_acc"] = original_acc
    compared = ref is not None and g is not ref
    if compared:
        entry["diff_vs_reference"] = difference(g, ref)
    entry["time_vs_reference"] = time_comparison(g, ref) if compared else None
    entry["time_ratio_vs_reference"] = (
        1.0 if g is ref and done else (entry["time_vs_reference"] or {}).get("ratio")
    )
    return entry


def _at_chance(r: Run) -> bool:
    """Whether the run ended at chance's accuracy: it did not learn, though it finished."""
    accuracy = (r.summary or {}).get("final_val_acc")
    return accuracy is not None and seedstats.at_chance(
        accuracy, seedstats.test_images(r.config.test_subset)
    )


def _test_set_stderr(g: Group, accuracy: float | None) -> dict[str, Any] | None:
    """What the test set's size alone allows for one accuracy of this setting: the limit when
    comparing it with a number measured elsewhere (not on paired differences)."""
    if accuracy is None:
        return None
    images = seedstats.test_images(g.config.test_subset)
    return {"images": images, "stderr": seedstats.binomial_stderr(accuracy, images)}


def _changes_from_preset(g: Group) -> dict[str, Any]:
    """The recipe fields in which this setting differs from its preset."""
    if g.preset not in PRESETS:
        return {}
    preset = PRESETS[g.preset].recipe()
    return {k: v for k, v in g.recipe.items() if preset.get(k) != v}


def _unfinished(r: Run) -> dict[str, Any]:
    return {
        "run": r.rel,
        "preset": r.config.preset,
        "seed": r.config.seed,
        "state": r.state,
        "epochs": len(r.metrics),
        "epochs_planned": r.config.epochs,
    }


def _held_out_stats(done: list[dict[str, Any]]) -> dict[str, Any]:
    """The --val-split numbers of a setting whose every run held images out, else nothing."""
    if not done or any(s.get("best_on") != "val_split" for s in done):
        return {}
    return {
        "val_split": sorted({s["val_split"] for s in done}),
        "val_split_acc": stats([s["val_split_acc"] for s in done]),
        "best_val_split_acc": stats([s["best_val_split_acc"] for s in done]),
    }


def _run_entry(r: Run) -> dict[str, Any]:
    s = r.summary or {}
    return {
        "run": r.rel,
        "preset": r.config.preset,
        "seed": r.config.seed,
        "state": r.state,
        "epochs": len(r.metrics),
        "epochs_planned": r.config.epochs,
        "final_val_acc": s.get("final_val_acc"),
        "best_val_acc": s.get("best_val_acc"),
        "best_epoch": s.get("best_epoch"),
        "final_train_acc": s.get("final_train_acc"),
        "best_on": s.get("best_on", "test"),
        "best_val_split_acc": s.get("best_val_split_acc"),
        "train_time_s": s.get("train_time_s"),
        "images_per_s": s.get("images_per_s"),
        "cpu_wait": s.get("cpu_wait"),
        "shared_cpu": shared_cpu(s),
        "at_chance": _at_chance(r),
        "git_commit": s.get("git_commit"),
        "device": s.get("device"),
        "precision": s.get("precision"),
        "data_hash": s.get("data_hash"),
    }


def _common_changes(runs: list[Run]) -> dict[str, Any]:
    """Fields every run changed from its preset in the same way (the study's overrides)."""
    common: dict[str, Any] | None = None
    for r in runs:
        if r.config.preset not in PRESETS:
            continue
        preset = PRESETS[r.config.preset].to_dict()
        mine = {
            k: v
            for k, v in r.config.to_dict().items()
            if k not in {"seed", "run_dir", "preset"} and v != preset[k]
        }
        common = (
            mine
            if common is None
            else {k: v for k, v in common.items() if mine.get(k, object()) == v}
        )
    return common or {}


def _provenance(runs: list[Run]) -> dict[str, list[str]]:
    def distinct(key: str, sub: str | None = None) -> list[str]:
        values = set()
        for r in runs:
            if r.summary is None:
                continue
            v = r.summary.get(key)
            v = v.get(sub) if sub and isinstance(v, dict) else v
            if v is not None:
                values.add(str(v))
        return sorted(values)

    return {
        "device": distinct("device"),
        "precision": distinct("precision"),
        "git_commit": distinct("git_commit"),
        "torch": distinct("versions", "torch"),
        "data_hash": distinct("data_hash"),
        "seeds": sorted({str(r.config.seed) for r in runs}, key=int),
    }


def time_accuracy_points(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each finished setting as a point of accuracy against time: final accuracy (mean, sd) over
    its seeds, and its time as the table gives it: against the reference (``ratio``, paired when
    its runs ran next to the reference's) when the report has one, else its median wall time in
    seconds. A setting without a time (every run shared its CPU) is left out."""
    relative = data["reference"] is not None
    runs = {r["run"]: r for r in data["runs"]}
    points = []
    for g in data["settings"]:
        acc = g["final_val_acc"]
        if not acc["n"]:
            continue
        if relative:
            comparison = g["time_vs_reference"] or {}
            x, paired = g["time_ratio_vs_reference"], comparison.get("paired", True)
        else:
            times = [runs[r]["train_time_s"] for r in g["runs"] if not runs[r]["shared_cpu"]]
            x, paired = (statistics.median(times) if times else None), False
        if x is None:
            continue
        points.append(
            {
                "label": g["label"],
                "time": x,
                "paired": bool(paired),
                "acc": 100 * acc["mean"],
                "acc_sd": 100 * (acc["std"] or 0.0),
                "n": acc["n"],
            }
        )
    return points
