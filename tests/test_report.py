"""``fastres report``: statistics, unfinished runs, the original study's column, JSON, plots.

The run directories are written through RunDir with chosen numbers (no training), and the
expected statistics are computed here from their summary.json files, not by the report's code.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest

from fastres.presets import get_preset
from fastres.report import aggregate, render_markdown, time_accuracy_points
from fastres.rundir import RunDir, record_study

from .conftest import run_cli, run_main

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(
    root: Path,
    preset: str,
    seed: int,
    finals: list[float],
    *,
    epochs: int | None = None,
    status: str | None = "completed",
    folder: str | None = None,
    train_time_s: float | None = None,
    finished: str | None = None,
    cpu_wait: float | None = None,
    **changes,
) -> Path:
    """A run dir whose val accuracy per epoch is ``finals`` (its length = epochs done); its
    summary says it trained ``train_time_s`` seconds and ``finished`` then (when given)."""
    planned = epochs or len(finals)
    changes = {"width": 8} | changes
    config = get_preset(preset).replace(seed=seed, epochs=planned, **changes)
    name = folder or f"{preset}-w{config.width}"
    run = RunDir(root / name / f"seed{seed}")
    run.path.mkdir(parents=True)
    run.write_config(config.replace(run_dir=str(run.path)).to_dict())
    for e, acc in enumerate(finals, 1):
        run.append_metrics(
            {
                "epoch": e,
                "train_loss": 1.0 / e,
                "train_acc": min(1.0, acc + 0.05),
                "val_loss": 1.0,
                "val_acc": acc,
                "lr": 0.1,
                "images_per_s": 1000.0 + seed,
                "epoch_time_s": 2.0,
            }
        )
    if status is not None:
        best = max(finals)
        run.write_summary(
            {
                "status": status,
                "preset": config.preset,
                "model": config.model,
                "epochs": len(finals),
                "epochs_planned": planned,
                "best_val_acc": best,
                "best_epoch": finals.index(best) + 1,
                "final_val_acc": finals[-1],
                "final_train_acc": min(1.0, finals[-1] + 0.05),
                "train_time_s": 10.0 * len(finals) + seed if train_time_s is None else train_time_s,
                "images_per_s": 1000.0 + seed,
                "seed": seed,
                "device": "TestCPU",
                "precision": "bf16",
                "git_commit": "abc123",
                "versions": {"torch": "9.9"},
                "data_hash": "d1",
            }
            | ({"finished": finished} if finished else {})
            | ({"cpu_wait": cpu_wait} if cpu_wait is not None else {})
        )
    return run.path


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    make_run(root, "baseline", 42, [0.50, 0.712, 0.701])
    make_run(root, "baseline", 43, [0.40, 0.733, 0.722])
    make_run(root, "baseline", 44, [0.45, 0.698, 0.690])
    make_run(root, "no_batchnorm", 42, [0.30, 0.41, 0.52])
    make_run(root, "no_batchnorm", 43, [0.35, 0.45, 0.48])
    make_run(root, "cosine", 42, [0.6, 0.7, 0.8])
    make_run(root, "cosine", 43, [0.99], epochs=3, status="interrupted")  # stopped after epoch 1
    make_run(root, "cosine", 44, [0.98, 0.99], epochs=3, status=None)  # killed: no summary
    make_run(root, "resnet34", 42, [0.5] * 99 + [0.8])  # the original study's 100 epochs
    make_run(root, "resnet34", 43, [0.5] * 99 + [0.9])
    return root


def summary_values(root: Path, preset: str, key: str) -> list[float]:
    return [
        json.loads(p.read_text())[key]
        for p in sorted(root.glob(f"{preset}-w8/seed*/summary.json"))
        if json.loads(p.read_text())["status"] == "completed"
    ]


def row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| `{label}` |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_rows_hold_mean_and_sample_std_over_finished_seeds(runs):
    res = run_cli("report", str(runs))  # once through a real process, as a user runs it
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "wrote" in res.stdout
    text = (runs / "report.md").read_text()
    for preset in ("baseline", "no_batchnorm", "resnet34"):
        cells = row(text, preset)
        for col, key in ((2, "final_val_acc"), (4, "best_val_acc"), (5, "final_train_acc")):
            values = summary_values(runs, preset, key)
            assert (
                cells[col]
                == f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"
            ), (preset, key)
        assert cells[1] == str(len(summary_values(runs, preset, "final_val_acc")))
    # Seeds 42 and 43 ran in both: the difference is paired by seed. 2 pairs give 1 degree of
    # freedom: the 95% interval is the mean ± 12.706 standard errors, so a difference 7 standard
    # errors out (the old two-s.e. rule's bold) holds 0 and is not marked.
    base = summary_values(runs, "baseline", "final_val_acc")[:2]
    nobn = summary_values(runs, "no_batchnorm", "final_val_acc")
    diffs = [n - b for n, b in zip(nobn, base, strict=True)]
    mean, se = statistics.fmean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5
    low, high = 100 * (mean - 12.706 * se), 100 * (mean + 12.706 * se)
    assert abs(mean / se) > 2 and low < 0 < high
    assert (
        row(text, "no_batchnorm")[3] == f"{100 * mean:+.2f} [{low:+.2f}, {high:+.2f}] (paired, n=2)"
    )
    # resnet34 ran seeds 42 and 43 as well; cosine finished one seed: the difference of the means.
    assert row(text, "cosine")[3].startswith(
        f"{100 * (0.8 - statistics.fmean(summary_values(runs, 'baseline', 'final_val_acc'))):+.2f}"
    )
    # Final and best-epoch differ in this data: the table must not confuse them.
    assert row(text, "baseline")[2] != row(text, "baseline")[4]
    assert "optimistic" in text
    assert row(text, "baseline")[6] == "3" and row(text, "resnet34")[6] == "100"
    # Time: the median and range of train_time_s, and the ratio of medians to the reference's.
    base_times = summary_values(runs, "baseline", "train_time_s")  # 30 + seed: 72, 73, 74
    nobn_times = summary_values(runs, "no_batchnorm", "train_time_s")
    assert row(text, "baseline")[7] == "1m13s (1m12s-1m14s)" and row(text, "baseline")[8] == "1.00x"
    ratio = statistics.median(nobn_times) / statistics.median(base_times)
    assert row(text, "no_batchnorm")[8] == f"{ratio:.2f}x (medians)", (
        "no finish times: not known to be paired"
    )


def test_unfinished_runs_are_marked_and_not_averaged(runs, capsys):
    assert run_main(capsys, "report", str(runs)).returncode == 0
    text = (runs / "report.md").read_text()
    cells = row(text, "cosine")
    assert cells[1] == "1 (+2 unfinished†)"
    assert cells[2] == "80.00 ± n/a", (
        "only the finished run counts (the unfinished ones reached 98-99%)"
    )
    assert "## Unfinished runs" in text
    assert "| `cosine-w8/seed43` | interrupted | 1/3 |" in text
    assert "| `cosine-w8/seed44` | incomplete | 2/3 |" in text


def test_original_study_column_only_for_100_epoch_runs(runs, capsys):
    assert run_main(capsys, "report", str(runs)).returncode == 0
    text = (runs / "report.md").read_text()
    assert row(text, "resnet34")[-1] == "89.9"
    assert row(text, "baseline")[-1] != "93.9" and "93.9" not in row(text, "baseline")[-1]


def test_json_output_uses_fractions(runs, capsys):
    res = run_main(capsys, "report", str(runs), "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data == json.loads((runs / "report.json").read_text())
    setting = next(s for s in data["settings"] if s["label"] == "baseline")
    values = summary_values(runs, "baseline", "final_val_acc")
    assert setting["final_val_acc"]["mean"] == pytest.approx(statistics.fmean(values))
    assert setting["final_val_acc"]["std"] == pytest.approx(statistics.stdev(values))
    assert setting["n"] == 3 and setting["seeds"] == [42, 43, 44]
    assert {u["run"] for u in data["unfinished"]} == {"cosine-w8/seed43", "cosine-w8/seed44"}
    assert next(s for s in data["settings"] if s["label"] == "resnet34")[
        "original_best_acc"
    ] == pytest.approx(0.899)


def test_plots_are_valid_pngs(runs, capsys):
    assert run_main(capsys, "report", str(runs)).returncode == 0
    import matplotlib.image

    for name in ("val_acc.png", "lr_schedule.png", "acc_vs_time.png"):
        data = (runs / name).read_bytes()
        assert data[:8] == PNG
        image = matplotlib.image.imread(runs / name)
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert image.std() > 0.01, f"{name} is blank"
        assert f"]({name})" in (runs / "report.md").read_text()


def test_settings_that_share_a_preset_but_differ_are_kept_apart(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root, "baseline", 42, [0.5, 0.6])
    make_run(root, "baseline", 42, [0.5, 0.9], width=16)
    assert run_main(capsys, "report", str(root)).returncode == 0
    text = (root / "report.md").read_text()
    assert row(text, "baseline (width=8)")[2] == "60.00 ± n/a"
    assert row(text, "baseline (width=16)")[2] == "90.00 ± n/a"


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_report_on_a_folder_without_runs_is_a_one_line_error(capsys, tmp_path, make):
    target = tmp_path / "nothing"
    if make == "empty":
        target.mkdir()
    res = run_main(capsys, "report", str(target))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert ("holds no fastres runs" if make == "empty" else "is not a folder") in res.stderr


def test_every_setting_is_compared_with_the_reference_paired_by_seed(runs, capsys):
    data = json.loads(run_main(capsys, "report", str(runs), "--json").stdout)
    assert data["reference"] == "baseline"
    no_bn = next(g for g in data["settings"] if g["preset"] == "no_batchnorm")["diff_vs_reference"]
    diffs = [0.52 - 0.701, 0.48 - 0.722]  # seeds 42 and 43 ran in both
    assert no_bn["paired"] and no_bn["n"] == 2 and no_bn["seeds"] == [42, 43]
    assert no_bn["mean"] == pytest.approx(statistics.fmean(diffs))
    assert no_bn["stderr"] == pytest.approx(statistics.stdev(diffs) / 2**0.5)
    cosine = next(g for g in data["settings"] if g["preset"] == "cosine")["diff_vs_reference"]
    assert not cosine["paired"], "one finished seed: no pairs, the difference of the means"
    data = json.loads(
        run_main(capsys, "report", str(runs), "--reference", "no_batchnorm", "--json").stdout
    )
    base = next(g for g in data["settings"] if g["preset"] == "baseline")["diff_vs_reference"]
    assert base["reference"] == "no_batchnorm" and base["mean"] == pytest.approx(
        -statistics.fmean(diffs)
    )
    assert "Δ final vs no_batchnorm" in (runs / "report.md").read_text()
    res = run_main(capsys, "report", str(runs), "--reference", "nope")
    assert (
        res.returncode == 2
        and "no setting named 'nope'" in res.stderr
        and "no_batchnorm" in res.stderr
    )


def test_a_studys_variants_are_named_and_a_clear_gain_is_marked(tmp_path, capsys):
    root = tmp_path / "study"
    for seed, (ref, ema) in enumerate([(0.80, 0.83), (0.82, 0.84), (0.81, 0.835)]):
        make_run(root, "quick", seed, [0.5, ref], folder="quick")
        make_run(root, "quick", seed, [0.5, ema], folder="ema", ema=0.99)
    record_study(root, {"variants": {"ema": {"ema": 0.99}}, "runs": []}, {"pid": 1})
    res = run_main(capsys, "report", str(root), "--reference", "quick")
    assert res.returncode == 0, res.stderr
    text = (root / "report.md").read_text()
    assert "`ema` = `quick` with `ema=0.99`" in text
    cells = row(text, "ema")
    # Diffs 3, 2, 2.5 points: mean 2.5, s.e. 0.5/sqrt(3) = 0.289, 2 degrees of freedom, so the 95%
    # interval is 2.5 ± 4.303 * 0.289 = [1.26, 3.74]: it excludes 0, bold.
    assert cells[3] == "**+2.50 [+1.26, +3.74]** (paired, n=3)", cells
    # The statistics behind it: at that spread (sd 0.5, an effect of 5 sd) 3 pairs give 97.5% power;
    # one accuracy of 83.5% on 10,000 test images has a binomial s.e. of
    # sqrt(.835 * .165 / 1e4) = 0.37.
    assert "## Differences from `quick`" in text and "Student's t" in text
    line = next(
        line
        for line in text.split("## Differences")[1].splitlines()
        if line.startswith("| `ema` |")
    )
    assert [c.strip() for c in line.strip("|").split("|")] == [
        "`ema`",
        "+2.50",
        "[+1.26, +3.74]",
        "3 pairs",
        "2",
        "**yes**",
        "3 pairs",
        "± 0.37 (10,000 images)",
    ]
    data = json.loads((root / "report.json").read_text())
    diff = next(g for g in data["settings"] if g["label"] == "ema")["diff_vs_reference"]
    assert diff["df"] == 2 and diff["t"] == pytest.approx(4.303, abs=1e-3) and diff["significant"]
    assert diff["seeds_to_separate"] == 3 and diff["power"] == 0.8 and "Student's t" in diff["rule"]
    assert "[+1.26, +3.74] (paired, n=3)" in res.stdout and "Student's t" in res.stdout, (
        "the terminal says it too"
    )
    assert [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| `")][
        :2
    ] == ["`quick`", "`ema`"]


def test_a_variant_studys_report_compares_with_its_varied_preset_without_being_told(
    tmp_path, capsys
):
    """`fastres report OUT` on a study of --variants, as `ablate` ends it: Δ against the varied
    preset, not against a baseline the study never ran."""
    root = tmp_path / "study"
    for seed, (ref, ema) in enumerate([(0.80, 0.83), (0.82, 0.84), (0.81, 0.835)]):
        make_run(root, "quick", seed, [0.5, ref], folder="quick")
        make_run(root, "quick", seed, [0.5, ema], folder="ema", ema=0.99)
    record_study(
        root, {"presets": ["quick"], "variants": {"ema": {"ema": 0.99}}, "runs": []}, {"pid": 1}
    )
    res = run_main(capsys, "report", str(root))
    assert res.returncode == 0, res.stderr
    text = (root / "report.md").read_text()
    assert "Δ final vs quick" in text
    assert row(text, "ema")[3] == "**+2.50 [+1.26, +3.74]** (paired, n=3)"


def test_a_variant_that_changes_only_the_machine_is_a_setting_of_its_own(tmp_path, capsys):
    """`--variant compiled:"--compile on"` trains the preset's recipe on another machine setting:
    the report keeps its runs apart from the preset's instead of counting them as n=6."""
    root = tmp_path / "study"
    for seed, (ref, fast) in enumerate([(0.80, 0.81), (0.82, 0.815), (0.81, 0.80)]):
        make_run(root, "quick", seed, [0.5, ref], folder="quick")
        make_run(root, "quick", seed, [0.5, fast], folder="compiled", compile="on")
    record_study(
        root,
        {"presets": ["quick"], "variants": {"compiled": {"compile": "on"}}, "runs": []},
        {"pid": 1},
    )
    assert run_main(capsys, "report", str(root)).returncode == 0
    text = (root / "report.md").read_text()
    assert row(text, "quick")[1] == "3" and row(text, "compiled")[1] == "3"
    assert "(paired, n=3)" in row(text, "compiled")[3]


