"""Data-parallel training under torchrun, on CPU with Gloo (two processes)."""

import re
import signal
import subprocess
import sys
import time

import torch

from fastres.checkpoint import load as load_checkpoint
from fastres.models import build_model
from fastres.rundir import RunDir
from fastres.runtime import seed_everything

from .conftest import IN_MEMORY, REPO, run_cli

TINY = [
    "--width",
    "8",
    "--batch-size",
    "100",
    "--lr",
    "0.05",
    "--lr-schedule",
    "cosine",
    "--no-progress",
]


def torchrun(*args, nproc=2, script=("-m", "fastres"), timeout=300, **popen):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--standalone",
        *script,
        *args,
    ]
    if popen:
        return subprocess.Popen(
            cmd, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen
        )
    return subprocess.run(cmd, cwd=REPO, text=True, capture_output=True, timeout=timeout)


def rank_hashes(output):
    return dict(re.findall(r"rank (\d+)/2: parameters sha256 (\w+(?:, averaged \w+)?)", output))


def test_two_process_run_agrees_logs_once_and_counts_each_test_image_once(synthetic_data, tmp_path):
    run_dir = tmp_path / "ddp"
    res = torchrun(
        "train",
        *TINY,
        "--epochs",
        "2",
        "--ema",
        "0.9",
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(run_dir),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    hashes = rank_hashes(out)
    assert set(hashes) == {"0", "1"} and len(set(hashes.values())) == 1, out
    assert all(", averaged " in h for h in hashes.values()), "the weight averages agree too"
    assert out.count("epoch 2/2") == 1, "only rank 0 logs"
    run = RunDir(run_dir)
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["val_images"] == 300 for r in rows), "every test image counted exactly once"
    assert len(list(run.tensorboard.glob("events.out.tfevents.*"))) == 1
    summary = run.read_summary()
    assert summary["world_size"] == 2 and summary["status"] == "completed"
    assert not any(
        k.startswith(("module.", "_orig_mod."))
        for k in load_checkpoint(run.last_checkpoint)["model"]
    )


def test_two_processes_at_batch_b_equal_one_process_at_batch_b(synthetic_data, tmp_path):
    recipe = [
        "--width",
        "8",
        "--batch-size",
        "100",
        "--epochs",
        "1",
        "--lr",
        "0.05",
        "--norm",
        "none",
        "--precision",
        "fp32",
        "--no-shuffle",
        "--no-augment",
        "--no-progress",
        "--data-dir",
        str(synthetic_data),
    ]
    single = run_cli("train", *recipe, "--run-dir", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    double = torchrun("train", *recipe, "--run-dir", str(tmp_path / "two"))
    assert double.returncode == 0, double.stdout + double.stderr
    one = load_checkpoint(RunDir(tmp_path / "one").last_checkpoint)["model"]
    two = load_checkpoint(RunDir(tmp_path / "two").last_checkpoint)["model"]
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5)
    seed_everything(42)
    init = build_model("resnet18", norm="none", width=8).state_dict()
    assert max(float((one[k] - init[k]).abs().max()) for k in one) > 1e-3, (
        "training must have moved the weights"
    )


def test_resume_across_world_sizes(synthetic_data, memory_source, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "train",
        *TINY,
        *IN_MEMORY,
        "--epochs",
        "3",
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(run_dir),
    ]

    def wait_for_epochs(proc, n):
        deadline = time.monotonic() + 180
        while len(RunDir(run_dir).read_metrics()) < n:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)

    # One process, interrupted after epoch 1 ...
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastres", *args],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_for_epochs(proc, 1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert load_checkpoint(RunDir(run_dir).last_checkpoint)["epoch"] >= 1
    # ... resumed by two processes, interrupted after epoch 2 ...
    proc = torchrun("train", "--resume", str(run_dir), start_new_session=True)
    wait_for_epochs(proc, 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert "resuming" in out
    assert load_checkpoint(RunDir(run_dir).last_checkpoint)["epoch"] >= 2
    # ... and finished by one process.
    res = run_cli("train", "--resume", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert [r["epoch"] for r in RunDir(run_dir).read_metrics()] == [1, 2, 3]
    assert RunDir(run_dir).read_summary()["status"] == "completed"


CRASH = """
import importlib, sys
train = importlib.import_module("fastres.train")
original = train.Trainer.train_epoch
def crash(self, progress):
    if self.dist.rank == 1 and self.epoch == 1:
        raise RuntimeError("injected failure on rank 1")
    return original(self, progress)
train.Trainer.train_epoch = crash
from fastres.cli import main
sys.exit(main())
"""


def test_a_failing_rank_stops_the_whole_job(synthetic_data, memory_source, tmp_path):
    script = tmp_path / "crash_rank1.py"
    script.write_text(CRASH)
    t0 = time.monotonic()
    res = torchrun(
        "train",
        *TINY,
        *IN_MEMORY,
        "--epochs",
        "3",
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(tmp_path / "run"),
        script=(str(script),),
        timeout=240,
    )
    assert res.returncode != 0
    assert "injected failure on rank 1" in res.stdout + res.stderr
    assert time.monotonic() - t0 < 240


def test_global_batch_must_divide_over_processes(synthetic_data, tmp_path):
    res = torchrun(
        "train",
        "--width",
        "8",
        "--batch-size",
        "101",
        "--epochs",
        "1",
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert res.returncode != 0
    assert "batch size 101 does not divide over 2 processes" in res.stdout + res.stderr


def test_a_held_run_directory_is_refused_on_every_rank_without_waiting(
    synthetic_data, memory_source, tmp_path
):
    from fastres.files import FileLock

    run_dir = tmp_path / "held"
    run_dir.mkdir()
    lock = FileLock(RunDir(run_dir).lock_file)
    assert lock.acquire(wait=False)  # this test process plays the other trainer
    try:
        t0 = time.monotonic()
        res = torchrun(
            "train",
            *TINY,
            *IN_MEMORY,
            "--epochs",
            "1",
            "--data-dir",
            str(synthetic_data),
            "--run-dir",
            str(run_dir),
            timeout=120,
        )
        elapsed = time.monotonic() - t0
    finally:
        lock.release()
    out = res.stdout + res.stderr
    assert res.returncode != 0
    # One refusal from each rank (their lines may interleave: both write to one pipe at once).
    assert out.count(f"fastres: error: {run_dir} is being trained by another process") == 2, out
    assert elapsed < 60, "no rank waited at a barrier for the process-group timeout"
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"], "nothing written"
