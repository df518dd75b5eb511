"""``fastres report DIR``: aggregate every run below DIR into report.md, plots and JSON.

Runs are grouped by preset and recipe (everything but the seed), so seeds of one setting
are averaged and nothing else is. Only runs that finished all their planned epochs enter
the statistics; the others are listed as unfinished, never mixed in. Run directories are
read through ``fastres.rundir`` only.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import contention, record, seedstats
from .config import MACHINE_FIELDS, PRESETS, TrainConfig
from .errors import FastresError
from .files import atomic_path, atomic_write_text
from .formatting import compact, duration
from .rundir import STUDY, STUDY_ROOT, RunDir, find_runs, read_study, reused_runs, training_interval
from .schedule import lr_factor

# The original study: one run per setting, 100 epochs, best-epoch test accuracy (percent).
ORIGINAL_STUDY = {"cosine": 94.1, "baseline": 93.9, "no_schedule": 90.9, "resnet34": 89.9,
                  "resnet50": 88.3, "no_batchnorm": 87.0, "small_batch": 88.4}
ORIGINAL_EPOCHS = 100
REPORT_MD, REPORT_JSON, VAL_PLOT, LR_PLOT = "report.md", "report.json", "val_acc.png", "lr_schedule.png"
TIME_PLOT = "acc_vs_time.png"
# Two runs "ran next to each other" when their starts are at most this many times the longer
# run's training time apart: side by side (0), one after the other (~1), or with up to three
# runs of other settings between them (~4: `fastres ablate --interleave` with five settings
# puts a seed's five runs in a row). Minutes apart at quick's scale, where the host drifted
# ~25% over hours.
NEIGHBOURS = 4.5
# Recipe fields that do not make two runs different settings.
_NOT_SETTING = {"seed"}


@dataclass
class Run:
    path: Path
    rel: str
    config: TrainConfig
    state: str
    summary: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    folder: str = ""  # the first folder of its path inside the folder reported (a study's setting folder)
    # Runs of the same setting and seed in later folders: not counted, but their times may pair
    # with the runs they ran next to (a later study that ran the reference again beside a variant).
    twins: list[Run] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.state == "completed"


@dataclass
class Group:
    preset: str
    label: str
    recipe: dict[str, Any]
    config: TrainConfig  # of its first run: the setting's recipe
    runs: list[Run] = field(default_factory=list)
    name: str = ""  # the folder its runs share (OUT/<name>/seed<S>), e.g. an ablate --variant's name

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.complete]

    @property
    def unfinished(self) -> list[Run]:
        return [r for r in self.runs if not r.complete]


def stats(values: list[float]) -> dict[str, Any]:
    """mean, sample std (ddof 1; None for fewer than 2 values), median, min, max, n, values."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"n": 0, "mean": None, "std": None, "median": None, "min": None, "max": None, "values": []}
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def load_runs(root: str | Path, skipped: list[dict[str, str]] | None = None, prefix: str = "") -> list[Run]:
    """The runs below ``root`` (named by their path inside it, after ``prefix``), and those of
    earlier studies that the study in ``root`` reused (``fastres ablate --reuse``: named by their
    path from ``root``) unless ``root`` has its own run of that setting and seed; a folder whose
    config.json this fastres cannot read (a stray file, or a run written by a newer fastres) is
    left out, and named in ``skipped``."""
    root = Path(root)
    if not root.is_dir():
        raise FastresError(f"{root} is not a folder: pass the --out folder of an ablation (default {STUDY_ROOT})")
    # (run directory, its path as a study's run inside root, the name the report gives it, reused)
    found = [(rd, inside, inside, False) for rd in find_runs(root)
             for inside in [str(rd.path.relative_to(root)) if rd.path != root else "."]]
    own = {inside for _, inside, _, _ in found}
    found += [(RunDir(path), f"{setting}/seed{seed}", os.path.relpath(path, root), True)
              for setting, seed, path in reused_runs(root) if f"{setting}/seed{seed}" not in own]
    runs = []
    unread: list[dict[str, str]] = []
    for rd, inside, name, reused in found:
        # Through several folders, a reused run is named by its own path: runs/a/../b/x is runs/b/x.
        name = os.path.normpath(prefix + name) if prefix and name.startswith("..") else prefix + name
        try:
            config = record.read_config(rd)
            state = rd.state()
            summary = rd.read_summary() if rd.summary.exists() else None
        except FastresError as exc:
            unread.append({"run": name, "reason": f"reused by this study as {inside}, but {exc}" if reused
                           else str(exc)})
            if skipped is not None:
                skipped.append(unread[-1])
            continue
        runs.append(Run(rd.path, name, config, state, summary, rd.read_metrics(),
                        folder=inside.split("/")[0] if "/" in inside else ""))
    if not runs and unread:
        more = f" (and {len(unread) - 1} more)" if len(unread) > 1 else ""
        raise FastresError(f"{root} holds no fastres run this fastres can count: {unread[0]['run']}: "
                           f"{unread[0]['reason']}{more}")
    if not runs:
        raise FastresError(f"{root} holds no fastres runs (no run directories with a config.json below it): "
                           f"pass the --out folder of an ablation, e.g. fastres report {STUDY_ROOT}")
    return runs


