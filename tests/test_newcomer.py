"""What a newcomer is told: a CPU about to train for hours says so first, and a run ends by
naming what to do next, with commands that work after the README's set-up."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import fastres.train  # noqa: F401  (the module whose train() a test replaces)
from fastres.cli import runs as cli
from fastres.presets import get_preset

from .conftest import run_main

TINY = [
    "--width",
    "8",
    "--batch-size",
    "100",
    "--epochs",
    "1",
    "--train-subset",
    "500",
    "--test-subset",
    "100",
    "--no-progress",
]


@pytest.fixture
def on_cpu(monkeypatch):
    monkeypatch.setattr(cli, "_cuda_available", lambda: False)


def test_a_run_of_hours_on_the_cpu_says_so_and_names_quick(on_cpu):
    note = cli._cpu_hours_note(get_preset("baseline").replace(threads=2))
    assert note is not None and "hours" in note and "--preset quick" in note and "\n" not in note
    assert cli._cpu_hours_note(get_preset("quick").replace(threads=2)) is None
    assert cli._cpu_hours_note(get_preset("baseline").replace(threads=2, device="cuda")) is None


def test_a_bare_train_on_the_cpu_warns_before_it_starts_and_still_trains(
    on_cpu, monkeypatch, tmp_path, capsys
):
    seen = {}

    def fake_train(config, *, log, progress, resume):
        seen["config"] = config
        log("training")
        return {"run_dir": str(tmp_path / "run")}

    monkeypatch.setattr(sys.modules["fastres.train"], "train", fake_train)
    res = run_main(capsys, "train", "--threads", "2", "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "takes hours" in lines[0] and "--preset quick" in lines[0], lines
    assert lines[1] == "training"
    assert (
        seen["config"].preset == "baseline" and seen["config"].epochs == 200
    )  # not blocked, not changed


def test_a_finished_run_names_eval_report_and_one_tensorboard_command(
    synthetic_data, tmp_path, capsys
):
    run_dir = tmp_path / "runs" / "tiny"
    res = run_main(
        capsys,
        "train",
        "--preset",
        "cosine",
        *TINY,
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(run_dir),
    )
    assert res.returncode == 0, res.stderr
    assert "takes hours" not in res.stdout
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("next: "), res.stdout
    fastres = cli._command("fastres")
    assert f"{fastres} eval {run_dir}" in last and f"{fastres} report {run_dir.parent}" in last
    assert res.stdout.count("--logdir") == 1 and f"--logdir {run_dir / 'tensorboard'}" in last


def test_commands_are_named_so_that_they_run_after_the_set_up(monkeypatch, tmp_path):
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "tensorboard"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the virtualenv not activated: its path
    assert cli._command("tensorboard") == str(Path(".venv/bin/tensorboard"))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")  # activated: the bare name
    assert cli._command("tensorboard") == "tensorboard"
    assert cli._command("not-installed-here") == "not-installed-here"


def test_a_run_of_a_study_names_the_study_s_report(tmp_path):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.json").write_text("{}")
    assert " report " + str(tmp_path / "study") + " " in cli._next_steps(
        str(tmp_path / "study" / "quick" / "seed0")
    )
    assert " report " + str(tmp_path / "runs") + " " in cli._next_steps(
        str(tmp_path / "runs" / "quick-1")
    )


def test_under_torchrun_only_rank_0_speaks(on_cpu, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(
        sys.modules["fastres.train"], "train", lambda config, **_: {"run_dir": str(tmp_path / "r")}
    )
    for rank, expected in (("1", 0), ("0", 1)):
        monkeypatch.setenv("RANK", rank)
        res = run_main(capsys, "train", "--threads", "1", "--run-dir", str(tmp_path / "r"))
        assert res.returncode == 0, res.stderr
        assert (
            res.stdout.count("next: ") == expected and res.stdout.count("takes hours") == expected
        ), res.stdout
