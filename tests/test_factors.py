"""``fastres ablate --base``: the original study's settings on any base, their rules, bad input,
and ``--dry-run``'s projected time from finished runs."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from fastres.presets import get_preset
from fastres.study import factors

from .conftest import REPO, run_cli, run_main
from .test_report import make_run, row


def options(line: str) -> dict[str, str]:
    """A dry-run command's options (flag -> value; a switch -> "")."""
    words = shlex.split(line)[3:]  # after python -m fastres
    out, i = {}, 1
    while i < len(words):
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            out[words[i]], i = words[i + 1], i + 2
        else:
            out[words[i]], i = "", i + 1
    return out


def test_each_setting_is_the_base_plus_exactly_its_change(tmp_path, capsys):
    out = tmp_path / "study"
    res = run_main(
        capsys, "ablate", "--all", "--base", "quick", "--seeds", "2", "--dry-run", "--out", str(out)
    )
    assert res.returncode == 0, res.stderr
    commands = {}
    for line in res.stdout.splitlines():
        opts = options(line)
        commands[(Path(opts.pop("--run-dir")).parent.name, opts.pop("--seed"))] = opts
    assert len(commands) == 14 and not out.exists(), "7 settings x 2 seeds, nothing written"
    base = {"--preset": "quick"}
    assert commands[("quick", "42")] == commands[("quick", "43")] == base
    # quick: lr 0.8 at batch 256, linear schedule, BatchNorm, ResNet-18.
    assert commands[("cosine", "42")] == base | {"--lr-schedule": "cosine"}
    assert commands[("no_schedule", "43")] == base | {"--lr-schedule": "none"}
    assert commands[("resnet34", "42")] == base | {"--model": "resnet34"}
    assert commands[("resnet50", "42")] == base | {"--model": "resnet50"}
    assert commands[("no_batchnorm", "42")] == base | {"--norm": "none", "--lr": "0.4"}, (
        "quick's cap: 0.4"
    )
    assert commands[("small_batch", "42")] == base | {"--batch-size": "32", "--lr": "0.1"}, (
        "0.8 x 32/256"
    )
    # --dry-run and --list say what each changes on this base, and the rules.
    assert (
        "#   small_batch   batch_size 256 -> 32, lr 0.8 -> 0.1 (rule: every learning rate"
        in res.stderr
    )
    assert "projected" not in res.stderr, "no finished run to project from, and none asked for"
    listing = run_main(capsys, "ablate", "--list", "--base", "quick").stdout
    assert (
        "no_batchnorm  norm batch -> none, lr 0.8 -> 0.4 (rule: the base's lr, capped at the "
        "largest" in listing
    )
    assert "quick 0.4; other bases 0.01" in listing
    # On baseline the cap is the original study's 0.01: the setting is the no_batchnorm preset.
    assert factors.setting_changes("no_batchnorm", get_preset("baseline")) == {
        "norm": "none",
        "lr": 0.01,
    }


def test_overrides_change_the_base_and_the_rules_follow_it(tmp_path, capsys):
    res = run_main(
        capsys,
        "ablate",
        "--config",
        "small_batch",
        "no_bn",
        "--base",
        "quick",
        "--batch-size",
        "64",
        "--lr",
        "0.004",
        "--dry-run",
        "--out",
        str(tmp_path / "s"),
    )
    assert res.returncode == 0, res.stderr
    by_setting = {
        Path(options(line)["--run-dir"]).parent.name: options(line)
        for line in res.stdout.splitlines()
    }
    assert set(by_setting) == {"quick", "small_batch", "no_batchnorm"}
    assert by_setting["small_batch"]["--lr"] == "0.002", "0.004 x 32/64"
    assert by_setting["no_batchnorm"]["--lr"] == "0.004", "below the cap: kept"
    # Muon's filters follow the batch rule too: fast is batch 512, lr 0.4, muon_lr 0.05.
    change = factors.setting_changes("small_batch", get_preset("fast"))
    assert change == {
        "batch_size": 32,
        "lr": pytest.approx(0.025),
        "muon_lr": pytest.approx(0.003125),
    }