def load_studies(roots: list[Path], skipped: list[dict[str, str]]) -> list[Run]:
    """The runs of one folder, or of several as one study: named ``<folder>/<path inside it>``,
    and a run of the same setting and seed as one in an earlier folder counted once (the
    others go to ``skipped``, naming the run counted)."""
    if len(roots) == 1:
        return load_runs(roots[0], skipped)
    runs: list[Run] = []
    counted: dict[tuple[str, str, int], Run] = {}
    seen: set[Path] = set()
    for root in roots:
        for run in load_runs(root, skipped, prefix=f"{root}/"):
            if run.path.resolve() in seen:  # one run reached twice (a study that reused it, and its own folder)
                continue
            seen.add(run.path.resolve())
            key = (run.config.preset, json.dumps(_setting(run), sort_keys=True), run.config.seed)
            first = counted.get(key)
            if first is None:
                counted[key] = run
                runs.append(run)
                continue
            if run.complete and not first.complete:  # a finished run counts before an unfinished one
                runs[runs.index(first)] = counted[key] = run
                run.twins, first.twins = [first, *first.twins], []
                first, run = run, first
            else:
                first.twins.append(run)
            skipped.append({"run": run.rel, "reason": f"the same setting and seed as {first.rel}, counted once"
                                                      " (its time still pairs with the runs beside it)"})
    return runs


def study_variants(*roots: str | Path) -> frozenset[str]:
    """The names of the variants the ``fastres ablate`` studies in ``roots`` ran (none elsewhere)."""
    names: set[str] = set()
    for root in roots:
        if not (Path(root) / STUDY).exists():
            continue
        try:
            names |= set(read_study(root).get("variants", {}))
        except FastresError:
            continue
    return frozenset(names)


def study_reference(*roots: str | Path) -> str | None:
    """The setting a study of ``--variant``s compares with when no --reference is named: its
    varied preset, as the report that ``fastres ablate`` writes at the end does."""
    for root in roots:
        if not (Path(root) / STUDY).exists():
            continue
        try:
            study = read_study(root)
        except FastresError:
            continue
        if study.get("variants") and study.get("presets"):
            return str(study["presets"][0])
    return None


def machine_variants(*roots: str | Path) -> frozenset[str]:
    """The variants of the studies in ``roots`` that change only machine fields (``--compile
    on``, ``--threads 1``): their recipe is their preset's, so only their folder sets them apart."""
    names: set[str] = set()
    for root in roots:
        if not (Path(root) / STUDY).exists():
            continue
        try:
            variants = read_study(root).get("variants", {})
        except FastresError:
            continue
        names |= {name for name, options in variants.items() if options and set(options) <= MACHINE_FIELDS}
    return frozenset(names)


def study_rules(*roots: str | Path) -> dict[str, str]:
    """How the ``fastres ablate --base`` studies in ``roots`` chose a setting's learning rate:
    setting -> the rule's text (none elsewhere)."""
    rules: dict[str, str] = {}
    for root in roots:
        if not (Path(root) / STUDY).exists():
            continue
        try:
            rules |= dict(read_study(root).get("rules", {}))
        except FastresError:
            continue
    return rules


def _setting(run: Run) -> dict[str, Any]:
    """A run's recipe without what does not make it a different setting (its seed)."""
    return {k: v for k, v in run.config.recipe().items() if k not in _NOT_SETTING}


def group_runs(runs: list[Run], variants: frozenset[str] = frozenset(),
               apart: frozenset[str] = frozenset()) -> list[Group]:
    """One group per (preset, recipe without the seed), in the ablation table's order; a group
    living in the folder of one of the study's ``variants`` is labelled with its name. Runs in
    the folder of a variant in ``apart`` (``machine_variants``) form a group of their own."""
    groups: dict[tuple[str, str, str], Group] = {}
    for run in runs:
        recipe = _setting(run)
        key = (run.config.preset, json.dumps(recipe, sort_keys=True), run.folder if run.folder in apart else "")
        if key not in groups:
            groups[key] = Group(run.config.preset, run.config.preset or "custom", recipe, run.config)
        groups[key].runs.append(run)
    result = list(groups.values())
    for g in result:
        folders = {r.folder for r in g.runs if r.folder}
        folder = folders.pop() if len(folders) == 1 else ""
        g.name = folder if folder in variants or folder == g.preset else ""
        if g.name in variants:  # a named variant: its name says which setting it is
            g.label = g.name
    # Settings that would share a label (a preset's name, or a variant's name that two studies
    # gave different options) get the fields that tell them apart in it.
    for label in {g.label for g in result}:
        same = [g for g in result if g.label == label]
        if len(same) > 1:
            varying = [k for k in same[0].recipe if len({json.dumps(g.recipe[k]) for g in same}) > 1]
            for g in same:
                g.label = f"{label} ({', '.join(f'{k}={compact(g.recipe[k])}' for k in varying)})"
    order = list(PRESETS)
    # A preset's own runs come before its variants (they are the variants' reference).
    result.sort(key=lambda g: (order.index(g.preset) if g.preset in order else len(order),
                               g.label != (g.preset or "custom") and not g.label.startswith(f"{g.preset} ("), g.label))
    return result


