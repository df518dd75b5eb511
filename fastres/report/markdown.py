"""The report's data (``numbers.aggregate``) as text: report.md, one section at a time, and
the terminal's summary table.
"""

from __future__ import annotations

from typing import Any

from .. import contention, seedstats
from ..config import MACHINE_FIELDS
from ..formatting import compact, duration
from .numbers import LR_PLOT, ORIGINAL_EPOCHS, ORIGINAL_STUDY, TIME_PLOT, VAL_PLOT


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
    if diff["low"] is None:
        return text + f" ({counts}: no interval)"
    return text + f" (means, {counts})"


def _separate_text(diff: dict[str, Any]) -> str:
    """How many seeds would separate a difference at its measured spread."""
    if diff["low"] is None:
        return "- (needs 2 runs a side)"
    n = diff["seeds_to_separate"]
    unit = "pairs" if diff["paired"] else "runs per setting"
    return f"more than {seedstats.MAX_SEEDS}" if n is None else f"{n} {unit}"


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
    return (
        f"‡ Shared the CPU: other processes used these runs' cores (threads kept waiting for "
        f"a CPU, on average, in brackets; {contention.SHARED} or more counts): {listed}. Their "
        "wall times measure the machine's load, not the setting, and time comparisons leave "
        "them out; their accuracies are unaffected."
    )


def _chance_marker(at_chance: bool | list[str] | None) -> str:
    return " §" if at_chance else ""


def _chance_note(data: dict[str, Any]) -> str | None:
    """The footnote for finished runs that did not learn, naming them; None when all did."""
    runs = [r["run"] for r in data["runs"] if r.get("at_chance")]
    if not runs:
        return None
    return (
        f"§ At chance: these runs finished at the accuracy of guessing one of "
        f"{seedstats.CLASSES} classes (within three binomial standard errors of it), so they "
        f"did not learn, and their setting's mean counts them: {', '.join(runs)}. A loss that "
        "stays at ln 10 without a NaN (a learning rate too high for the recipe) ends this way."
    )


def _held_out_text(g: dict[str, Any]) -> str:
    if "best_val_split_acc" not in g:
        return "-"
    return f"{_mean_std(g['val_split_acc'])} / {_mean_std(g['best_val_split_acc'])}"


def _splits_note(held: bool) -> str:
    """Which images each accuracy column comes from."""
    note = (
        "Splits: *val acc* columns (final, Δ, best epoch) and the validation curves are the "
        "test set's (CIFAR-10's 10,000 test images, or the first `--test-subset`); *train acc* "
        "is the training batches', augmented, during the last epoch."
    )
    if held:
        note += (
            " *Held-out acc* is that of the `--val-split` training images, the same for "
            "every seed and never trained on; those runs chose their best epoch (`best.pt`) "
            "on it and evaluated the test set only after the last epoch, so their test "
            "columns are not optimistic."
        )
    return note


def render_markdown(data: dict[str, Any]) -> str:
    """report.md: the setup, the results table and how to read it, the differences from the
    reference, the runs not counted, the plots and every run."""
    lines = _title(data) + _setup_section(data) + _results_section(data)
    lines += _differences_section(data) + _unfinished_section(data) + _skipped_section(data)
    lines += _curves_section() + _runs_section(data)
    return "\n".join(lines) + "\n"


def _title(data: dict[str, Any]) -> list[str]:
    return [
        f"# Ablation report: `{data['root']}`",
        "",
        f"{len(data['runs'])} run(s) in {len(data['settings'])} setting(s), written "
        f"{data['generated']} by `fastres report`.",
        "",
        "CIFAR-10 test-set accuracy in percent. Each row is one setting over its seeds: "
        "mean ± sample standard deviation (ddof 1). **Final** is the accuracy after the last "
        "epoch, the number to compare. *Best epoch* is the best of all epochs, picked on the "
        "test set itself, so it is optimistic (it is what the original study reported). Only "
        "runs that finished all their planned epochs are counted.",
    ]