def test_a_config_file_base_gives_its_recipe_not_its_seed_or_machine(tmp_path, capsys):
    config = get_preset("quick").replace(
        epochs=4, ema=0.9, seed=7, data_dir="/elsewhere", threads=3, run_dir="/old/run"
    )
    # A config file kept apart from the study's folder (a folder holding config.json is a run,
    # and a study inside a run is refused).
    path = tmp_path / "recorded" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config.to_dict()))
    base = factors.resolve_base(str(path))
    assert base.preset == "quick" and base.changes == {"epochs": 4, "ema": 0.9}
    res = run_main(
        capsys,
        "ablate",
        "--config",
        "cosine",
        "--base",
        str(path),
        "--dry-run",
        "--out",
        str(tmp_path / "s"),
    )
    assert res.returncode == 0, res.stderr
    lines = [options(line) for line in res.stdout.splitlines()]
    for opts in lines:
        opts.pop("--run-dir")
    assert lines[1] == lines[0] | {"--lr-schedule": "cosine"}
    assert (
        lines[0]["--epochs"] == "4" and lines[0]["--ema"] == "0.9" and "--data-dir" not in lines[0]
    )
    assert lines[0]["--seed"] == "42", "the study's seeds, not the file's"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--all", "--base", "nope"], "--base 'nope' is neither a preset"),
        (["--all", "--base", "{bad}"], "--base {bad}: cannot read config file"),
        (
            ["--all", "--base", "quick", "--norm", "none"],
            "setting no_batchnorm cannot apply to --base quick: its norm is already none",
        ),
        (["--all", "--base", "cosine"], "setting cosine cannot apply to --base cosine"),
        (
            ["--config", "cosine", "--base", "quick", "--lr-schedule", "cosine"],
            "setting cosine cannot apply",
        ),
        (["--config", "fast", "--base", "quick"], "'fast' is not a setting of the original study"),
        (["--base", "quick"], "--base quick needs the settings to run on it"),
        (["--all", "--base", "quick", "--variant", "e:--ema 0.9"], "drop --variant"),
        (
            ["--all", "--base", "quick", "--times-from", "{out}"],
            "--times-from projects a study's time for --dry-run",
        ),
        (
            ["--all", "--base", "quick", "--dry-run", "--times-from", "{missing}"],
            "--times-from {missing}: no such",
        ),
    ],
)
def test_bad_base_input_is_one_line_and_nothing_starts(tmp_path, capsys, args, message):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    out = tmp_path / "out"
    fill = {"bad": str(bad), "out": str(out), "missing": str(tmp_path / "missing")}
    args = [a.format(**fill) for a in args]
    res = run_main(capsys, "ablate", *args, "--out", str(out))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and message.format(**fill) in res.stderr, res.stderr
    assert not res.stdout and not out.exists()


def test_a_base_studys_report_names_its_settings_rules_and_original_numbers(tmp_path, capsys):
    root = tmp_path / "study"
    for seed in (0, 1):
        make_run(root, "baseline", seed, [0.5] * 99 + [0.90 + seed / 100], folder="baseline")
        make_run(
            root,
            "baseline",
            seed,
            [0.5] * 99 + [0.88 + seed / 100],
            folder="small_batch",
            batch_size=32,
            lr=0.025,
        )
    variants = factors.study_variants(get_preset("baseline"), ["small_batch"])
    record = {
        "variants": variants,
        "rules": {"small_batch": factors.RULES["small_batch"]},
        "runs": [],
    }
    (root / "study.json").write_text(
        json.dumps({"format": "fastres-study", "version": 1, **record, "launches": [{"pid": 1}]})
    )
    assert run_main(capsys, "report", str(root), "--reference", "baseline").returncode == 0
    text = (root / "report.md").read_text()
    assert "Rules (`fastres ablate --base`): `small_batch`: every learning rate of the base" in text
    # The original study's column follows the setting (88.4 with batch 32), not the base's preset.
    assert row(text, "small_batch")[-1] == "88.4" and row(text, "baseline")[-1] == "93.9"