def find_reference(groups: list[Group], reference: str | None) -> Group | None:
    """The setting the others are compared with: the one named ``reference`` (a variant's or
    preset's name, or a label), else ``baseline`` when the runs include it."""
    if reference is None:
        named = [g for g in groups if g.preset == "baseline" and g.done]
        return next((g for g in named if g.name in ("", "baseline")), named[0] if named else None)
    for g in groups:
        if reference in (g.name, g.label) or (g.preset == reference and g.name in ("", reference)):
            return g
    names = ", ".join(dict.fromkeys(g.name or g.label for g in groups))
    raise FastresError(f"no setting named {reference!r} among the runs: pass --reference with one of {names}")


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
    base = {"reference": reference.label, "n_setting": len(mine), "n_reference": len(theirs),
            "power": seedstats.POWER, "rule": seedstats.RULE}
    if len(common) >= 2:
        diffs = [mine[s] - theirs[s] for s in common]
        return base | seedstats.paired_difference(diffs) | {"paired": True, "seeds": common, "values": diffs}
    a, b = list(mine.values()), list(theirs.values())
    if len(a) >= 2 and len(b) >= 2:
        return base | seedstats.welch_difference(a, b) | {"paired": False, "seeds": [], "values": []}
    none = dict.fromkeys(("stderr", "df", "t", "half_width", "low", "high", "sd", "seeds_to_separate"))
    return base | none | {"paired": False, "n": min(len(a), len(b)), "seeds": [], "values": [],
                          "mean": statistics.fmean(a) - statistics.fmean(b), "confidence": seedstats.CONFIDENCE,
                          "significant": False}


def shared_cpu(summary: dict[str, Any] | None) -> bool:
    """Whether a run shared its CPU with other processes (contention.py): its time is then the
    machine's load, not its setting's cost."""
    return contention.is_shared((summary or {}).get("cpu_wait"))


def time_comparison(group: Group, reference: Group) -> dict[str, Any] | None:
    """``train_time_s`` of ``group`` against ``reference``'s, leaving out runs that shared
    their CPU (``left_out`` counts them). When seeds that ran in both ran next to each other
    (see NEIGHBOURS; what ``fastres ablate --interleave`` does), the median of those seeds'
    ratios: a machine's drift between the two is then small (``not_beside`` counts the seeds
    whose runs ran further apart, left out). Else the ratio of the two medians, with how far
    apart the runs ran (``apart_s``, the largest start-to-start distance of a seed's pair; None
    when the summaries do not say when)."""
    if not group.done or not reference.done:
        return None
    left_out = sum(shared_cpu(r.summary) for r in group.done + reference.done)
    # Per seed, the counted run's summary first, then its twins' (see load_studies).
    mine, theirs = ({r.config.seed: [t.summary for t in [r, *r.twins] if t.complete and not shared_cpu(t.summary)]
                     for r in g.done} for g in (group, reference))
    mine, theirs = ({seed: ss for seed, ss in d.items() if ss} for d in (mine, theirs))
    if not mine or not theirs:
        return {"paired": False, "n": 0, "seeds": [], "values": [], "ratio": None, "apart_s": None,
                "left_out": left_out, "not_beside": 0}
    pairs = []
    for seed in sorted(set(mine) & set(theirs)):
        timed = [(abs(a[0] - b[0]), max(a[1] - a[0], b[1] - b[0]), x, y) for x in mine[seed] for y in theirs[seed]
                 if (a := training_interval(x)) is not None and (b := training_interval(y)) is not None]
        if timed:  # of a seed's runs in both settings, the two that ran closest together
            apart, longest, x, y = min(timed, key=lambda t: t[0])
            pairs.append({"seed": seed, "ratio": x["train_time_s"] / y["train_time_s"],
                          "apart_s": apart, "neighbours": apart <= NEIGHBOURS * longest})
    beside = [p for p in pairs if p["neighbours"]]
    if beside:  # drift-free pairs, even a few, say more than medians of runs hours apart
        ratios = [p["ratio"] for p in beside]
        return {"paired": True, "n": len(ratios), "seeds": [p["seed"] for p in beside], "values": ratios,
                "ratio": statistics.median(ratios), "apart_s": max(p["apart_s"] for p in beside),
                "left_out": left_out, "not_beside": len(pairs) - len(beside)}
    a, b = (statistics.median(ss[0]["train_time_s"] for ss in d.values()) for d in (mine, theirs))
    return {"paired": False, "n": min(len(mine), len(theirs)), "seeds": [], "values": [],
            "ratio": a / b if a and b else None,
            "apart_s": max(p["apart_s"] for p in pairs) if pairs else None, "left_out": left_out, "not_beside": 0}


def _folders(roots: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(roots)] if isinstance(roots, str | Path) else [Path(r) for r in roots]