def test_settings_without_common_seeds_get_welchs_interval_and_a_single_run_none(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed, acc in zip((10, 11, 12), (0.81, 0.82, 0.83), strict=True):
        make_run(root, "cosine", seed, [0.5, acc])
    for seed, acc in zip((20, 21), (0.84, 0.86), strict=True):
        make_run(root, "baseline", seed, [0.5, acc])
    make_run(root, "resnet34", 30, [0.5, 0.7])
    assert run_main(capsys, "report", str(root)).returncode == 0
    text = (root / "report.md").read_text()
    # Variances 1e-4 (n 3) and 2e-4 (n 2): s.e.^2 = 1e-4/3 + 2e-4/2, Welch-Satterthwaite gives
    # df = 1.684, t(0.975, 1.684) = 5.176: -3.00 ± 5.98 points.
    assert row(text, "cosine")[3] == "-3.00 [-8.98, +2.98] (means, n=3 vs 2)"
    assert row(text, "resnet34")[3] == "-15.00 (n=1 vs 2: no interval)"
    line = next(
        line
        for line in text.split("## Differences")[1].splitlines()
        if line.startswith("| `cosine` |")
    )
    assert "| 3 vs 2 runs | 1.68 | no |" in line


def test_time_is_compared_paired_only_for_runs_that_ran_next_to_each_other(tmp_path, capsys):
    """Interleaved runs (quick, wide, quick, wide, ...) give the median of the per-seed time
    ratios; a setting whose runs came long after the reference's gets the ratio of the medians,
    marked with how far apart they ran, because a machine's speed drifts in between."""

    def at(minute: float) -> str:  # summary.json's "finished", local time with its offset
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(1_800_000_000 + 60 * minute))

    root = tmp_path / "study"
    # Interleaved, 100 s runs back to back: quick/seed0 ends at minute 2, wide/seed0 at 4, ...
    for seed, (ref_s, wide_s) in enumerate([(100.0, 150.0), (110.0, 154.0), (105.0, 168.0)]):
        make_run(
            root,
            "quick",
            seed,
            [0.5, 0.8],
            folder="quick",
            train_time_s=ref_s,
            finished=at(4 * seed + 2),
        )
        make_run(
            root,
            "quick",
            seed,
            [0.5, 0.8],
            folder="wide",
            width=16,
            train_time_s=wide_s,
            finished=at(4 * seed + 4),
        )
    # Another setting run an hour later, one seed after the other.
    for seed, late_s in enumerate([90.0, 95.0, 99.0]):
        make_run(
            root,
            "quick",
            seed,
            [0.5, 0.8],
            folder="late",
            width=12,
            train_time_s=late_s,
            finished=at(60 + 2 * seed),
        )
    record_study(
        root, {"variants": {"wide": {"width": 16}, "late": {"width": 12}}, "runs": []}, {"pid": 1}
    )
    data = json.loads(
        run_main(capsys, "report", str(root), "--reference", "quick", "--json").stdout
    )
    by_label = {g["label"]: g for g in data["settings"]}
    wide, late = by_label["wide"]["time_vs_reference"], by_label["late"]["time_vs_reference"]
    assert (
        wide["paired"]
        and wide["n"] == 3
        and wide["ratio"] == pytest.approx(statistics.median([1.5, 1.4, 1.6]))
    )
    assert not late["paired"] and late["ratio"] == pytest.approx(95.0 / 105.0)
    # The largest start-to-start distance: seed 0, late started 3600 - 90 s, quick 120 - 100 s.
    assert late["apart_s"] == pytest.approx((3600 - 90) - (120 - 100))
    text = (root / "report.md").read_text()
    assert row(text, "wide")[8] == "1.50x (paired, n=3)"
    assert row(text, "late")[8] == "0.90x (medians; runs up to 58m10s apart)"
    assert row(text, "quick")[8] == "1.00x"
    assert "drift" in text
    # Seeds 0-2 far apart but seed 3 run beside the reference: that one pair says more than medians.
    make_run(root, "quick", 3, [0.5, 0.8], folder="quick", train_time_s=100.0, finished=at(70))
    make_run(
        root, "quick", 3, [0.5, 0.8], folder="late", width=12, train_time_s=80.0, finished=at(72)
    )
    mixed = json.loads(
        run_main(capsys, "report", str(root), "--reference", "quick", "--json").stdout
    )
    late = next(g for g in mixed["settings"] if g["label"] == "late")["time_vs_reference"]
    assert (
        late["paired"]
        and late["seeds"] == [3]
        and late["ratio"] == pytest.approx(0.8)
        and late["not_beside"] == 3
    )
    assert (
        row((root / "report.md").read_text(), "late")[8]
        == "0.80x (paired, n=1; 3 seed(s) not run beside it left out)"
    )
    # The accuracy-against-time plot places each setting where the table does.
    points = {p["label"]: (p["time"], p["paired"]) for p in time_accuracy_points(data)}
    assert points == {
        "quick": (1.0, True),
        "wide": (pytest.approx(1.5), True),
        "late": (pytest.approx(95 / 105), False),
    }
    assert "![final accuracy against time per setting](acc_vs_time.png)" in text