def _setup_section(data: dict[str, Any]) -> list[str]:
    """What every run shares (changes, seeds, machine, commit) and what each named setting is."""
    lines = ["", "## Setup", ""]
    common = data["common_changes"]
    recipe = {k: v for k, v in common.items() if k not in MACHINE_FIELDS}
    machine = {k: v for k, v in common.items() if k in MACHINE_FIELDS}
    lines.append(
        "- Changes from each preset applied to every run: "
        + (", ".join(f"`{k}={compact(v)}`" for k, v in recipe.items()) if recipe else "none")
        + "."
    )
    if machine:
        # Apart: where and how the runs ran, not what they trained.
        lines.append(
            "- Machine settings of every run (not part of the recipe): "
            + ", ".join(f"`{k}={compact(v)}`" for k, v in machine.items())
            + "."
        )
    prov = data["provenance"]
    lines.append(f"- Seeds: {', '.join(prov['seeds'])}.")
    for key, name in (
        ("device", "Device"),
        ("precision", "Precision"),
        ("torch", "torch"),
        ("git_commit", "fastres commit"),
        ("data_hash", "Data (manifest hash)"),
    ):
        if prov[key]:
            lines.append(f"- {name}: {', '.join(f'`{v}`' for v in prov[key])}.")
    named = [g for g in data["settings"] if g["name"] and g["name"] != g["preset"]]
    if named:
        lines.append(
            "- Settings: "
            + "; ".join(
                f"`{g['label']}` = `{g['preset']}` with "
                + (
                    ", ".join(
                        f"`{k}={compact(v)}`" for k, v in g["changes"].items() if common.get(k) != v
                    )
                    or "no change"
                )
                for g in named
            )
            + "."
        )
    rules = {
        name: rule
        for name, rule in data.get("rules", {}).items()
        if any(g["name"] == name for g in named)
    }
    if rules:
        lines.append(
            "- Rules (`fastres ablate --base`): "
            + "; ".join(f"`{k}`: {v}" for k, v in rules.items())
            + "."
        )
    return lines


def _results_section(data: dict[str, Any]) -> list[str]:
    """The results table, one row per setting, and the notes that say how to read it."""
    settings = data["settings"]
    reference = data["reference"] or "baseline"
    held = any("best_val_split_acc" in g for g in settings)
    header = [
        "setting",
        "n",
        "final val acc",
        f"Δ final vs {reference}",
        "best-epoch val acc (optimistic)",
        *(["held-out acc: final / best epoch"] if held else []),
        "final train acc",
        "epochs",
        "wall time / run, median (range)",
        f"time vs {reference}",
        "images/s",
        "original study (1 run, best)",
    ]
    lines = [
        "",
        "## Results",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(_results_row(g, held)) + " |" for g in settings]
    notes = any(
        g["original_best_acc"] is None and g["original_best_acc_reference"] is not None
        for g in settings
    )
    return lines + _results_notes(data, reference, held, notes)


def _results_row(g: dict[str, Any], held: bool) -> list[str]:
    """One setting's cells of the results table."""
    n = str(g["n"])
    if g["unfinished"]:
        n += f" (+{len(g['unfinished'])} unfinished†)"
    epochs = "-" if not g["epochs"] else "/".join(str(e) for e in g["epochs"])
    if g["original_best_acc"] is not None:
        original = _pct(g["original_best_acc"], 1)
    elif g["original_best_acc_reference"] is not None:
        original = "(100 ep. only)*"
    else:
        original = "-"
    ips = g["images_per_s"]["mean"]
    return [
        f"`{g['label']}`",
        n,
        _mean_std(g["final_val_acc"]) + _chance_marker(g.get("at_chance")),
        _diff_text(g["diff_vs_reference"]),
        _mean_std(g["best_val_acc"]),
        *([_held_out_text(g)] if held else []),
        _mean_std(g["final_train_acc"]),
        epochs,
        _time_range(g["train_time_s"]) + _shared_marker(bool(g["shared_cpu"])),
        _time_ratio_text(g),
        "-" if ips is None else f"{ips:,.0f}",
        original,
    ]


