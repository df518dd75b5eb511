"""Studies on a scheduler: submitit's local executor for real, Slurm through a fake sbatch."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastres.errors import FastresError
from fastres.rundir import RunDir
from fastres.study.jobs import parse_extra, parse_time_limit

from .conftest import REPO, run_cli
from .test_ablate import FOLDERS, in_process
from .test_reliability import assert_same_weights

# 20 steps per epoch, 5 epochs: a signal sent after epoch 1 lands well inside the run.
RECIPE = [
    "--width",
    "8",
    "--batch-size",
    "50",
    "--epochs",
    "5",
    "--train-subset",
    "1000",
    "--test-subset",
    "100",
    "--lr",
    "0.05",
    "--loader",
    "memory",
    "--deterministic",
    "--threads",
    "1",
]
STUDY = ["ablate", "--config", "baseline", "cosine", "--seeds", "2"]


def _wait_for_first_epoch(run_dir: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not RunDir(run_dir).read_metrics():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.05)


def test_submitit_local_study_trains_every_run_and_a_signalled_task_is_requeued_and_resumes(
    synthetic_data, memory_source, tmp_path
):
    """The Slurm code path with submitit's local executor: one setting x 2 seeds, both jobs at
    once. One task gets SIGUSR2 (Slurm's warning) after its first epoch: its run stops cleanly,
    the task is requeued and resumes, and ends with the weights of an uninterrupted run."""
    out = tmp_path / "study"
    cmd = [
        sys.executable,
        "-m",
        "fastres",
        *STUDY[:3],  # baseline only: the launcher is the subject here, not the settings
        "--seeds",
        "2",
        *RECIPE,
        "--data-dir",
        str(synthetic_data),
        "--out",
        str(out),
        "--launcher",
        "submitit-local",
        "--max-parallel",
        "2",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    target = out / "baseline" / "seed42"
    _wait_for_first_epoch(target, proc)
    trainer = json.loads((target / ".lock-holder.json").read_text())["pid"]
    task = int(
        Path(f"/proc/{trainer}/stat").read_text().rsplit(")", 1)[1].split()[1]
    )  # the trainer's parent
    os.kill(task, signal.SIGUSR2)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout + stderr
    assert "Traceback" not in stderr and "ablation finished: 2 job(s) ended" in stdout

    for folder in FOLDERS[:2]:
        run = RunDir(out / folder)
        assert run.state() == "completed", folder
        assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3, 4, 5], folder
    job = json.loads((out / "study.json").read_text())["launches"][-1]["jobs"]["baseline/seed42"]
    log = (out / "jobs" / f"{job}_0_log.out").read_text()
    assert "this job is preempted" in log and "Requeued job" in log
    assert f"resuming {target} after epoch" in log
    reference = tmp_path / "reference"
    res = run_cli(
        "train",
        "--preset",
        "baseline",
        "--seed",
        "42",
        *RECIPE,
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(reference),
        env={"FASTRES_CIFAR10": str(memory_source)},
    )
    assert res.returncode == 0, res.stderr
    assert_same_weights(target, reference)

    report = json.loads(in_process("report", str(out), "--json").stdout)
    assert len(report["runs"]) == 2 and not report["unfinished"]
    status = in_process("ablate", "--status", str(out)).stdout.splitlines()
    assert len(status) == 3 and all(" done " in line and " job " in line for line in status[1:]), (
        status
    )


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` and ``srun`` on PATH: sbatch keeps each script it is given and answers with a
    job id."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "sbatch-scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        f'n=$(ls {scripts} | wc -l); cp "$1" {scripts}/script$n.sh; echo "$@" > '
        f"{scripts}/args$n.txt\n"
        "echo 'Submitted batch job 4242'\n"
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return scripts


SLURM = [
    "--launcher",
    "slurm",
    "--partition",
    "gpu",
    "--time-limit",
    "2:00:00",
    "--gpus-per-run",
    "1",
    "--cpus-per-run",
    "8",
    "--account",
    "lab",
    "--qos",
    "high",
    "--max-parallel",
    "2",
    "--max-requeues",
    "5",
    "--slurm",
    "mem=32G",
    "--slurm",
    "constraint=a100",
]


def test_slurm_submits_one_job_array_with_the_settings_given(fake_slurm, synthetic_data, tmp_path):
    out = tmp_path / "study"
    res = in_process(*STUDY, *RECIPE, "--data-dir", str(synthetic_data), "--out", str(out), *SLURM)
    assert res.returncode == 0, res.stderr
    assert "submitted job array 4242: 4 task(s)" in res.stdout
    assert sorted(p.name for p in fake_slurm.glob("script*")) == ["script0.sh"], (
        "one sbatch call for the study"
    )
    script = (fake_slurm / "script0.sh").read_text()
    for line in (
        "#SBATCH --array=0-3%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=120",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "#SBATCH --mem=32G",
        "#SBATCH --constraint=a100",
        "#SBATCH --signal=USR2@90",
        f"#SBATCH --output={out}/jobs/%A_%a_0_log.out",
    ):
        assert line in script.splitlines(), line

    jobs = json.loads((out / "study.json").read_text())["launches"][-1]["jobs"]
    assert jobs == {f: f"4242_{i}" for i, f in enumerate(FOLDERS)}
    for i, folder in enumerate(FOLDERS):  # each task holds its run, with submitit's requeue budget
        with open(out / "jobs" / f"4242_{i}_submitted.pkl", "rb") as f:
            delayed = pickle.load(f)
        assert delayed.function.run.name == folder and delayed._timeout_countdown == 5
        assert delayed.function.run.command[-2:] == ("--run-dir", str(out / folder))
    status = in_process("ablate", "--status", str(out)).stdout.splitlines()
    assert all(
        "not started" in line and f"job 4242_{i}" in line for i, line in enumerate(status[1:])
    ), status


def test_slurm_dry_run_shows_the_job_script_and_submits_nothing(
    fake_slurm, synthetic_data, tmp_path
):
    out = tmp_path / "study"
    res = in_process(
        *STUDY, *RECIPE, "--data-dir", str(synthetic_data), "--out", str(out), *SLURM, "--dry-run"
    )
    assert res.returncode == 0, res.stderr
    assert "#SBATCH --array=0-3%2" in res.stdout and "#SBATCH --partition=gpu" in res.stdout
    assert "# task 3: cosine/seed43: " in res.stdout
    assert not list(fake_slurm.iterdir()) and not out.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--partition", "gpu"], "--partition is a scheduler option: add --launcher slurm"),
        (["--launcher", "slurm"], "--launcher slurm needs --time-limit"),
        (
            ["--launcher", "slurm", "--time-limit", "1:00:00", "--slurm", "array=0-9"],
            "fastres sets sbatch's --array itself",
        ),
        (
            ["--launcher", "slurm", "--time-limit", "1:00:00", "--slurm", "mem"],
            "--slurm takes KEY=VALUE",
        ),
        (["--launcher", "slurm", "--time-limit", "soon"], "--time-limit takes Slurm's formats"),
        (
            ["--launcher", "slurm", "--time-limit", "1:00:00", "--devices", "0"],
            "each run is a job: ask for its GPUs",
        ),
        (
            ["--launcher", "slurm", "--time-limit", "1:00:00", "--max-parallel", "0"],
            "--max-parallel must be a whole number >= 1",
        ),
    ],
)
def test_bad_scheduler_options_are_refused_in_one_line(args, message, tmp_path):
    res = in_process(*STUDY, "--out", str(tmp_path / "study"), *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "study").exists()


def test_slurm_without_srun_or_submitit_says_what_is_missing(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    args = [
        *STUDY,
        *RECIPE,
        "--data-dir",
        str(synthetic_data),
        "--out",
        str(tmp_path / "s"),
        "--launcher",
        "slurm",
        "--time-limit",
        "60",
    ]
    res = in_process(*args)
    assert (
        res.returncode == 2
        and 'Could not detect "srun"' in res.stderr
        and "--dry-run" in res.stderr
    )
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    for extra in ([], ["--dry-run"]):
        res = in_process(*args, *extra)
        assert res.returncode == 2 and "pip install 'fastres[slurm]'" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def test_a_refused_submission_is_one_line_with_sbatchs_reason(fake_slurm, synthetic_data, tmp_path):
    sbatch = Path(os.environ["PATH"].split(os.pathsep)[0]) / "sbatch"
    sbatch.write_text(
        "#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpux' >&2\nexit 1\n"
    )
    out = tmp_path / "study"
    res = in_process(*STUDY, *RECIPE, "--data-dir", str(synthetic_data), "--out", str(out), *SLURM)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (
        "sbatch did not take the job array: sbatch: error: invalid partition specified: gpux"
        in res.stderr
    )
    assert not (out / "study.json").exists(), "a study is recorded once its jobs are submitted"


def test_time_limits_read_as_slurm_writes_them():
    assert [parse_time_limit(t) for t in ("90", "4:00:00", "1-12:00:00", "2-0", "30:30")] == [
        90,
        240,
        2160,
        2880,
        31,
    ]
    with pytest.raises(FastresError, match="under a minute"):
        parse_time_limit("0")
    assert parse_extra(["mem=32G", "--mail_type=END"]) == {"mem": "32G", "mail-type": "END"}