def test_runs_that_shared_their_cpu_are_marked_and_left_out_of_time_comparisons(tmp_path, capsys):
    """A run whose threads kept waiting for a CPU (another process on its cores) took longer
    for reasons that are not its setting's: its time is marked and not compared."""

    def at(minute: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(1_800_000_000 + 60 * minute))

    root = tmp_path / "study"
    for seed, (ref_s, wide_s, wait) in enumerate(
        [(100.0, 150.0, 0.01), (110.0, 560.0, 0.74), (105.0, 168.0, 0.02)]
    ):
        make_run(
            root,
            "quick",
            seed,
            [0.5, 0.8],
            folder="quick",
            train_time_s=ref_s,
            finished=at(12 * seed + 2),
            cpu_wait=0.01,
        )
        make_run(
            root,
            "quick",
            seed,
            [0.5, 0.8 + seed / 100],
            folder="wide",
            width=16,
            train_time_s=wide_s,
            finished=at(12 * seed + 5),
            cpu_wait=wait,
        )
    record_study(root, {"variants": {"wide": {"width": 16}}, "runs": []}, {"pid": 1})
    res = run_main(capsys, "report", str(root), "--reference", "quick")
    data = json.loads((root / "report.json").read_text())
    wide = next(g for g in data["settings"] if g["label"] == "wide")
    assert wide["shared_cpu"] == [{"run": "wide/seed1", "cpu_wait": 0.74}]
    comparison = wide["time_vs_reference"]
    assert comparison["paired"] and comparison["n"] == 2 and comparison["left_out"] == 1
    assert comparison["ratio"] == pytest.approx(statistics.median([1.5, 168.0 / 105.0]))
    assert wide["final_val_acc"]["n"] == 3, "its accuracy still counts"
    text = (root / "report.md").read_text()
    assert row(text, "wide")[7].endswith(" ‡") and not row(text, "quick")[7].endswith("‡")
    assert row(text, "wide")[8] == "1.55x (paired, n=2; 1 shared-CPU run(s) left out ‡)"
    assert "‡ Shared the CPU" in text and "wide/seed1 (0.74)" in text
    assert "‡ Shared the CPU" in res.stdout and "wide/seed1 (0.74)" in res.stdout
    # Every run of a setting shared its CPU: no time ratio at all, and it says why.
    for seed in range(3):
        make_run(
            root,
            "quick",
            seed,
            [0.5, 0.8],
            folder="busy",
            width=12,
            train_time_s=300.0,
            finished=at(12 * seed + 10),
            cpu_wait=0.9,
        )
    record_study(
        root, {"variants": {"wide": {"width": 16}, "busy": {"width": 12}}, "runs": []}, {"pid": 1}
    )
    run_main(capsys, "report", str(root), "--reference", "quick")
    assert row((root / "report.md").read_text(), "busy")[8] == "- (the runs shared the CPU ‡)"
    points = time_accuracy_points(json.loads((root / "report.json").read_text()))
    assert [p["label"] for p in points] == ["quick", "wide"], "no time to place busy at"


