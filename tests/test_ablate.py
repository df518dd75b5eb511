"""``fastres ablate``: planning, dry-run commands, skip/resume on re-run, failures, devices."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastres.cli import build_parser
from fastres.cli.options import config_from_args
from fastres.errors import FastresError
from fastres.ffcv_compat import ffcv_available
from fastres.rundir import RunDir
from fastres.study import devices
from fastres.study.devices import check_devices
from fastres.study.planning import PlannedRun, plan
from fastres.study.pool import run_pool

from .conftest import REPO, run_cli, run_main

# 20 steps per epoch, 3 epochs: a Ctrl-C sent right after epoch 1 lands inside the run. The
# in-memory loader reads the synthetic source (through FASTRES_CIFAR10, see `memory_source`):
# these tests are about the study, and each run then skips ffcv's seconds-long import.
TINY = [
    "--width",
    "8",
    "--batch-size",
    "50",
    "--epochs",
    "3",
    "--train-subset",
    "1000",
    "--test-subset",
    "100",
    "--lr",
    "0.05",
    "--loader",
    "memory",
]
STUDY = ["ablate", "--config", "baseline", "cosine_schedule", "--seeds", "2"]
FOLDERS = ["baseline/seed42", "baseline/seed43", "cosine/seed42", "cosine/seed43"]


def in_process(*args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (no interpreter start-up), for steps that train nothing."""
    from fastres.cli import main

    out, err = io.StringIO(), io.StringIO()
    stops = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    handlers = {
        sig: signal.getsignal(sig) for sig in stops
    }  # ablate installs its own; keep pytest's
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def summaries(out: Path) -> dict[str, dict]:
    return {f: json.loads((out / f / "summary.json").read_text()) for f in FOLDERS}


