"""Runs written by earlier fastres versions keep working: resume and eval of a stored run."""

from __future__ import annotations

import json
import shutil

from fastres.rundir import RunDir

from .conftest import REPO, run_cli, run_main

OLD_RUN = REPO / "tests" / "data" / "run-ae4ee19"


def test_a_run_written_before_the_layered_package_resumes_and_evaluates(
    tmp_path, synthetic_data, capsys
):
    run = tmp_path / "old run"
    shutil.copytree(OLD_RUN, run)
    before = RunDir(run).read_metrics()
    assert [r["epoch"] for r in before] == [1] and RunDir(run).state() == "interrupted"

    res = run_cli(
        "train", "--resume", str(run), "--data-dir", str(synthetic_data), "--num-workers", "1"
    )
    assert res.returncode == 0, res.stderr
    assert "resuming " in res.stdout and "after epoch 1/3" in res.stdout
    # Its checkpoints predate checksums: they load unverified, and the run says so once.
    assert res.stdout.count("was written before fastres stored checksums; it loads unverified") == 1
    rows = RunDir(run).read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0] == before[0], "the recorded epoch is kept as it was"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 3
    # Its checkpoint predates the stored training time: the recorded epoch's own time counts.
    assert summary["train_time_s"] >= sum(r["epoch_time_s"] for r in rows)

    res = run_main(capsys, "eval", str(run), "--data-dir", str(synthetic_data), "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["epoch"] == 3 and result["acc"] == rows[-1]["val_acc"]