def test_several_studies_are_reported_as_one_and_a_seed_run_twice_counts_once(tmp_path, capsys):
    """Seeds 0-2 of a preset and its variant from one study, seeds 3-4 from a later one (which
    ran the preset's seed 0 again): one report over five seeds each, paired by seed."""

    def at(minute: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(1_800_000_000 + 60 * minute))

    first, later, out = tmp_path / "first", tmp_path / "later", tmp_path / "both"
    finals = {
        "quick": [0.860, 0.858, 0.862, 0.855, 0.861],
        "mu": [0.870, 0.861, 0.872, 0.866, 0.869],
    }
    # Each study interleaved, 100 s runs, 2 minutes apart; the later one five hours on, where a
    # third setting ("lr", seed 0 only) ran beside a new run of quick's seed 0.
    for root, start, seeds in ((first, 0, [0, 1, 2]), (later, 300, [0, 3, 4])):
        minute = start
        for seed in seeds:
            minute += 2
            make_run(
                root,
                "quick",
                seed,
                [0.5, finals["quick"][seed]],
                folder="quick",
                train_time_s=100.0,
                finished=at(minute),
            )
            minute += 2
            if root is first or seed > 0:
                make_run(
                    root,
                    "quick",
                    seed,
                    [0.5, finals["mu"][seed]],
                    folder="mu",
                    optimizer="muon",
                    train_time_s=150.0 + seed,
                    finished=at(minute),
                )
            else:
                make_run(
                    root,
                    "quick",
                    seed,
                    [0.5, 0.85],
                    folder="lr",
                    lr=0.4,
                    train_time_s=120.0,
                    finished=at(minute),
                )
        record_study(
            root,
            {"variants": {"mu": {"optimizer": "muon"}, "lr": {"lr": 0.4}}, "runs": []},
            {"pid": 1},
        )
    res = run_main(
        capsys, "report", str(first), str(later), "--out", str(out), "--reference", "quick"
    )
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "report.json").read_text())
    by_label = {g["label"]: g for g in data["settings"]}
    assert set(by_label) == {"quick", "mu", "lr"}
    for label in ("quick", "mu"):
        assert sorted(by_label[label]["seeds"]) == [0, 1, 2, 3, 4]
        assert by_label[label]["final_val_acc"]["mean"] == pytest.approx(
            statistics.mean(finals[label])
        )
    diff = by_label["mu"]["diff_vs_reference"]
    assert diff["paired"] and diff["n"] == 5
    assert diff["mean"] == pytest.approx(
        statistics.mean(m - q for m, q in zip(finals["mu"], finals["quick"], strict=True))
    )
    assert data["skipped"] == [
        {
            "run": f"{later}/quick/seed0",
            "reason": f"the same setting and seed as {first}/quick/seed0, counted once "
            "(its time still pairs with the runs beside it)",
        }
    ]
    # Times pair with the runs that ran beside them: mu's with each study's own quick runs, and
    # lr's (later study only) with the later run of quick's seed 0, not the one five hours before.
    assert (
        by_label["mu"]["time_vs_reference"]["paired"]
        and by_label["mu"]["time_vs_reference"]["n"] == 5
    )
    lr_time = by_label["lr"]["time_vs_reference"]
    assert lr_time["paired"] and lr_time["n"] == 1 and lr_time["ratio"] == pytest.approx(1.2)
    assert {r["run"] for r in data["runs"]} >= {f"{first}/mu/seed2", f"{later}/mu/seed4"}
    assert not (first / "report.md").exists() and not (later / "report.md").exists()
    assert (
        f"not counted: {later}/quick/seed0: the same setting and seed as {first}/quick/seed0"
        in res.stdout
    )
    assert by_label["quick"]["train_time_s"]["n"] == 5, (
        "a seed's time counted once in the setting's own times"
    )
    assert (out / "val_acc.png").read_bytes().startswith(
        PNG
    ) and f"wrote {out}/report.md" in res.stdout
    # Several folders and nowhere said to write: a one-line error, nothing written.
    res = run_main(capsys, "report", str(first), str(later))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "needs --out DIR" in res.stderr
    assert not (first / "report.md").exists()
    (tmp_path / "a_file").write_text("")
    res = run_main(capsys, "report", str(first), str(later), "--out", str(tmp_path / "a_file"))
    assert res.returncode == 2 and res.stderr.strip().endswith(
        "is a file, not a folder: pass a folder for the report"
    )