@pytest.fixture(scope="module")
def memory_source(synthetic_source):
    """The synthetic source for --loader memory, in this process and the runs it starts."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTRES_CIFAR10", str(synthetic_source))
        yield synthetic_source


@pytest.fixture(scope="module")
def study(synthetic_data, memory_source, tmp_path_factory):
    """A 2-preset x 2-seed study, built the hard way: interrupted, partly run by hand from
    the --dry-run commands, then completed by re-running the same ablate command."""
    out = tmp_path_factory.mktemp("study") / "abl"
    args = [*STUDY, *TINY, "--data-dir", str(synthetic_data), "--out", str(out)]
    stages = {}

    stages["dry_run"] = in_process(*args, "--dry-run")
    stages["created_by_dry_run"] = out.exists()

    # Ctrl-C the ablation during its first run: it stops that run cleanly and exits.
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastres", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    metrics = out / FOLDERS[0] / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    stages["interrupted"] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    stages["interrupted_state"] = RunDir(out / FOLDERS[0]).state()

    # Run one of the printed commands by hand, as a job scheduler would.
    stages["dry_run_after"] = in_process(*args, "--dry-run")
    line = next(c for c in stages["dry_run"].stdout.splitlines() if c.endswith(FOLDERS[1]))
    stages["by_hand"] = subprocess.run(
        shlex.split(line), capture_output=True, text=True, cwd=REPO, timeout=600
    )

    stages["rerun"] = run_cli(*args)
    stages["mtimes"] = {f: (out / f / "summary.json").stat().st_mtime_ns for f in FOLDERS}
    stages["again"] = in_process(*args)
    return out, args, stages


def test_dry_run_prints_one_runnable_train_command_per_run(study):
    out, _, stages = study
    res = stages["dry_run"]
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 4
    for line, folder in zip(lines, FOLDERS, strict=True):
        argv = shlex.split(line)
        assert argv[:4] == [sys.executable, "-m", "fastres", "train"]
        assert argv[-2:] == ["--run-dir", str(out / folder)]
        assert "--seed" in argv and argv[argv.index("--seed") + 1] == folder[-2:]
        assert all(opt in argv for opt in TINY)
    assert not stages["created_by_dry_run"], "a dry run plans only"


def test_ctrl_c_stops_the_running_run_cleanly(study):
    _, _, stages = study
    res = stages["interrupted"]
    assert res.returncode == 130, res.stderr
    assert "Traceback" not in res.stderr
    assert "run the same command again" in res.stderr
    assert stages["interrupted_state"] == "interrupted"
    # Then the dry run offers to resume that run and still to train the others.
    lines = stages["dry_run_after"].stdout.splitlines()
    assert f"train --resume {study[0] / FOLDERS[0]} " in lines[0]
    assert [line.split()[-1] for line in lines[1:]] == [str(study[0] / f) for f in FOLDERS[1:]]


def test_rerun_resumes_the_interrupted_run_skips_the_finished_and_trains_the_rest(study):
    out, _, stages = study
    assert stages["by_hand"].returncode == 0, stages["by_hand"].stderr
    res = stages["rerun"]
    assert res.returncode == 0, res.stderr
    assert "2 to train, 1 to resume, 1 already finished" in res.stdout
    assert "baseline/seed42: resuming after epoch" in res.stdout
    assert "skipping 1 finished run(s): baseline/seed43" in res.stdout
    assert "[4/4]" in res.stdout and "4/4 done" in res.stdout
    assert sorted(str(p.parent.relative_to(out)) for p in out.rglob("config.json")) == FOLDERS
    for folder, summary in summaries(out).items():
        assert (
            summary["status"] == "completed" and summary["epochs"] == summary["epochs_planned"] == 3
        ), folder
        assert [r["epoch"] for r in RunDir(out / folder).read_metrics()] == [1, 2, 3], folder
        assert summary["seed"] == int(folder[-2:]) and summary["preset"] == folder.split("/")[0]


def test_run_made_from_a_dry_run_line_is_the_ablations_own_run(study):
    out, args, _ = study
    by_hand = json.loads((out / FOLDERS[1] / "config.json").read_text())
    planned = plan(
        ["baseline"],
        seeds=2,
        overrides={
            "width": 8,
            "batch_size": 50,
            "epochs": 3,
            "train_subset": 1000,
            "test_subset": 100,
            "lr": 0.05,
            "loader": "memory",
            "data_dir": args[args.index("--data-dir") + 1],
        },
        out=out,
    )
    assert by_hand == planned[1].config.to_dict()


def test_second_rerun_skips_every_finished_run(study):
    out, _, stages = study
    res = stages["again"]
    assert res.returncode == 0, res.stderr
    assert "0 to train, 0 to resume, 4 already finished" in res.stdout
    # Each launch is recorded, and --status tells where every run stands without starting any.
    study_doc = json.loads((out / "study.json").read_text())
    assert [r["run_dir"] for r in study_doc["runs"]] == FOLDERS and len(study_doc["launches"]) == 3
    status = in_process("ablate", "--status", str(out))
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith(f"study in {out}: 4 planned run(s), 3 launch(es), last ")
    assert [line.split()[:3] for line in lines[1:]] == [[f, "done", "3/3"] for f in FOLDERS]
    assert "ablation finished: 4/4 runs done" in res.stdout
    assert {f: (out / f / "summary.json").stat().st_mtime_ns for f in FOLDERS} == stages["mtimes"]


def test_ablation_ends_with_a_report_of_mean_and_sample_std(study):
    out, _, _ = study
    text = (out / "report.md").read_text()
    sums = summaries(out)
    for preset in ("baseline", "cosine"):
        finals = [sums[f]["final_val_acc"] for f in FOLDERS if f.startswith(preset)]
        bests = [sums[f]["best_val_acc"] for f in FOLDERS if f.startswith(preset)]
        mean, std = sum(finals) / 2, abs(finals[0] - finals[1]) / 2**0.5  # ddof 1 with two values
        row = next(line for line in text.splitlines() if line.startswith(f"| `{preset}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "2"
        assert cells[2] == f"{100 * mean:.2f} ± {100 * std:.2f}"
        assert (
            cells[4] == f"{100 * statistics.fmean(bests):.2f} ± {100 * statistics.stdev(bests):.2f}"
        )
    for png in ("val_acc.png", "lr_schedule.png", "acc_vs_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_run_is_reported_and_the_others_go_on(
    synthetic_data, memory_source, tmp_path, capsys
):
    # baseline's batch of 128 does not fit 64 images; small_batch's 32 does.
    res = run_cli(
        "ablate",
        "--config",
        "baseline",
        "small_batch",
        "--width",
        "8",
        "--epochs",
        "1",
        "--train-subset",
        "64",
        "--test-subset",
        "100",
        "--loader",
        "memory",
        "--data-dir",
        str(synthetic_data),
        "--out",
        str(tmp_path / "abl"),
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert (
        "FAILED baseline/seed42" in res.stdout
        and "batch size 128 is larger than the 64 training images" in res.stdout
    )
    assert "fastres: failed: baseline/seed42" in res.stderr and "1 of 2 runs failed" in res.stderr
    assert RunDir(tmp_path / "abl" / "small_batch" / "seed42").state() == "completed"
    report = (tmp_path / "abl" / "report.md").read_text()
    assert "| `small_batch` | 1 |" in report
    status = run_main(capsys, "ablate", "--status", str(tmp_path / "abl"))
    assert [line.split()[:3] for line in status.stdout.splitlines()[1:]] == [
        ["baseline/seed42", "not", "started"],
        ["small_batch/seed42", "done", "1/1"],
    ], "the failed one never began"


# Started in every process of the study (PYTHONPATH): the first FAULTS runs of fastres.train
# hit a GPU fault at epoch 2, step 3, as a Muon run on an H200 did (BENCHMARKS.md).
FAULT_INJECTION = """
import os, pathlib
count = pathlib.Path(os.environ["FASTRES_TEST_FAULT_COUNT"])
faults = len(count.read_text()) if count.exists() else 0
if faults < int(os.environ["FASTRES_TEST_FAULTS"]):
    import importlib
    train_module = importlib.import_module("fastres.train")
    real_step, calls = train_module.train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20 + 3:
            count.write_text("x" * (faults + 1))
            raise RuntimeError("CUDA error: unspecified launch failure")
        return real_step(*args, **kwargs)

    train_module.train_step = step