def _results_notes(data: dict[str, Any], reference: str, held: bool, notes: bool) -> list[str]:
    """Below the results table: the splits, Δ, the time ratio, shared CPUs and, when a row
    shows ``(100 ep. only)*``, the original study's numbers."""
    confidence = f"{100 * seedstats.CONFIDENCE:.0f}%"
    lines = [
        "",
        _splits_note(held),
        "",
        f"Δ: final accuracy minus `{reference}`'s, in points, with its {confidence} interval "
        "from Student's t for the n at hand (see *Differences* below). **Bold**: the interval "
        "excludes 0; a difference whose interval holds 0 is not distinguishable from seed "
        "noise at that n.",
        "",
        f"Time vs `{reference}`: `train_time_s` against `{reference}`'s. *Paired*: the median "
        "of the per-seed ratios of runs that ran next to each other (side by side, one after "
        "the other, or up to three runs between: `fastres ablate --interleave`), so the "
        "machine's drift between them is small; seeds whose runs ran further apart are then "
        "left out. *Medians* (when no seed's runs ran next to each other): the ratio of the "
        "two settings' median times, from runs that ran further apart; a shared machine's "
        "speed can drift by tens of percent over that time, so it is not a measurement of the "
        "setting's cost.",
    ]
    for note in (_shared_note(data), _chance_note(data)):
        if note is not None:
            lines += ["", note]
    if notes:
        lines += [
            "",
            f"\\* The original study's single-run best accuracies come from "
            f"{ORIGINAL_EPOCHS}-epoch, full-size runs; they are shown only next to runs "
            "of the same length: " + ", ".join(f"{k} {v}" for k, v in ORIGINAL_STUDY.items()) + ".",
        ]
    return lines


def _differences_section(data: dict[str, Any]) -> list[str]:
    """The statistics behind the Δ column, one row per setting compared, and how to read them."""
    reference = data["reference"]
    rows = [g for g in data["settings"] if g["diff_vs_reference"] is not None]
    if not rows:
        return []
    confidence = f"{100 * seedstats.CONFIDENCE:.0f}%"
    lines = [
        "",
        f"## Differences from `{reference}`",
        "",
        f"| setting | Δ final (points) | {confidence} interval | n | degrees of freedom | "
        f"separated | seeds to separate ({100 * seedstats.POWER:.0f}% power) | test-set limit "
        "of one accuracy |",
        "|---|--:|--:|---|--:|---|--:|--:|",
    ]
    for g in rows:
        d = g["diff_vs_reference"]
        interval = "-" if d["low"] is None else f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
        n = f"{d['n']} pairs" if d["paired"] else f"{d['n_setting']} vs {d['n_reference']} runs"
        df = "-" if d["df"] is None else f"{d['df']:.3g}"
        separated = "-" if d["low"] is None else "**yes**" if d["significant"] else "no"
        limit = g["test_set_stderr"]
        limit_text = (
            "-" if limit is None else f"± {100 * limit['stderr']:.2f} ({limit['images']:,} images)"
        )
        lines.append(
            f"| `{g['label']}` | {100 * d['mean']:+.2f} | {interval} | {n} | {df} | "
            f"{separated} | {_separate_text(d)} | {limit_text} |"
        )
    alpha = 1 - seedstats.CONFIDENCE
    lines += [
        "",
        f"Rule: {seedstats.RULE}. *Paired* (the same seeds ran in both): the mean of the "
        "per-seed differences, standard error sd/√n, n−1 degrees of freedom (3 seeds: ± 4.30 "
        "standard errors, not ± 2). Otherwise the difference of the means, standard error "
        "sqrt(s1²/n1 + s2²/n2) with Welch–Satterthwaite's degrees of freedom. *Seeds to "
        f"separate*: the fewest seeds whose two-sided t-test at alpha {alpha:.2f} finds a "
        f"true difference of this size with {100 * seedstats.POWER:.0f}% power, if one "
        "seed's spread is the one measured here (noncentral t; that spread is itself an "
        "estimate from few seeds). *Test-set limit*: the binomial standard error of one "
        "accuracy on the test set, sqrt(p(1−p)/N): the limit when comparing a setting's "
        "accuracy with a number measured elsewhere (such as the original study's column); "
        "paired differences on the same test images are not limited by it.",
    ]
    return lines