def test_of_a_seed_run_in_two_studies_the_finished_run_counts(tmp_path, capsys):
    first, later = tmp_path / "first", tmp_path / "later"
    make_run(first, "quick", 0, [0.5, 0.80], folder="quick")
    make_run(first, "quick", 1, [0.5], epochs=2, folder="quick", status="interrupted")
    make_run(later, "quick", 1, [0.5, 0.82], folder="quick")
    res = run_main(
        capsys, "report", str(first), str(later), "--out", str(tmp_path / "both"), "--json"
    )
    quick = json.loads(res.stdout)["settings"][0]
    assert sorted(quick["seeds"]) == [0, 1] and quick["final_val_acc"]["mean"] == pytest.approx(
        0.81
    )
    assert quick["unfinished"] == [], "the interrupted twin is not also listed as unfinished work"


def test_a_folder_that_cannot_be_read_as_a_run_is_named_not_dropped_silently(runs, capsys):
    stray = runs / "newer" / "seed0"
    stray.mkdir(parents=True)
    (stray / "config.json").write_text(
        json.dumps({"model": "resnet18", "a_field_from_the_future": 1})
    )
    res = run_main(capsys, "report", str(runs))
    assert res.returncode == 0, res.stderr
    assert (
        "not counted: newer/seed0: unknown config field(s): a_field_from_the_future" in res.stdout
    )
    text = (runs / "report.md").read_text()
    assert "## Folders not counted above" in text and "`newer/seed0`" in text
    data = json.loads((runs / "report.json").read_text())
    assert [k["run"] for k in data["skipped"]] == ["newer/seed0"] and len(data["runs"]) == 10