"""


@pytest.mark.parametrize("faults", [1, 2], ids=["once-resumed", "twice-reported"])
def test_a_run_the_gpu_failed_under_is_resumed_once(
    synthetic_data, memory_source, tmp_path, faults
):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(FAULT_INJECTION)
    env = {
        "PYTHONPATH": os.pathsep.join([str(inject), str(REPO)]),
        "FASTRES_TEST_FAULTS": str(faults),
        "FASTRES_TEST_FAULT_COUNT": str(tmp_path / "faults"),
    }
    out = tmp_path / "abl"
    res = run_cli(
        "ablate",
        "--config",
        "baseline",
        *TINY,
        "--data-dir",
        str(synthetic_data),
        "--out",
        str(out),
        env=env,
    )
    run = RunDir(out / "baseline" / "seed42")
    assert "Traceback" not in res.stdout + res.stderr
    assert (
        "retrying baseline/seed42 (resume 1 of 1) after a GPU fault: fastres: error: the GPU "
        "failed during "
        "epoch 2/3"
    ) in res.stdout, res.stdout
    if faults == 1:
        assert res.returncode == 0, res.stderr
        assert run.state() == "completed" and [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    else:  # the resumed run failed again: reported, not retried a second time
        assert res.returncode == 1 and "1 of 1 runs failed" in res.stderr
        assert (
            "FAILED baseline/seed42" in res.stdout
            and "the GPU failed during epoch 3/3" in res.stdout
        )
        assert res.stdout.count("retrying baseline/seed42") == 1
        assert run.read_summary()["status"] == "failed" and [
            r["epoch"] for r in run.read_metrics()
        ] == [1, 2]


def test_commands_reproduce_the_planned_configs(tmp_path):
    overrides = {
        "width": 16,
        "lr": 1e-05,
        "nesterov": True,
        "augment": False,
        "milestones": (0.3, 0.6, 0.9),
        "norm": "none",
        "precision": "fp32",
        "label_smoothing": 0.1,
        "epochs": 7,
    }
    runs = plan(
        ["cosine_schedule", "no_bn", "small_batch", "cosine"],
        seeds=3,
        seed=7,
        overrides=overrides,
        out=tmp_path / "o",
    )
    assert [(r.preset, r.seed) for r in runs] == [
        (p, s) for p in ("cosine", "no_batchnorm", "small_batch") for s in (7, 8, 9)
    ]
    parser = build_parser()
    for run in runs:
        assert (
            run.action == "train" and run.run_dir == tmp_path / "o" / run.preset / f"seed{run.seed}"
        )
        args = parser.parse_args(list(run.command[3:]))
        config, resume = config_from_args(args)
        assert not resume and config == run.config


def test_runs_go_one_per_device_at_a_time_each_pinned(tmp_path):
    code = "import os, time; print('pinned', os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(1.5)"
    base = plan(["baseline"], seeds=4, out=tmp_path)
    runs = [
        PlannedRun(
            r.preset, r.seed, r.run_dir, r.config, "train", "new", (sys.executable, "-c", code)
        )
        for r in base
    ]
    lines: list[str] = []
    t0 = time.monotonic()
    run_pool(runs, devices=["5", "7"], log=lines.append, poll_s=0.05)
    elapsed = time.monotonic() - t0
    assert elapsed < 4 * 1.5, "two devices: the four runs go two at a time"
    pinned = [line for line in lines if "pinned" in line]
    assert len(pinned) == 4
    assert all(line.split("@GPU")[1].split()[0] == line.split()[-1] for line in pinned), pinned
    assert sum(line.endswith("pinned 5") for line in pinned) == 2


def test_device_indices_follow_an_inherited_cuda_visible_devices(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert check_devices(["1", "0"], {}) == ["3", "2"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert check_devices(["1"], {}) == ["1"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config", "resnet99"], "unknown preset 'resnet99': choose one of baseline, cosine"),
        (["--config", "baseline", "--seeds", "0"], "--seeds must be a whole number >= 1, got 0"),
        (
            ["--config", "baseline", "--loader", "memory", "--out", "/proc/no/such"],
            "cannot write the ablation folder /proc/no/such",
        ),
        (["--config", "baseline", "--run-dir", "x"], "run_dir cannot be overridden"),
        ([], "no presets chosen"),
        (["--config", "baseline", "--devices", "0,x"], "--devices takes distinct GPU indices"),
        (
            # named before the data's state (no betons there)
            ["--config", "baseline", "--devices", "0", "--device", "cpu", "--data-dir", "/no/data"],
            "--devices pins runs to GPUs",
        ),
        (
            ["--status", "/nonexistent/study"],
            "/nonexistent/study holds no fastres study (no study.json)",
        ),
    ],
)
def test_bad_input_gets_a_one_line_error(capsys, args, message):
    res = run_main(capsys, "ablate", *args)
    assert res.returncode == 2
    assert res.stdout == "" and res.stderr.count("\n") == 1 and message in res.stderr, res.stderr


@pytest.mark.skipif(not ffcv_available(), reason="the betons are read only with ffcv")
def test_unprepared_data_is_named_once_before_any_run_starts(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["--config", "quick", "--seeds", "3", "--data-dir", str(tmp_path / "nodata")]
    res = run_main(capsys, "ablate", *args, "--loader", "ffcv", "--out", str(out))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "no prepared CIFAR-10 in" in res.stderr and "fastres prepare-data" in res.stderr
    assert not out.exists(), "nothing started, nothing written"


def test_a_run_folder_with_another_recipe_is_refused_before_anything_runs(study, capsys):
    out, args, _ = study
    res = run_main(
        capsys,
        *args[: args.index("--epochs")],
        "--epochs",
        "4",
        *args[args.index("--epochs") + 2 :],
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert (
        "hold a different recipe" in res.stderr and "epochs (3 recorded, 4 planned)" in res.stderr
    )


def test_list_shows_every_preset_and_its_differences(capsys):
    res = run_main(capsys, "ablate", "--list")
    assert res.returncode == 0
    from fastres.presets import PRESETS

    for name in PRESETS:
        assert any(line.startswith(name + " ") for line in res.stdout.splitlines()), name
    assert "vs baseline: norm batch -> none, lr 0.1 -> 0.01" in res.stdout
    assert "vs baseline: batch_size 128 -> 32" in res.stdout
    assert "cosine_schedule = cosine" in res.stdout


# One valid non-default value per TrainConfig field. A field added to TrainConfig fails
# test_the_round_trip_table_covers_every_field until it has a row here, and then the two
# round-trip tests check that ablate's commands carry it.
NON_DEFAULT = {
    "model": "resnet34",
    "width": 16,
    "norm": "none",
    "epochs": 7,
    "batch_size": 64,
    "lr": 1e-05,
    "lr_schedule": "cosine",
    "milestones": (0.3, 0.6, 0.9),
    "lr_gamma": 0.2,
    "warmup_epochs": 1.5,
    "momentum": 0.8,
    "nesterov": True,
    "weight_decay": 0.0,
    "label_smoothing": 0.1,
    "augment": False,
    "alternate_flip": True,
    "crop_padding": 2,
    "min_res": 16,
    "res_ramp": (0.2, 0.8),
    "eval_tta": True,
    "tta_translate": 1,
    "tta_final_only": True,
    "whiten_stem": True,
    "ema": 0.99,
    "bn_momentum": 0.4,
    "decay_norm_bias": False,
    "bn_bias_lr": 64.0,
    "optimizer": "muon",
    "muon_lr": 0.125,
    "muon_momentum": 0.6,
    "eval_every": 3,
    "shuffle": False,
    "sync_bn": True,
    "seed": 7,
    "train_subset": 1000,
    "test_subset": 100,
    "precision": "fp32",
    "channels_last": False,
    "compile": "off",
    "loader": "memory",
    "num_workers": 3,
    "threads": 3,
    "device": "cpu",
    "deterministic": True,
    "data_dir": "my data/cifar 10",
    "run_dir": "study with spaces",
    "preset": "cosine",
    "cuda_graph": "on",
    "muon_newton_schulz": "padded",
    "val_split": 500,
}
# Fields that are valid only together with another non-default value.
COMPANIONS = {"min_res": {"res_ramp": (0.2, 0.8)}, "tta_final_only": {"tta_translate": 1}}


def test_the_round_trip_table_covers_every_field():
    from dataclasses import fields

    from fastres.config import TrainConfig

    assert set(NON_DEFAULT) == {f.name for f in fields(TrainConfig)}
    defaults = TrainConfig()
    for name, value in NON_DEFAULT.items():
        assert value != getattr(defaults, name), f"{name}: the table's value is the default"


def _plan_one(name: str, out: Path) -> PlannedRun:
    """Plan one run whose config has ``name`` at its non-default value, the way a user would ask."""
    value = NON_DEFAULT[name]
    preset, seed, overrides = "baseline", None, {name: value, **COMPANIONS.get(name, {})}
    if name in ("preset", "seed", "run_dir"):  # set by the study itself, not by an override
        overrides = {}
        preset = value if name == "preset" else preset
        seed = value if name == "seed" else None
        out = out / value if name == "run_dir" else out
    (run,) = plan([preset], seeds=1, seed=seed, overrides=overrides, out=out)
    expected = value if name != "run_dir" else str(out / "baseline" / "seed42")
    assert getattr(run.config, name) == expected, f"the plan itself lost {name}"
    return run


def _parse_train_command(run: PlannedRun):
    argv = shlex.split(run.shell())  # what --dry-run prints, as a shell would split it
    assert argv[:4] == [sys.executable, "-m", "fastres", "train"]
    return config_from_args(build_parser().parse_args(argv[3:]))


@pytest.mark.parametrize("name", list(NON_DEFAULT))
def test_every_field_round_trips_through_ablates_train_command(name, tmp_path):
    run = _plan_one(name, tmp_path)
    assert run.action == "train"
    config, resume = _parse_train_command(run)
    assert not resume and config == run.config


@pytest.mark.parametrize("name", list(NON_DEFAULT))
def test_every_field_round_trips_through_ablates_resume_command(name, tmp_path):
    from fastres.resume import check_resume

    planned = _plan_one(name, tmp_path)
    run = RunDir(planned.run_dir)
    run.checkpoints.mkdir(parents=True)
    run.write_config(planned.config.to_dict())
    run.write_summary({"status": "interrupted", "epochs": 0})
    (again,) = plan(
        [planned.preset],
        seeds=1,
        seed=planned.seed,
        overrides={name: NON_DEFAULT[name], **COMPANIONS.get(name, {})}
        if name not in ("preset", "seed", "run_dir")
        else {},
        out=planned.run_dir.parent.parent,
    )
    assert again.action == "resume" and again.command[4:6] == ("--resume", str(planned.run_dir))
    config, resume = _parse_train_command(again)
    assert resume and config == planned.config
    assert check_resume(config, log=lambda m: None) == planned.config


def test_a_study_whose_reader_goes_away_stops_its_run_cleanly_and_exits_141(
    synthetic_data, memory_source, tmp_path
):
    """`fastres ablate ... | head`: the study stops as Ctrl-C stops it, without a traceback,
    and the run it was training can be resumed."""
    out = tmp_path / "abl"
    args = [*STUDY, *TINY, "--data-dir", str(synthetic_data), "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastres", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    # Read up to the first line relayed from the run, so the next one fails in the relay.
    for line in proc.stdout:
        if f"{FOLDERS[0]} | run " in line:
            break
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr
    assert "run the same command again to resume" in stderr
    assert RunDir(out / FOLDERS[0]).state() == "interrupted"
    assert not (out / FOLDERS[1]).exists(), "no run starts after the reader has gone"


def test_a_run_whose_reader_goes_away_keeps_its_checkpoint_and_says_how_to_resume(
    synthetic_data, memory_source, tmp_path
):
    """`fastres train ... | head -2`: the line that finds no reader stops the run as Ctrl-C
    does, in the main thread this time."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastres", "train", *TINY, "--no-progress"]
        + ["--data-dir", str(synthetic_data), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    for line in proc.stdout:
        if line.startswith("epoch 1/3"):
            break
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].endswith(f"; continue with: fastres train --resume {run_dir}")
    assert RunDir(run_dir).state() == "interrupted"


