"""A new launcher is one module and one registry line (docs/studies.md, "A launcher of your
own"): a toy one, registered the documented way, runs a real tiny study through
``fastres.study.run_study`` and through ``fastres ablate --launcher``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence

import pytest

from fastres.errors import FastresError
from fastres.rundir import RunDir
from fastres.study import (
    LAUNCHERS,
    Launch,
    Launcher,
    Outcome,
    PlannedRun,
    StudyRequest,
    describe_plan,
    record,
    register,
    run_study,
)
from fastres.study.launcher import write_study_report

from .conftest import run_main

# 2 settings x 1 seed, one epoch of 500 images each from the in-memory loader: seconds a run.
TINY = {
    "width": 8,
    "batch_size": 100,
    "epochs": 1,
    "train_subset": 500,
    "test_subset": 100,
    "loader": "memory",
    "threads": 1,
}


class OneByOne(Launcher):
    """Runs each planned run's ``fastres train`` command in turn, as a job scheduler would run
    the lines of ``--dry-run``."""

    name = "one-by-one"
    help = "one-by-one: each run's command in turn (a test's launcher)"

    def dry_run(self, runs: Sequence[PlannedRun], out: str, options: object) -> list[str]:
        return [f"# one-by-one: {run.shell()}" for run in runs]

    def launch(self, launch: Launch) -> Outcome:
        record(launch.out, launch.runs, **launch.study, launcher=self.name)
        launch.log(f"ablation in {launch.out}: {describe_plan(launch.runs)}; launcher {self.name}")
        launch.on_start()
        failed = []
        for run in (r for r in launch.runs if r.runs_here):
            done = subprocess.run(run.command, capture_output=True, text=True, timeout=300)
            launch.log(f"{run.name}: exit {done.returncode}")
            if done.returncode != 0:
                failed.append(f"{run.name}: {done.stderr.strip().splitlines()[-1:]}")
        write_study_report(launch.out, launch.reference, launch.log)
        if failed:
            return Outcome(problems=failed, error=f"{len(failed)} run(s) failed", exit_code=1)
        return Outcome(summary=f"ablation finished: {len(launch.runs)} run(s) one by one")


@pytest.fixture
def one_by_one(synthetic_source, monkeypatch):
    """The toy launcher in the registry (and the synthetic source for --loader memory)."""
    monkeypatch.setenv("FASTRES_CIFAR10", str(synthetic_source))
    yield register(OneByOne())
    LAUNCHERS.pop(OneByOne.name, None)


def test_a_registered_launcher_runs_a_real_study(one_by_one, synthetic_data, tmp_path):
    out = tmp_path / "study"
    lines: list[str] = []
    started: list[bool] = []
    request = StudyRequest(
        presets=["baseline"],
        variants={"ema": {"ema": 0.9}},
        seeds=1,
        seed=0,
        overrides={**TINY, "data_dir": str(synthetic_data)},
        out=str(out),
        launcher="one-by-one",
    )
    result = run_study(request, log=lines.append, on_start=lambda: started.append(True))
    result.raise_for_failure()
    assert result.launcher == "one-by-one" and started == [True]
    assert result.outcome.summary == "ablation finished: 2 run(s) one by one"
    assert f"ablation in {out}: 2 run(s) (2 setting(s) x 1 seed(s)): 2 to train" in lines[0]
    for folder in ("baseline/seed0", "ema/seed0"):
        assert RunDir(out / folder).state() == "completed", folder
    study = json.loads((out / "study.json").read_text())
    assert study["launcher"] == "one-by-one" and study["variants"] == {"ema": {"ema": 0.9}}
    assert [r["run_dir"] for r in study["runs"]] == ["baseline/seed0", "ema/seed0"]
    report = json.loads((out / "report.json").read_text())
    assert {g["label"] for g in report["settings"]} == {"baseline", "ema"}
    assert report["reference"] == "baseline", "a study of variants compares them with their preset"
    assert any(line.startswith(f"report: {out}/report.md") for line in lines), lines


def test_the_cli_offers_every_registered_launcher(one_by_one, synthetic_data, tmp_path, capsys):
    out = tmp_path / "study"
    res = run_main(
        capsys,
        "ablate",
        "--config",
        "quick",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--launcher",
        "one-by-one",
        "--dry-run",
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("# one-by-one: ") for line in lines)
    assert lines[1].endswith(str(out / "quick" / "seed43"))
    # A launcher that takes no scheduler option refuses one, as the local one does.
    res = run_main(
        capsys,
        "ablate",
        "--config",
        "quick",
        "--out",
        str(out),
        "--launcher",
        "one-by-one",
        "--partition",
        "gpu",
    )
    assert res.returncode == 2 and "--partition is a scheduler option" in res.stderr
    LAUNCHERS.pop(OneByOne.name)
    res = run_main(capsys, "ablate", "--config", "quick", "--launcher", "one-by-one", "--dry-run")
    assert res.returncode == 2 and "invalid choice: 'one-by-one'" in res.stderr


def test_an_unknown_launcher_is_refused_by_the_api(tmp_path):
    with pytest.raises(FastresError, match="unknown launcher 'nope': choose one of local, slurm"):
        run_study(StudyRequest(presets=["quick"], out=str(tmp_path), launcher="nope"))
    with pytest.raises(ValueError, match="has no name"):
        register(type("Nameless", (OneByOne,), {"name": ""})())