def test_without_a_reference_settings_are_placed_at_their_median_time(tmp_path, capsys):
    root = tmp_path / "study"
    for seed, (acc, seconds, wait) in enumerate(
        [(0.80, 100.0, 0.01), (0.82, 130.0, 0.01), (0.84, 110.0, 0.01), (0.82, 400.0, 0.8)]
    ):
        make_run(
            root, "quick", seed, [0.5, acc], folder="quick", train_time_s=seconds, cpu_wait=wait
        )
    assert run_main(capsys, "report", str(root)).returncode == 0
    data = json.loads((root / "report.json").read_text())
    assert data["reference"] is None
    [point] = time_accuracy_points(data)
    assert point["time"] == 110.0, "the median of the runs that had the CPU to themselves"
    assert not point["paired"] and point["n"] == 4
    assert point["acc"] == pytest.approx(82.0) and point["acc_sd"] == pytest.approx(
        100 * statistics.stdev([0.80, 0.82, 0.84, 0.82])
    )
    assert (root / "acc_vs_time.png").read_bytes()[:8] == PNG


def test_every_setting_of_an_interleaved_study_of_four_pairs_its_time(tmp_path, capsys):
    """`fastres ablate --interleave` with the preset and three variants runs each seed's four
    runs in a row: the last of them started three runs after the reference's, still beside it."""

    def at(second: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(1_800_000_000 + second))

    root, clock = tmp_path / "study", 0.0
    variants = {"a": {"width": 12}, "b": {"width": 16}, "c": {"width": 20}}
    for seed in range(3):
        for folder, seconds in (("quick", 100.0), ("a", 110.0), ("b", 120.0), ("c", 95.0)):
            clock += seconds + 5  # a few seconds of start-up between runs
            make_run(
                root,
                "quick",
                seed,
                [0.5, 0.8],
                folder=folder,
                train_time_s=seconds,
                finished=at(clock),
                **variants.get(folder, {}),
            )
    record_study(root, {"variants": variants, "runs": []}, {"pid": 1})
    data = json.loads(
        run_main(capsys, "report", str(root), "--reference", "quick", "--json").stdout
    )
    ratios = {g["label"]: g["time_vs_reference"] for g in data["settings"] if g["label"] != "quick"}
    assert {k: (v["paired"], v["n"], v["not_beside"]) for k, v in ratios.items()} == {
        "a": (True, 3, 0),
        "b": (True, 3, 0),
        "c": (True, 3, 0),
    }
    assert ratios["c"]["ratio"] == pytest.approx(0.95)