def test_two_studies_on_one_folder_share_out_the_runs_and_train_each_once(
    synthetic_data, memory_source, tmp_path
):
    out = tmp_path / "shared"
    args = [
        sys.executable,
        "-m",
        "fastres",
        "ablate",
        "--config",
        "baseline",
        "--seeds",
        "2",
        "--width",
        "8",
        "--batch-size",
        "50",
        "--epochs",
        "1",
        "--train-subset",
        "500",
        "--test-subset",
        "100",
        "--lr",
        "0.05",
        "--loader",
        "memory",
        "--data-dir",
        str(synthetic_data),
        "--out",
        str(out),
    ]
    studies = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        for _ in range(2)
    ]
    outputs = [study.communicate(timeout=600) for study in studies]
    for study, (stdout, stderr) in zip(studies, outputs, strict=True):
        assert study.returncode == 0, stdout + stderr
        assert "Traceback" not in stderr
    trained = [
        [line.split()[1] for line in stdout.splitlines() if line.startswith("done ")]
        for stdout, _ in outputs
    ]
    assert all(trained), f"each study trained at least one run: {trained}"
    # Two runs, each study started at once: each study takes one while the other trains.
    assert sorted(trained[0] + trained[1]) == FOLDERS[:2], "every run trained by exactly one study"
    for folder in FOLDERS[:2]:
        run = RunDir(out / folder)
        assert run.state() == "completed" and [r["epoch"] for r in run.read_metrics()] == [1], (
            folder
        )
    report = json.loads(in_process("report", str(out), "--json").stdout)
    assert len(report["runs"]) == 2 and not report["unfinished"]