def _unfinished_section(data: dict[str, Any]) -> list[str]:
    if not data["unfinished"]:
        return []
    lines = [
        "",
        "## Unfinished runs (not counted above) †",
        "",
        "| run | state | epochs done / planned |",
        "|---|---|--:|",
    ]
    lines += [
        f"| `{u['run']}` | {u['state']} | {u['epochs']}/{u['epochs_planned']} |"
        for u in data["unfinished"]
    ]
    return lines + [
        "",
        "Re-run the ablation command to resume them (`fastres train --resume RUN_DIR` for one).",
    ]


def _skipped_section(data: dict[str, Any]) -> list[str]:
    if not data["skipped"]:
        return []
    lines = ["", "## Folders not counted above", "", "| folder | why |", "|---|---|"]
    # A | in a reason would end its table cell.
    return lines + [f"| `{k['run']}` | {k['reason'].replace('|', '/')} |" for k in data["skipped"]]


def _curves_section() -> list[str]:
    return [
        "",
        "## Curves",
        "",
        f"![validation accuracy per epoch: mean over seeds, band = min-max]({VAL_PLOT})",
        "",
        f"![learning-rate schedules]({LR_PLOT})",
        "",
        f"![final accuracy against time per setting]({TIME_PLOT})",
    ]


def _runs_section(data: dict[str, Any]) -> list[str]:
    """Every run, counted or not, one row each."""
    lines = [
        "",
        "## Runs",
        "",
        "| run | seed | state | epochs | final val | best val (epoch) | final train "
        "| wall time | images/s | commit |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in data["runs"]:
        best = (
            "-" if r["best_val_acc"] is None else f"{_pct(r['best_val_acc'])} ({r['best_epoch']})"
        )
        if r["best_on"] == "val_split":  # its best epoch was chosen on the held-out images
            best = f"held-out {_pct(r['best_val_split_acc'])} ({r['best_epoch']})"
        ips = "-" if r["images_per_s"] is None else f"{r['images_per_s']:,.0f}"
        commit = r["git_commit"] or "-"
        commit = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
        lines.append(
            f"| `{r['run']}` | {r['seed']} | {r['state']} | "
            f"{r['epochs']}/{r['epochs_planned']} | "
            f"{_pct(r['final_val_acc'])}{_chance_marker(r.get('at_chance'))} | {best} | "
            f"{_pct(r['final_train_acc'])} | "
            f"{duration(r['train_time_s'])}{_shared_marker(r['shared_cpu'])} | {ips} | "
            f"`{commit}` |"
        )
    return lines


def summary_table(data: dict[str, Any]) -> str:
    """The results table for the terminal (the markdown table's main columns)."""
    rows = [
        (
            "setting",
            "n",
            "final val acc %",
            f"Δ vs {data['reference'] or 'baseline'}",
            "best-epoch %",
            "epochs",
            "time (median)",
            "unfinished",
        )
    ]
    for g in data["settings"]:
        median = g["train_time_s"]["median"]
        ratio = _time_ratio_text(g)
        time_text = (
            ("-" if median is None else duration(median))
            + _shared_marker(bool(g["shared_cpu"]))
            + (f", {ratio}" if ratio != "-" else "")
        )
        rows.append(
            (
                g["label"],
                str(g["n"]),
                _mean_std(g["final_val_acc"]) + _chance_marker(g.get("at_chance")),
                _diff_text(g["diff_vs_reference"]).replace("**", ""),
                _mean_std(g["best_val_acc"]),
                "/".join(str(e) for e in g["epochs"]) or "-",
                time_text,
                str(len(g["unfinished"])) if g["unfinished"] else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
    if any(g["diff_vs_reference"] for g in data["settings"]):
        text += (
            f"\nΔ: {seedstats.RULE} (bracketed; n = pairs, or runs per side); "
            f"report.md gives the seeds each would need at {100 * seedstats.POWER:.0f}% power"
        )
    for note in (_shared_note(data), _chance_note(data)):
        if note is not None:
            text += "\n" + note
    for k in data.get("skipped", []):
        text += f"\nnot counted: {k['run']}: {k['reason']}"
    return text