def test_report_says_which_split_each_accuracy_comes_from(tmp_path):
    root = tmp_path / "study"
    for seed, (held, best) in enumerate([(0.70, 0.72), (0.74, 0.75)]):
        path = make_run(root, "quick", seed, [0.5, 0.6, 0.71], val_split=5000)
        summary = json.loads((path / "summary.json").read_text())
        summary |= {
            "best_on": "val_split",
            "val_split": 5000,
            "val_split_acc": held,
            "best_val_split_acc": best,
            "best_epoch": 2,
        }
        (path / "summary.json").write_text(json.dumps(summary))
    make_run(root, "baseline", 0, [0.5, 0.6, 0.7])
    data = aggregate(root)
    quick = next(g for g in data["settings"] if g["preset"] == "quick")
    assert quick["val_split"] == [5000] and quick["best_val_split_acc"]["mean"] == pytest.approx(
        0.735
    )
    assert "best_val_split_acc" not in next(
        g for g in data["settings"] if g["preset"] == "baseline"
    )
    text = render_markdown(data)
    assert "held-out acc: final / best epoch" in text and "Splits: *val acc* columns" in text
    assert row(text, "quick")[5] == "72.00 ± 2.83 / 73.50 ± 2.12"
    assert row(text, "baseline")[5] == "-"
    assert "| held-out 72.00 (2) |" in text, (
        "a run's best epoch is named with the split that chose it"
    )