def aggregate(roots: str | Path | Sequence[str | Path], runs: list[Run] | None = None,
              reference: str | None = None, skipped: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Everything the report shows, as plain data (accuracies as fractions, like summary.json),
    for the runs of one folder or of several taken as one study (``load_studies``). Every
    setting is compared with ``reference`` (see ``find_reference``); ``skipped`` are the
    folders that were not counted, and why."""
    folders = _folders(roots)
    skipped = [] if skipped is None else skipped
    runs = load_studies(folders, skipped) if runs is None else runs
    groups = group_runs(runs, study_variants(*folders), machine_variants(*folders))
    if reference is None and (varied := study_reference(*folders)) is not None:
        with contextlib.suppress(FastresError):  # the varied preset's runs may not be there
            find_reference(groups, varied)
            reference = varied
    ref = find_reference(groups, reference)
    out_groups = []
    for g in groups:
        done = [r.summary for r in g.done]
        # A setting of the original study run on a base (ablate --base) is named by its folder.
        original = g.name if g.name in ORIGINAL_STUDY else g.preset
        final = stats([s["final_val_acc"] for s in done])
        entry = {
            "preset": g.preset, "label": g.label, "n": len(done), "seeds": [r.config.seed for r in g.done],
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
            "original_best_acc_reference": ORIGINAL_STUDY[original] / 100 if original in ORIGINAL_STUDY else None,
            "recipe": g.recipe,
            "runs": [r.rel for r in g.done],
            "shared_cpu": [{"run": r.rel, "cpu_wait": r.summary["cpu_wait"]} for r in g.done if shared_cpu(r.summary)],
            "unfinished": [_unfinished(r) for r in g.unfinished],
        }
        if original in ORIGINAL_STUDY and done and all(int(s["epochs_planned"]) == ORIGINAL_EPOCHS for s in done):
            entry["original_best_acc"] = ORIGINAL_STUDY[original] / 100
        if ref is not None and g is not ref:
            entry["diff_vs_reference"] = difference(g, ref)
        entry["time_vs_reference"] = time_comparison(g, ref) if ref is not None and g is not ref else None
        entry["time_ratio_vs_reference"] = (1.0 if g is ref and done
                                            else (entry["time_vs_reference"] or {}).get("ratio"))
        out_groups.append(entry)
    return {
        "root": " + ".join(str(f) for f in folders),
        "reference": ref.label if ref is not None else None,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": out_groups,
        "runs": [_run_entry(r) for r in runs],
        "unfinished": [_unfinished(r) for r in runs if not r.complete],
        "skipped": skipped,
        "common_changes": _common_changes(runs),
        "rules": study_rules(*folders),
        "provenance": _provenance(runs),
        "files": {"markdown": REPORT_MD, "json": REPORT_JSON, "val_plot": VAL_PLOT, "lr_plot": LR_PLOT,
                  "time_plot": TIME_PLOT},
    }


def _test_set_stderr(g: Group, accuracy: float | None) -> dict[str, Any] | None:
    """What the test set's size alone allows for one accuracy of this setting: the limit when
    comparing it with a number measured elsewhere (not on paired differences)."""
    if accuracy is None:
        return None
    images = min(g.config.test_subset or seedstats.TEST_IMAGES, seedstats.TEST_IMAGES)
    return {"images": images, "stderr": seedstats.binomial_stderr(accuracy, images)}


def _changes_from_preset(g: Group) -> dict[str, Any]:
    """The recipe fields in which this setting differs from its preset."""
    if g.preset not in PRESETS:
        return {}
    preset = PRESETS[g.preset].recipe()
    return {k: v for k, v in g.recipe.items() if preset.get(k) != v}


def _unfinished(r: Run) -> dict[str, Any]:
    return {"run": r.rel, "preset": r.config.preset, "seed": r.config.seed, "state": r.state,
            "epochs": len(r.metrics), "epochs_planned": r.config.epochs}


def _held_out_stats(done: list[dict[str, Any]]) -> dict[str, Any]:
    """The --val-split numbers of a setting whose every run held images out, else nothing."""
    if not done or any(s.get("best_on") != "val_split" for s in done):
        return {}
    return {"val_split": sorted({s["val_split"] for s in done}),
            "val_split_acc": stats([s["val_split_acc"] for s in done]),
            "best_val_split_acc": stats([s["best_val_split_acc"] for s in done])}


def _run_entry(r: Run) -> dict[str, Any]:
    s = r.summary or {}
    return {"run": r.rel, "preset": r.config.preset, "seed": r.config.seed, "state": r.state,
            "epochs": len(r.metrics), "epochs_planned": r.config.epochs,
            "final_val_acc": s.get("final_val_acc"), "best_val_acc": s.get("best_val_acc"),
            "best_epoch": s.get("best_epoch"), "final_train_acc": s.get("final_train_acc"),
            "best_on": s.get("best_on", "test"), "best_val_split_acc": s.get("best_val_split_acc"),
            "train_time_s": s.get("train_time_s"), "images_per_s": s.get("images_per_s"),
            "cpu_wait": s.get("cpu_wait"), "shared_cpu": shared_cpu(s),
            "git_commit": s.get("git_commit"), "device": s.get("device"), "precision": s.get("precision"),
            "data_hash": s.get("data_hash")}


def _common_changes(runs: list[Run]) -> dict[str, Any]:
    """Fields every run changed from its preset in the same way (the study's overrides)."""
    common: dict[str, Any] | None = None
    for r in runs:
        if r.config.preset not in PRESETS:
            continue
        preset = PRESETS[r.config.preset].to_dict()
        mine = {k: v for k, v in r.config.to_dict().items()
                if k not in {"seed", "run_dir", "preset"} and v != preset[k]}
        common = mine if common is None else {k: v for k, v in common.items() if mine.get(k, object()) == v}
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

    return {"device": distinct("device"), "precision": distinct("precision"), "git_commit": distinct("git_commit"),
            "torch": distinct("versions", "torch"), "data_hash": distinct("data_hash"),
            "seeds": sorted({str(r.config.seed) for r in runs}, key=int)}


# --- rendering ---------------------------------------------------------------------------


def _pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def _mean_std(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "-"
    return f"{_pct(s['mean'])} ± {_pct(s['std']) if s['std'] is not None else 'n/a'}"


def _time_range(t: dict[str, Any]) -> str:
    if t["median"] is None:
        return "-"
    if t["n"] < 2:
        return duration(t["median"])
    return f"{duration(t['median'])} ({duration(t['min'])}-{duration(t['max'])})"


def _diff_text(diff: dict[str, Any] | None) -> str:
    """``+2.50 [+1.26, +3.74] (paired, n=3)``: the difference with its 95% interval, bold when
    the interval excludes 0; without an interval (one run on a side), says so."""
    if diff is None:
        return "-"
    text = f"{100 * diff['mean']:+.2f}"
    if diff["low"] is not None:
        text += f" [{100 * diff['low']:+.2f}, {100 * diff['high']:+.2f}]"
        if diff["significant"]:
            text = f"**{text}**"
    if diff["paired"]:
        return text + f" (paired, n={diff['n']})"
    counts = f"n={diff['n_setting']} vs {diff['n_reference']}"
    return text + (f" (means, {counts})" if diff["low"] is not None else f" ({counts}: no interval)")


def _separate_text(diff: dict[str, Any]) -> str:
    """How many seeds would separate a difference at its measured spread."""
    if diff["low"] is None:
        return "- (needs 2 runs a side)"
    n = diff["seeds_to_separate"]
    unit = "pairs" if diff["paired"] else "runs per setting"
    return f"more than {seedstats.MAX_SEEDS}" if n is None else f"{n} {unit}"


def _differences_section(data: dict[str, Any]) -> list[str]:
    """The statistics behind the Δ column, one row per setting compared, and how to read them."""
    reference = data["reference"]
    rows = [g for g in data["settings"] if g["diff_vs_reference"] is not None]
    if not rows:
        return []
    confidence = f"{100 * seedstats.CONFIDENCE:.0f}%"
    lines = ["", f"## Differences from `{reference}`", "",
             f"| setting | Δ final (points) | {confidence} interval | n | degrees of freedom | separated | "
             f"seeds to separate ({100 * seedstats.POWER:.0f}% power) | test-set limit of one accuracy |",
             "|---|--:|--:|---|--:|---|--:|--:|"]
    for g in rows:
        d = g["diff_vs_reference"]
        interval = "-" if d["low"] is None else f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
        n = f"{d['n']} pairs" if d["paired"] else f"{d['n_setting']} vs {d['n_reference']} runs"
        df = "-" if d["df"] is None else f"{d['df']:.3g}"
        separated = "-" if d["low"] is None else "**yes**" if d["significant"] else "no"
        limit = g["test_set_stderr"]
        limit_text = "-" if limit is None else f"± {100 * limit['stderr']:.2f} ({limit['images']:,} images)"
        lines.append(f"| `{g['label']}` | {100 * d['mean']:+.2f} | {interval} | {n} | {df} | {separated} | "
                     f"{_separate_text(d)} | {limit_text} |")
    alpha = 1 - seedstats.CONFIDENCE
    lines += ["", f"Rule: {seedstats.RULE}. *Paired* (the same seeds ran in both): the mean of the per-seed "
              "differences, standard error sd/√n, n−1 degrees of freedom (3 seeds: ± 4.30 standard errors, not "
              "± 2). Otherwise the difference of the means, standard error sqrt(s1²/n1 + s2²/n2) with "
              "Welch–Satterthwaite's degrees of freedom. *Seeds to separate*: the fewest seeds whose two-sided "
              f"t-test at alpha {alpha:.2f} finds a true difference of this size with {100 * seedstats.POWER:.0f}% "
              "power, if one seed's spread is the one measured here (noncentral t; that spread is itself an "
              "estimate from few seeds). *Test-set limit*: the binomial standard error of one accuracy on "
              "the test set, sqrt(p(1−p)/N): the limit when comparing a setting's accuracy with a number "
              "measured elsewhere (such as the original study's column); paired differences on the same test "
              "images are not limited by it."]
    return lines


def _time_ratio_text(g: dict[str, Any]) -> str:
    """A setting's time against the reference's, with what the ratio rests on."""
    ratio, comparison = g.get("time_ratio_vs_reference"), g.get("time_vs_reference")
    left_out = (comparison or {}).get("left_out")
    shared = f"; {left_out} shared-CPU run(s) left out ‡" if left_out else ""
    if ratio is None:
        return "- (the runs shared the CPU ‡)" if left_out else "-"
    if comparison is None:  # the reference itself
        return f"{ratio:.2f}x"
    if comparison["paired"]:
        apart = comparison.get("not_beside")
        apart = f"; {apart} seed(s) not run beside it left out" if apart else ""
        return f"{ratio:.2f}x (paired, n={comparison['n']}{apart}{shared})"
    if comparison["apart_s"] is not None:
        return f"{ratio:.2f}x (medians; runs up to {duration(comparison['apart_s'])} apart{shared})"
    return f"{ratio:.2f}x (medians{shared})"


def _shared_marker(shared: bool) -> str:
    return " ‡" if shared else ""


def _shared_note(data: dict[str, Any]) -> str | None:
    """The footnote for runs that shared their CPU, naming them; None when none did."""
    runs = [r for r in data["runs"] if r.get("shared_cpu")]
    if not runs:
        return None
    listed = ", ".join(f"{r['run']} ({r['cpu_wait']:.2f})" for r in runs)
    return (f"‡ Shared the CPU: other processes used these runs' cores (threads kept waiting for a CPU, "
            f"on average, in brackets; {contention.SHARED} or more counts): {listed}. Their wall times measure "
            "the machine's load, not the setting, and time comparisons leave them out; their accuracies "
            "are unaffected.")


def render_markdown(data: dict[str, Any]) -> str:
    settings = data["settings"]
    n_runs = len(data["runs"])
    lines = [
        f"# Ablation report: `{data['root']}`",
        "",
        f"{n_runs} run(s) in {len(settings)} setting(s), written {data['generated']} by `fastres report`.",
        "",
        "CIFAR-10 test-set accuracy in percent. Each row is one setting over its seeds: "
        "mean ± sample standard deviation (ddof 1). **Final** is the accuracy after the last epoch, "
        "the number to compare. *Best epoch* is the best of all epochs, picked on the test set "
        "itself, so it is optimistic (it is what the original study reported). Only runs that "
        "finished all their planned epochs are counted.",
        "",
        "## Setup",
        "",
    ]
    common = data["common_changes"]
    lines.append("- Changes from each preset applied to every run: "
                 + (", ".join(f"`{k}={compact(v)}`" for k, v in common.items()) if common else "none") + ".")
    prov = data["provenance"]
    lines.append(f"- Seeds: {', '.join(prov['seeds'])}.")
    for key, name in (("device", "Device"), ("precision", "Precision"), ("torch", "torch"),
                      ("git_commit", "fastres commit"), ("data_hash", "Data (manifest hash)")):
        if prov[key]:
            lines.append(f"- {name}: {', '.join(f'`{v}`' for v in prov[key])}.")
    named = [g for g in settings if g["name"] and g["name"] != g["preset"]]
    if named:
        lines.append("- Settings: " + "; ".join(
            f"`{g['label']}` = `{g['preset']}` with "
            + (", ".join(f"`{k}={compact(v)}`" for k, v in g["changes"].items() if common.get(k) != v) or "no change")
            for g in named) + ".")
    rules = {name: rule for name, rule in data.get("rules", {}).items() if any(g["name"] == name for g in named)}
    if rules:
        lines.append("- Rules (`fastres ablate --base`): " + "; ".join(f"`{k}`: {v}" for k, v in rules.items()) + ".")
    reference = data["reference"] or "baseline"
    lines += ["", "## Results", ""]
    held = any("best_val_split_acc" in g for g in settings)
    header = ["setting", "n", "final val acc", f"Δ final vs {reference}", "best-epoch val acc (optimistic)",
              *(["held-out acc: final / best epoch"] if held else []),
              "final train acc", "epochs", "wall time / run, median (range)", f"time vs {reference}", "images/s",
              "original study (1 run, best)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|")
    notes = False
    for g in settings:
        n = str(g["n"])
        if g["unfinished"]:
            n += f" (+{len(g['unfinished'])} unfinished†)"
        diff_text = _diff_text(g["diff_vs_reference"])
        epochs = "-" if not g["epochs"] else "/".join(str(e) for e in g["epochs"])
        if g["original_best_acc"] is not None:
            original = _pct(g["original_best_acc"], 1)
        elif g["original_best_acc_reference"] is not None:
            original = "(100 ep. only)*"
            notes = True
        else:
            original = "-"
        ips = g["images_per_s"]["mean"]
        lines.append("| " + " | ".join([
            f"`{g['label']}`", n, _mean_std(g["final_val_acc"]), diff_text, _mean_std(g["best_val_acc"]),
            *([_held_out_text(g)] if held else []),
            _mean_std(g["final_train_acc"]), epochs,
            _time_range(g["train_time_s"]) + _shared_marker(bool(g["shared_cpu"])),
            _time_ratio_text(g),
            "-" if ips is None else f"{ips:,.0f}", original]) + " |")
    lines.append("")
    lines.append(_splits_note(held))
    lines.append("")
    lines.append(f"Δ: final accuracy minus `{reference}`'s, in points, with its {100 * seedstats.CONFIDENCE:.0f}% "
                 "interval from Student's t for the n at hand (see *Differences* below). **Bold**: the interval "
                 "excludes 0; a difference whose interval holds 0 is not distinguishable from seed noise at "
                 "that n.")
    lines.append("")
    lines.append(f"Time vs `{reference}`: `train_time_s` against `{reference}`'s. *Paired*: the median of the "
                 "per-seed ratios of runs that ran next to each other (side by side, one after the other, or up to "
                 "three runs between: `fastres ablate --interleave`), so the machine's drift between them is small; "
                 "seeds whose runs ran further apart are then left out. *Medians* (when no seed's runs ran next "
                 "to each other): the ratio of the two settings' median times, from runs that ran further apart; a "
                 "shared machine's speed can drift by tens of percent over that time, so it is not a measurement "
                 "of the setting's cost.")
    if (shared_note := _shared_note(data)) is not None:
        lines += ["", shared_note]
    if notes:
        lines.append("")
        lines.append(f"\\* The original study's single-run best accuracies come from {ORIGINAL_EPOCHS}-epoch, "
                     "full-size runs; they are shown only next to runs of the same length: "
                     + ", ".join(f"{k} {v}" for k, v in ORIGINAL_STUDY.items()) + ".")
    lines += _differences_section(data)
    if data["unfinished"]:
        lines += ["", "## Unfinished runs (not counted above) †", "",
                  "| run | state | epochs done / planned |", "|---|---|--:|"]
        for u in data["unfinished"]:
            lines.append(f"| `{u['run']}` | {u['state']} | {u['epochs']}/{u['epochs_planned']} |")
        lines.append("")
        lines.append("Re-run the ablation command to resume them (`fastres train --resume RUN_DIR` for one).")
    if data["skipped"]:
        lines += ["", "## Folders not counted above", "", "| folder | why |", "|---|---|"]
        lines += [f"| `{k['run']}` | {k['reason'].replace('|', '/')} |" for k in data["skipped"]]
    lines += ["", "## Curves", "",
              f"![validation accuracy per epoch: mean over seeds, band = min-max]({VAL_PLOT})", "",
              f"![learning-rate schedules]({LR_PLOT})", "",
              f"![final accuracy against time per setting]({TIME_PLOT})", "",
              "## Runs", "",
              "| run | seed | state | epochs | final val | best val (epoch) | final train | wall time | images/s | commit |",
              "|---|--:|---|--:|--:|--:|--:|--:|--:|---|"]
    for r in data["runs"]:
        best = "-" if r["best_val_acc"] is None else f"{_pct(r['best_val_acc'])} ({r['best_epoch']})"
        if r["best_on"] == "val_split":  # its best epoch was chosen on the held-out images, not the test set
            best = f"held-out {_pct(r['best_val_split_acc'])} ({r['best_epoch']})"
        ips = "-" if r["images_per_s"] is None else f"{r['images_per_s']:,.0f}"
        commit = (r["git_commit"] or "-")[:12] + ("-dirty" if (r["git_commit"] or "").endswith("-dirty") else "")
        lines.append(f"| `{r['run']}` | {r['seed']} | {r['state']} | {r['epochs']}/{r['epochs_planned']} | "
                     f"{_pct(r['final_val_acc'])} | {best} | {_pct(r['final_train_acc'])} | "
                     f"{duration(r['train_time_s'])}{_shared_marker(r['shared_cpu'])} | {ips} | `{commit}` |")
    return "\n".join(lines) + "\n"


def _held_out_text(g: dict[str, Any]) -> str:
    if "best_val_split_acc" not in g:
        return "-"
    return f"{_mean_std(g['val_split_acc'])} / {_mean_std(g['best_val_split_acc'])}"


def _splits_note(held: bool) -> str:
    """Which images each accuracy column comes from."""
    note = ("Splits: *val acc* columns (final, Δ, best epoch) and the validation curves are the test set's "
            "(CIFAR-10's 10,000 test images, or the first `--test-subset`); *train acc* is the training batches', "
            "augmented, during the last epoch.")
    if held:
        note += (" *Held-out acc* is that of the `--val-split` training images, the same for every seed and never "
                 "trained on; those runs chose their best epoch (`best.pt`) on it and evaluated the test set only "
                 "after the last epoch, so their test columns are not optimistic.")
    return note


def plot_val_acc(runs: list[Run], path: Path, variants: frozenset[str] = frozenset(),
                 apart: frozenset[str] = frozenset()) -> None:
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
        evaluated = [(e, v) for e, v in enumerate(zip(*(c[:length] for c in curves), strict=True), 1)
                     if None not in v]
        epochs = [e for e, _ in evaluated]
        per_epoch = [v for _, v in evaluated]
        length = len(epochs)
        mean = [100 * statistics.fmean(v) for v in per_epoch]
        color = f"C{i % 10}"
        ax.plot(epochs, mean, color=color, marker="o" if length < 20 else None, markersize=3,
                label=f"{g.label} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(epochs, [100 * min(v) for v in per_epoch], [100 * max(v) for v in per_epoch],
                            color=color, alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title("Validation accuracy: mean over seeds, band = min-max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save_png(fig, path)


def plot_lr(runs: list[Run], path: Path, variants: frozenset[str] = frozenset(),
            apart: frozenset[str] = frozenset()) -> None:
    """The learning rate against (fractional) epoch for each setting, as the trainer applies it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    # Settings with the same schedule share one curve (and one legend entry).
    # Colours follow the settings' order, as in the accuracy plot.
    curves: dict[str, tuple[TrainConfig, int, list[str]]] = {}
    for i, g in enumerate(group_runs(runs, variants, apart)):
        c = g.config
        key = json.dumps([c.lr, c.lr_schedule, list(c.milestones), c.lr_gamma, c.warmup_epochs, c.epochs])
        curves.setdefault(key, (c, i, []))[2].append(g.label)
    resolution = 100  # nominal steps per epoch: the schedule's shape, whatever the data size
    for c, i, labels in curves.values():
        steps = range(c.epochs * resolution)
        lrs = [c.lr * lr_factor(c, s, resolution) for s in steps]
        # Step s holds its lr from s to s+1: a post-step line shows milestone drops as vertical edges.
        ax.step([s / resolution for s in steps] + [c.epochs], lrs + lrs[-1:], where="post",
                color=f"C{i % 10}", label=", ".join(labels))
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedules")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save_png(fig, path)


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
        points.append({"label": g["label"], "time": x, "paired": bool(paired), "acc": 100 * acc["mean"],
                       "acc_sd": 100 * (acc["std"] or 0.0), "n": acc["n"]})
    return points


def plot_time_accuracy(data: dict[str, Any], path: Path) -> None:
    """Final accuracy against time per setting (``time_accuracy_points``): what a recipe buys
    for what it costs. Hollow markers: times not paired with the reference's."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    reference = data["reference"]
    for i, p in enumerate(time_accuracy_points(data)):
        color = f"C{i % 10}"
        ax.errorbar([p["time"]], [p["acc"]], yerr=[p["acc_sd"]], fmt="o", color=color, capsize=3,
                    markerfacecolor=color if p["paired"] else "none")
        ax.annotate(f"{p['label']} (n={p['n']})", (p["time"], p["acc"]), textcoords="offset points",
                    xytext=(5, 4), fontsize="small", color=color)
    if reference is not None:
        ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel(f"train_time_s / {reference}'s (hollow: medians of runs that did not run next to it)")
    else:
        ax.set_xlabel("train_time_s, median over seeds (s)")
    ax.set_ylabel("final val accuracy (%), mean ± sd")
    ax.set_title("Accuracy against time")
    ax.margins(x=0.15, y=0.1)
    ax.grid(alpha=0.3)
    _save_png(fig, path)


def _save_png(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def write_report(roots: str | Path | Sequence[str | Path], reference: str | None = None,
                 out: str | Path | None = None) -> dict[str, Any]:
    """Write report.md, report.json and the plots into ``out`` (default: the one folder
    reported), every setting compared with ``reference`` (default ``baseline``); return the
    report's data. Several folders are reported as one study (``load_studies``): seeds of a
    setting run in different studies, on different days or machines, count together."""
    folders = _folders(roots)
    if out is None and len(folders) > 1:
        raise FastresError(f"a report of {len(folders)} folders needs --out DIR: the folder its report.md goes to")
    target = Path(out) if out is not None else folders[0]
    if target.exists() and not target.is_dir():
        raise FastresError(f"--out {target} is a file, not a folder: pass a folder for the report")
    skipped: list[dict[str, str]] = []
    runs = load_studies(folders, skipped)
    data = aggregate(folders, runs, reference, skipped)
    variants, apart = study_variants(*folders), machine_variants(*folders)
    try:
        target.mkdir(parents=True, exist_ok=True)
        plot_val_acc(runs, target / VAL_PLOT, variants, apart)
        plot_lr(runs, target / LR_PLOT, variants, apart)
        plot_time_accuracy(data, target / TIME_PLOT)
        atomic_write_text(target / REPORT_MD, render_markdown(data))
        atomic_write_text(target / REPORT_JSON, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise FastresError(f"cannot write the report into {target} ({exc.strerror or exc}): "
                           "check that you can write there") from None
    return data


def summary_table(data: dict[str, Any]) -> str:
    """The results table for the terminal (the markdown table's main columns)."""
    rows = [("setting", "n", "final val acc %", f"Δ vs {data['reference'] or 'baseline'}", "best-epoch %", "epochs",
             "time (median)", "unfinished")]
    for g in data["settings"]:
        median = g["train_time_s"]["median"]
        ratio = _time_ratio_text(g)
        time_text = (("-" if median is None else duration(median)) + _shared_marker(bool(g["shared_cpu"]))
                     + (f", {ratio}" if ratio != "-" else ""))
        rows.append((g["label"], str(g["n"]), _mean_std(g["final_val_acc"]),
                     _diff_text(g["diff_vs_reference"]).replace("**", ""), _mean_std(g["best_val_acc"]),
                     "/".join(str(e) for e in g["epochs"]) or "-", time_text,
                     str(len(g["unfinished"])) if g["unfinished"] else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
    if any(g["diff_vs_reference"] for g in data["settings"]):
        text += (f"\nΔ: {seedstats.RULE} (bracketed; n = pairs, or runs per side); "
                 f"report.md gives the seeds each would need at {100 * seedstats.POWER:.0f}% power")
    if (shared_note := _shared_note(data)) is not None:
        text += "\n" + shared_note
    for k in data.get("skipped", []):
        text += f"\nnot counted: {k['run']}: {k['reason']}"
    return text

