"""Checkpoints, exact resume, interruption, divergence and determinism."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastres import TrainConfig, train
from fastres.augment import BatchAugment
from fastres.checkpoint import load as load_checkpoint
from fastres.errors import FastresError
from fastres.prepare import BETONS, MANIFEST
from fastres.rundir import TIMING_KEYS, RunDir
from fastres.train import TrainingDiverged

from .conftest import REPO, run_cli, run_main

# Long enough epochs (40 steps) that a signal sent after epoch 1 lands inside epoch 2.
RECIPE = [
    "--width",
    "8",
    "--batch-size",
    "50",
    "--epochs",
    "3",
    "--lr",
    "0.05",
    "--lr-schedule",
    "cosine",
    "--deterministic",
    "--no-progress",
]


def metrics_without_timing(run_dir):
    return [
        {k: v for k, v in row.items() if k not in TIMING_KEYS}
        for row in RunDir(run_dir).read_metrics()
    ]


def weights(run_dir):
    return load_checkpoint(RunDir(run_dir).last_checkpoint)["model"]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"


@pytest.fixture(scope="module")
def reference_run(synthetic_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    res = run_cli("train", *RECIPE, "--data-dir", str(synthetic_data), "--run-dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    return run_dir


# SIGUSR2 (or SIGUSR1) is what Slurm sends ahead of a time limit or preemption.
# Twice: Slurm signals every process of the job step, and the launcher passes its signal on too.
# Each signal stops the run the same way; the resume, the same code after any of them, is run
# after the hardest case (a second signal landing while the first one's checkpoint is written).
@pytest.mark.parametrize(
    "sig,code,times,resume",
    [
        (signal.SIGINT, 130, 1, False),
        (signal.SIGTERM, 143, 1, False),
        (signal.SIGUSR2, 140, 1, False),
        (signal.SIGUSR2, 140, 2, True),
    ],
)
def test_signal_mid_epoch_stops_cleanly_and_the_resume_is_bit_identical(
    synthetic_data, reference_run, tmp_path, sig, code, times, resume
):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "fastres",
        "train",
        *RECIPE,
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(run_dir),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    deadline = time.monotonic() + 120
    while (
        not (run_dir / "metrics.jsonl").exists()
        or not (run_dir / "metrics.jsonl").read_text().strip()
    ):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2
    for _ in range(times):
        proc.send_signal(sig)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert f"fastres train --resume {run_dir}" in err and "interrupted after epoch 1/3" in err
    assert RunDir(run_dir).read_summary()["status"] == "interrupted"
    first = load_checkpoint(RunDir(run_dir).last_checkpoint)
    assert first["epoch"] == 1
    # The checkpoint knows how long the run had trained: epoch 1 and the start before it.
    epoch1_s = RunDir(run_dir).read_metrics()[0]["epoch_time_s"]
    assert epoch1_s < first["train_time_s"] < RunDir(run_dir).read_summary()["train_time_s"]
    if not resume:
        return

    res = run_cli("train", "--resume", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stdout
    assert metrics_without_timing(run_dir) == metrics_without_timing(reference_run)
    assert_same_weights(run_dir, reference_run)
    summary = RunDir(run_dir).read_summary()
    assert summary["status"] == "completed" and summary["epochs"] == 3
    # train_time_s is the whole run's, not only the resuming call's: the time up to epoch 1's
    # checkpoint plus epochs 2 and 3 (the part of epoch 2 lost to the signal is not counted).
    later_epochs_s = sum(r["epoch_time_s"] for r in RunDir(run_dir).read_metrics()[1:])
    assert summary["train_time_s"] >= first["train_time_s"] + later_epochs_s


def test_deterministic_runs_are_identical(synthetic_data, reference_run, tmp_path):
    res = run_cli(
        "train", *RECIPE, "--data-dir", str(synthetic_data), "--run-dir", str(tmp_path / "again")
    )
    assert res.returncode == 0, res.stderr
    assert metrics_without_timing(tmp_path / "again") == metrics_without_timing(reference_run)
    assert_same_weights(tmp_path / "again", reference_run)


def test_checkpoint_is_complete_and_loads_without_code_execution(reference_run):
    state = torch.load(RunDir(reference_run).last_checkpoint, weights_only=True)
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
        "config",
        "epoch",
        "best_val_acc",
    ):
        assert key in state
    assert not any(k.startswith("_orig_mod.") for k in state["model"])
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert TrainConfig.from_dict(state["config"]).width == 8
    best = torch.load(RunDir(reference_run).best_checkpoint, weights_only=True)
    assert best["epoch"] == json.loads((reference_run / "summary.json").read_text())["best_epoch"]


def test_resume_refuses_a_different_recipe_and_reports_machine_changes(
    reference_run, tmp_path, capsys
):
    res = run_main(
        capsys, "train", "--resume", str(reference_run), "--lr", "0.5", "--batch-size", "64"
    )
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "different recipe" in res.stderr and "lr (0.05 recorded, 0.5 given)" in res.stderr
    assert "batch_size (50 recorded, 64 given)" in res.stderr
    res = run_cli("train", "--resume", str(reference_run), "--num-workers", "2")
    assert res.returncode == 0, res.stderr
    assert "machine settings changed: num_workers 0 -> 2" in res.stdout


def test_damaged_checkpoints_are_refused(reference_run, tmp_path, capsys):
    import shutil

    run_dir = shutil.copytree(reference_run, tmp_path / "run")
    last = RunDir(run_dir).last_checkpoint
    last.write_bytes(last.read_bytes()[:5000])
    # eval runs in this process: it stops at the checkpoint, before any data is read.
    for res in (run_cli("train", "--resume", str(run_dir)), run_main(capsys, "eval", str(run_dir))):
        assert res.returncode != 0 and "Traceback" not in res.stderr
        assert "is truncated or not a fastres checkpoint" in res.stderr
    torch.save({"weights": torch.zeros(3)}, last)
    res = run_main(capsys, "eval", str(run_dir))
    assert res.returncode != 0 and "is not a fastres checkpoint" in res.stderr


def test_divergence_stops_with_a_clear_message(synthetic_data, tmp_path):
    run_dir = tmp_path / "run"
    res = run_cli(
        "train",
        "--width",
        "8",
        "--batch-size",
        "100",
        "--epochs",
        "2",
        "--norm",
        "none",
        "--lr",
        "1000",
        "--lr-schedule",
        "none",
        "--precision",
        "fp32",
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    )
    assert res.returncode == 3
    assert "Traceback" not in res.stderr
    line = res.stderr.strip()
    assert "training diverged: non-finite loss at epoch 1, step" in line
    assert "lr 1000" in line and "--lr" in line and "BatchNorm" in line
    assert RunDir(run_dir).read_summary()["status"] == "diverged"
    assert RunDir(run_dir).read_metrics() == []


def test_divergence_keeps_the_last_good_checkpoint(synthetic_data, tmp_path, monkeypatch):
    original = BatchAugment.train
    calls = {"n": 0}

    def poisoned(self, images, size=None, indices=None):
        calls["n"] += 1
        x = original(self, images, size, indices)
        return (
            x * float("nan") if calls["n"] > 20 + 3 else x
        )  # 20 steps per epoch: NaN in epoch 2, step 4

    monkeypatch.setattr(BatchAugment, "train", poisoned)
    cfg = TrainConfig(
        width=8,
        batch_size=100,
        epochs=3,
        lr=0.05,
        data_dir=str(synthetic_data),
        run_dir=str(tmp_path / "run"),
        precision="fp32",
    )
    with pytest.raises(TrainingDiverged, match="epoch 2, step 4"):
        train(cfg, log=lambda m: None, progress=False)
    run = RunDir(tmp_path / "run")
    assert [r["epoch"] for r in run.read_metrics()] == [1]
    assert load_checkpoint(run.last_checkpoint)["epoch"] == 1
    assert run.read_summary()["status"] == "diverged"


@pytest.mark.realdata
def test_prepare_data_killed_mid_write_is_never_accepted_and_is_repaired(
    real_source, tmp_path, capsys
):
    data_dir = tmp_path / "data"
    cmd = [
        sys.executable,
        "-m",
        "fastres",
        "prepare-data",
        "--source",
        str(real_source),
        "--data-dir",
        str(data_dir),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    for line in proc.stdout:
        if "writing" in line:
            break
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group, FFCV's writer processes included
    proc.wait()
    assert not (data_dir / MANIFEST).exists()
    res = run_main(
        capsys,
        "train",
        "--width",
        "8",
        "--epochs",
        "1",
        "--data-dir",
        str(data_dir),
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert res.returncode != 0 and "prepare-data" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("prepare-data", "--source", str(real_source), "--data-dir", str(data_dir))
    assert res.returncode == 0, res.stderr
    from fastres.prepare import verify_betons

    manifest = verify_betons(data_dir)
    assert manifest["files"]["train"]["count"] == 50_000
    assert sorted(
        p.name for p in data_dir.iterdir() if "tmp" in p.name or not p.name.startswith(".")
    ) == sorted([*BETONS.values(), MANIFEST]), "no temporary file is left behind"


def test_api_refuses_existing_run_dir(reference_run):
    cfg = TrainConfig.from_dict(json.loads((reference_run / "config.json").read_text()))
    with pytest.raises(FastresError, match="already holds a run"):
        train(cfg, log=lambda m: None)