def test_setup_keeps_the_recipe_apart_from_the_machine(tmp_path, capsys):
    for seed in (42, 43):
        make_run(tmp_path, "baseline", seed, [0.5, 0.6], threads=1, data_dir="/data/cifar")
    res = run_main(capsys, "report", str(tmp_path))
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "report.md").read_text()
    assert "- Changes from each preset applied to every run: `width=8`, `epochs=2`." in text
    machine = next(line for line in text.splitlines() if line.startswith("- Machine settings"))
    assert "`threads=1`" in machine and "`data_dir=/data/cifar`" in machine
    assert "width" not in machine


def test_a_finished_run_that_did_not_learn_is_marked_at_chance(tmp_path, capsys):
    """A learning rate too high can leave the loss at ln 10 to the end without a NaN: the run
    finishes at 10%, and the report says so instead of averaging it in silently."""
    root = tmp_path / "sweep"
    make_run(root, "quick", 0, [0.30, 0.60], folder="lr0.4", lr=0.4)
    make_run(root, "quick", 0, [0.10, 0.1003], folder="lr0.8", lr=0.8)  # 10,000 test images
    make_run(root, "quick", 1, [0.12, 0.15], folder="lr0.8-small", lr=0.8, test_subset=100)
    res = run_main(capsys, "report", str(root))
    assert res.returncode == 0, res.stderr
    text = (root / "report.md").read_text()
    assert row(text, "quick (lr=0.8, test_subset=0)")[2] == "10.03 ± n/a §"
    assert row(text, "quick (lr=0.4, test_subset=0)")[2] == "60.00 ± n/a"
    # 15% of 100 test images is within three binomial standard errors (3.0 points) of 10%.
    assert row(text, "quick (lr=0.8, test_subset=100)")[2] == "15.00 ± n/a §"
    assert "| `lr0.8/seed0` | 0 | completed | 2/2 | 10.03 § |" in text  # the runs' table
    note = next(line for line in text.splitlines() if line.startswith("§ At chance"))
    assert "lr0.8/seed0" in note and "lr0.8-small/seed1" in note and "lr0.4" not in note
    assert "§ At chance" in res.stdout  # the terminal's table says it too
    data = json.loads((root / "report.json").read_text())
    assert {r["run"]: r["at_chance"] for r in data["runs"]} == {
        "lr0.4/seed0": False,
        "lr0.8/seed0": True,
        "lr0.8-small/seed1": True,
    }