def test_runs_per_device_interleaves_gpus_and_shares_the_cpu_cores():
    assert devices.expand_slots(["0", "1"], 2) == ["0", "1", "0", "1"]
    assert devices.expand_slots(None, 3) == [None, None, None]
    assert devices.share_cores({"lr": 0.1}, 2, cores=4) == {"lr": 0.1, "threads": 2}
    assert devices.share_cores({"threads": 3}, 2, cores=4) == {"threads": 3}, (
        "a given --threads is kept"
    )
    with pytest.raises(FastresError, match="--runs-per-device 3 on 2 CPU core"):
        devices.share_cores({}, 3, cores=2)
    with pytest.raises(FastresError, match="--runs-per-device must be a whole number"):
        devices.expand_slots(None, 0)


def test_dry_run_pins_k_runs_to_each_gpu(tmp_path):
    res = in_process(
        "ablate",
        "--config",
        "baseline",
        "--seeds",
        "4",
        "--devices",
        "0,1",
        "--runs-per-device",
        "2",
        "--dry-run",
        "--out",
        str(tmp_path / "s"),
    )
    assert res.returncode == 0, res.stderr
    assert [line.split()[0] for line in res.stdout.splitlines()] == [
        "CUDA_VISIBLE_DEVICES=0",
        "CUDA_VISIBLE_DEVICES=1",
        "CUDA_VISIBLE_DEVICES=0",
        "CUDA_VISIBLE_DEVICES=1",
    ]