def finished(
    root: Path, setting: str, seed: int, seconds: float, epochs: int = 6, **changes
) -> None:
    """A finished run of ``quick`` with ``changes`` that trained ``seconds`` over ``epochs``."""
    make_run(
        root,
        "quick",
        seed,
        [0.5] * epochs,
        folder=setting,
        train_time_s=seconds,
        width=16,
        **changes,
    )


def test_dry_run_projects_the_training_time_from_finished_runs(tmp_path, capsys):
    measured = tmp_path / "measured"
    finished(measured, "quick", 1, 60.0)  # 10 s an epoch: also cosine's and no_schedule's cost
    finished(measured, "quick", 2, 84.0)  # 14 s: the median of 10 and 14 is 12
    finished(measured, "resnet50", 1, 90.0, epochs=3, model="resnet50")  # 30 s an epoch
    finished(
        measured, "resnet34", 1, 10.0, model="resnet34", cpu_wait=1.5
    )  # shared its CPU: not a measurement
    res = run_main(
        capsys,
        "ablate",
        "--all",
        "--base",
        "quick",
        "--seeds",
        "2",
        "--dry-run",
        "--runs-per-device",
        "2",
        "--out",
        str(tmp_path / "s"),
        "--times-from",
        str(measured),
    )
    assert res.returncode == 0, res.stderr
    # quick, cosine, no_schedule: 3 settings x 2 seeds x 6 epochs x 12 s = 432 s;
    # resnet50: 2 x 6 x 30 s = 360 s.
    assert (
        "# projected training time for 8 of the 14 runs to train: 13m12s one after another; 2 at a "
        "time, "
        "about 6m36s if each keeps the speed it was measured at"
    ) in res.stderr, res.stderr
    assert "from 3 finished run(s) below " + str(measured) + ", on TestCPU" in res.stderr
    assert "no finished run of resnet34, no_batchnorm, small_batch" in res.stderr
    assert len(res.stdout.splitlines()) == 14, "the commands are unchanged"
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_main(
        capsys,
        "ablate",
        "--all",
        "--base",
        "quick",
        "--dry-run",
        "--out",
        str(tmp_path / "s"),
        "--times-from",
        str(empty),
    )
    assert (
        "# projected time: no finished runs that had their CPU to themselves found below "
        f"{empty} to project from"
    ) in res.stderr


def test_a_base_study_trains_its_settings_and_reports_them_with_the_rule(
    synthetic_data, synthetic_source, tmp_path, monkeypatch
):
    monkeypatch.setenv("FASTRES_CIFAR10", str(synthetic_source))  # what --loader memory reads
    out = tmp_path / "study"
    tiny = [
        "--width",
        "8",
        "--batch-size",
        "64",
        "--epochs",
        "1",
        "--train-subset",
        "256",
        "--test-subset",
        "100",
        "--lr",
        "0.08",
        "--loader",
        "memory",
        "--device",
        "cpu",
        "--data-dir",
        str(synthetic_data),
    ]
    res = run_cli(
        "ablate",
        "--config",
        "small_batch",
        "--base",
        "baseline",
        *tiny,
        "--out",
        str(out),
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    config = json.loads((out / "small_batch" / "seed42" / "config.json").read_text())
    assert (config["batch_size"], config["lr"], config["width"]) == (32, pytest.approx(0.04), 8), (
        "0.08 x 32/64"
    )
    assert json.loads((out / "baseline" / "seed42" / "config.json").read_text())["batch_size"] == 64
    assert json.loads((out / "study.json").read_text())["rules"] == {
        "small_batch": factors.RULES["small_batch"]
    }
    text = (out / "report.md").read_text()
    assert row(text, "small_batch")[1] == "1" and "Δ final vs baseline" in text
    assert "`small_batch`: every learning rate of the base" in text