def test_runs_per_device_on_the_cpu_runs_side_by_side_with_a_share_of_the_cores(
    synthetic_data, memory_source, tmp_path
):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two runs side by side need two cores")
    out = tmp_path / "pair"
    res = run_cli(
        "ablate",
        "--config",
        "baseline",
        "--seeds",
        "2",
        *TINY,
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--runs-per-device",
        "2",
        "--data-dir",
        str(synthetic_data),
        "--out",
        str(out),
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    first_done = next(i for i, line in enumerate(lines) if line.startswith("done "))
    started = [i for i, line in enumerate(lines) if line.startswith(("[1/2]", "[2/2]"))]
    assert len(started) == 2 and max(started) < first_done, (
        "both runs started before either finished"
    )
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"2 at a time on the CPU, {threads} thread(s) each" in res.stdout
    for seed in (42, 43):
        assert (
            json.loads((out / "baseline" / f"seed{seed}" / "config.json").read_text())["threads"]
            == threads
        )


def test_variants_of_a_preset_run_next_to_it_over_the_same_seeds(tmp_path):
    out = tmp_path / "v"
    res = in_process(
        "ablate",
        "--config",
        "quick",
        "--seeds",
        "2",
        "--seed",
        "0",
        "--dry-run",
        "--out",
        str(out),
        "--variant",
        "ema:--ema 0.99",
        "--variant",
        'bn:"--bn-momentum" 0.4 --no-decay-norm-bias',
    )
    assert res.returncode == 0, res.stderr
    commands = [shlex.split(line) for line in res.stdout.splitlines()]
    assert [c[c.index("--run-dir") + 1] for c in commands] == [
        str(out / f)
        for f in ("quick/seed0", "quick/seed1", "ema/seed0", "ema/seed1", "bn/seed0", "bn/seed1")
    ]
    assert all(c[c.index("--preset") + 1] == "quick" for c in commands)
    assert commands[2][commands[2].index("--ema") + 1] == "0.99" and "--ema" not in commands[0]
    assert (
        "--no-decay-norm-bias" in commands[4]
        and commands[4][commands[4].index("--bn-momentum") + 1] == "0.4"
    )
    runs = plan(["quick"], seeds=1, out=out, variants={"ema": {"ema": 0.99}})
    assert [(r.name, r.config.ema) for r in runs] == [("quick/seed42", 0.0), ("ema/seed42", 0.99)]
    # --interleave: seed by seed, so a drifting machine slows every setting alike.
    res = in_process(
        "ablate",
        "--config",
        "quick",
        "--seeds",
        "2",
        "--seed",
        "0",
        "--dry-run",
        "--out",
        str(out),
        "--variant",
        "ema:--ema 0.99",
        "--interleave",
    )
    assert res.returncode == 0, res.stderr
    assert [shlex.split(line)[-1] for line in res.stdout.splitlines()] == [
        str(out / f) for f in ("quick/seed0", "ema/seed0", "quick/seed1", "ema/seed1")
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--config", "quick", "cosine", "--variant", "ema:--ema 0.99"],
            "--variant varies one preset, and 2 were chosen",
        ),
        (["--config", "quick", "--variant", "ema"], '--variant takes NAME:"OPTIONS"'),
        (
            ["--config", "quick", "--variant", "ema:--emma 0.99"],
            "--variant ema: unrecognized arguments: --emma 0.99",
        ),
        (["--config", "quick", "--variant", "ema:--ema 2"], "ema must be a decay in [0, 1)"),
        (
            ["--config", "quick", "--variant", "ema:--seed 3"],
            "--variant ema cannot set --seed: every setting runs over the same seeds",
        ),
        (
            ["--config", "quick", "--variant", "quick:--ema 0.9"],
            "variant name 'quick' cannot name a folder",
        ),
        (
            ["--config", "quick", "--variant", "a/b:--ema 0.9"],
            "variant name 'a/b' cannot name a folder",
        ),
        (["--config", "quick", "--variant", "x:"], "variant 'x' changes nothing"),
        (
            ["--config", "quick", "--variant", "x:--ema 0.9", "--variant", "x:--ema 0.8"],
            "--variant x is given twice",
        ),
    ],
)
def test_bad_variants_are_refused_in_one_line(args, message, tmp_path):
    res = in_process("ablate", *args, "--out", str(tmp_path / "v"))
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "v").exists()


def test_reuse_counts_an_earlier_studys_finished_runs_instead_of_training_them_again(
    study, tmp_path
):
    """New variants against the preset's seeds of an earlier study: only the variants train,
    the earlier runs stay untouched, and the new study's report pairs the two."""
    earlier, args, _ = study
    later = tmp_path / "later"
    mtimes = {f: (earlier / f / "summary.json").stat().st_mtime_ns for f in FOLDERS}
    new = [
        "ablate",
        "--config",
        "baseline",
        "--seeds",
        "2",
        *TINY,
        "--data-dir",
        args[args.index("--data-dir") + 1],
        "--out",
        str(later),
        "--reuse",
        str(earlier),
        "--variant",
        "lr:--lr 0.1",
    ]
    dry = in_process(*new, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [line.split()[-1] for line in dry.stdout.splitlines()] == [
        str(later / "lr/seed42"),
        str(later / "lr/seed43"),
    ]
    assert f"# baseline/seed42: finished in {earlier / 'baseline/seed42'}, reused" in dry.stderr
    assert "did not run beside" not in dry.stdout + dry.stderr
    assert "did not run beside this study's" in in_process(*new, "--dry-run", "--interleave").stdout
    res = run_cli(*new)
    assert res.returncode == 0, res.stderr
    assert (
        "2 to train, 0 to resume, 0 already finished, 2 reused from earlier studies" in res.stdout
    )
    assert (
        "reusing 2 run(s) finished in earlier studies: baseline/seed42 "
        f"({earlier / 'baseline/seed42'})" in res.stdout
    )
    assert sorted(str(p.parent.relative_to(later)) for p in later.rglob("config.json")) == [
        "lr/seed42",
        "lr/seed43",
    ]
    assert {f: (earlier / f / "summary.json").stat().st_mtime_ns for f in FOLDERS} == mtimes
    # The report, written now and again later from the folder alone, counts the reused runs.
    for _ in range(2):
        data = json.loads((later / "report.json").read_text())
        by_label = {g["label"]: g for g in data["settings"]}
        assert set(by_label) == {"baseline", "lr"} and data["reference"] == "baseline"
        assert by_label["baseline"]["seeds"] == [42, 43]
        assert by_label["baseline"]["runs"] == [
            os.path.relpath(earlier / f"baseline/seed{s}", later) for s in (42, 43)
        ]
        diff = by_label["lr"]["diff_vs_reference"]
        assert diff["paired"] and diff["n"] == 2
        assert in_process("report", str(later), "--reference", "baseline").returncode == 0
    # Reported together with the earlier study, a reused run is one run, named by its own path.
    both = in_process(
        "report",
        str(later),
        str(earlier),
        "--out",
        str(tmp_path / "both"),
        "--reference",
        "baseline",
        "--json",
    )
    assert both.returncode == 0, both.stderr
    data = json.loads(both.stdout)
    assert data["skipped"] == []
    by_label = {g["label"]: g for g in data["settings"]}
    assert by_label["baseline"]["runs"] == [str(earlier / f"baseline/seed{s}") for s in (42, 43)]
    assert by_label["cosine"]["n"] == 2 and by_label["lr"]["diff_vs_reference"]["n"] == 2
    # An earlier study moved away: its runs are named as not counted, not silently dropped.
    moved = tmp_path / "deeper" / "moved"  # the recorded relative paths now lead nowhere
    shutil.copytree(later, moved)
    res = in_process("report", str(moved), "--json")
    assert res.returncode == 0, res.stderr
    gone = json.loads(res.stdout)["skipped"]
    assert [g["run"] for g in gone] == [
        os.path.relpath(earlier / f"baseline/seed{s}", later) for s in (42, 43)
    ]
    assert gone[0]["reason"].startswith("reused by this study as baseline/seed42, but ")
    status = in_process("ablate", "--status", str(moved)).stdout
    assert (
        "baseline/seed42  missing (reused from an earlier study's folder, since moved?)" in status
    )
    rows = [
        re.split(r"\s{2,}", line)
        for line in in_process("ablate", "--status", str(later)).stdout.splitlines()[1:]
    ]
    assert rows[0] == [
        "baseline/seed42",
        "done (reused)",
        "3/3 epochs",
        str(earlier / "baseline/seed42"),
    ]
    assert rows[3] == ["lr/seed43", "done", "3/3 epochs", str(later / "lr/seed43")]
    # An earlier run of another recipe is not taken, and the study says why before training it.
    other = in_process(*new, "--epochs", "2", "--out", str(tmp_path / "other"), "--dry-run")
    assert other.returncode == 0, other.stderr
    assert (
        f"not reusing baseline/seed42: {earlier / 'baseline/seed42'} has another recipe: "
        "epochs (3 recorded, 2 planned)"
    ) in other.stdout
    assert other.stdout.splitlines()[-4].endswith(str(tmp_path / "other/baseline/seed42"))
    # A run is found by its recipe and seed, whatever the earlier study named its folder.
    shutil.copytree(earlier / "baseline", tmp_path / "elsewhere" / "old-name")
    renamed = in_process(
        *new[: new.index("--reuse")],
        "--out",
        str(tmp_path / "renamed"),
        "--reuse",
        str(tmp_path / "elsewhere"),
        "--dry-run",
    )
    assert renamed.returncode == 0, renamed.stderr
    assert (
        f"# baseline/seed43: finished in {tmp_path / 'elsewhere/old-name/seed43'}, reused"
        in renamed.stderr
    )


@pytest.mark.parametrize(
    "reuse,message",
    [
        (
            "missing",
            "--reuse {tmp}/missing: no such folder; pass the --out folder of an earlier study",
        ),
        ("v", "--reuse {tmp}/v is this study's own --out"),
        (
            "file",
            "--reuse {tmp}/file: is a file, not a folder; pass the --out folder of an earlier "
            "study",
        ),
    ],
)
def test_bad_reuse_folders_are_refused_in_one_line(reuse, message, tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "file").write_text("")
    res = in_process(
        "ablate",
        "--config",
        "quick",
        "--out",
        str(tmp_path / "v"),
        "--reuse",
        str(tmp_path / reuse),
    )
    assert res.returncode == 2 and message.format(tmp=tmp_path) in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and list((tmp_path / "v").iterdir()) == []


def test_a_depth_study_of_the_papers_resnets_with_a_held_out_split(tmp_path):
    runs = plan(
        ["quick"],
        seeds=2,
        overrides={"val_split": 5000},
        out=tmp_path,
        variants={"resnet20": {"model": "resnet20"}, "resnet56": {"model": "resnet56"}},
    )
    by_setting = {(r.group, r.seed): r for r in runs}
    assert sorted({g for g, _ in by_setting}) == ["quick", "resnet20", "resnet56"]
    r56 = by_setting["resnet56", 42]
    assert (r56.config.model, r56.config.width, r56.config.val_split) == ("resnet56", 16, 5000)
    assert by_setting["quick", 42].config.model == "resnet18"
    assert "--model resnet56" in r56.shell() and "--val-split 5000" in r56.shell()
