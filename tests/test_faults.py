"""Faults a long run or a sweep meets, each produced for real where the machine allows: two
processes racing for one run directory, a file-size limit, a flipped byte, a killed converter,
plus injected ENOSPC and out-of-memory where nothing real can reach."""

from __future__ import annotations

import errno
import hashlib
import importlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from fastres import TrainConfig, train
from fastres.checkpoint import load as load_checkpoint
from fastres.errors import DeviceFault, FastresError
from fastres.files import FileLock, WriteError
from fastres.prepare import BETONS, MANIFEST, verify_betons
from fastres.rundir import RunDir, RunDirBusy
from fastres.train import TrainingFailed

from .conftest import IN_MEMORY, REPO, run_cli, run_main

# 40 steps per epoch on the synthetic set: long enough to catch a run between epochs.
TINY = ["--width", "8", "--batch-size", "50", "--epochs", "3", "--lr", "0.05"]
FASTRES = [sys.executable, "-m", "fastres"]
REAL_FSYNC = os.fsync


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def start_training(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*FASTRES, "train", *args, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def wait_for_epoch(proc: subprocess.Popen, run_dir: Path, epochs: int = 1) -> None:
    """Until the run has logged ``epochs`` epochs (and so printed them)."""
    deadline = time.monotonic() + 120
    while len(RunDir(run_dir).read_metrics()) < epochs:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                found.add(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def tiny_config(tmp_path: Path, **changes) -> TrainConfig:
    return TrainConfig(
        width=8,
        batch_size=100,
        epochs=3,
        lr=0.05,
        loader="memory",
        data_dir=str(tmp_path),
        run_dir=str(tmp_path / "run"),
        precision="fp32",
    ).replace(**changes)


# --- one process per run directory -----------------------------------------------------------


def wait_stopped(pid: int, timeout: float = 30) -> None:
    """Until the kernel reports ``pid`` stopped (state T in /proc/PID/stat): a syscall in flight,
    such as a checkpoint's rename, has then returned."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.01)


def test_a_second_process_on_a_run_directory_refuses_at_once_and_writes_nothing(
    synthetic_data, memory_source, tmp_path, capsys
):
    out = tmp_path / "study"
    run_dir = out / "baseline" / "seed42"
    first = start_training(
        "--preset",
        "baseline",
        *TINY,
        *IN_MEMORY,
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(run_dir),
    )
    wait_for_epoch(first, run_dir)
    first.send_signal(signal.SIGSTOP)  # held still, so that every byte the others write would show
    try:
        wait_stopped(
            first.pid
        )  # the signal lands asynchronously: a checkpoint write may finish first
        before = hashes(run_dir)
        for args in (
            ["--resume", str(run_dir)],
            [
                "--preset",
                "baseline",
                *TINY,
                *IN_MEMORY,
                "--data-dir",
                str(synthetic_data),
                "--run-dir",
                str(run_dir),
            ],
        ):
            res = run_cli("train", *args)
            assert res.returncode == RunDirBusy.exit_code == 75
            line = one_line(res.stderr)
            assert line.startswith(
                f"fastres: error: {run_dir} is being trained by another process "
                f"(pid {first.pid} on {socket.gethostname()}, since "
            )
            assert "wait for it to finish, or stop it and run the same command again" in line
            assert hashes(run_dir) == before

        # A sweep over the same folder leaves the run to its holder and plans the rest.
        res = run_main(
            capsys,
            "ablate",
            "--config",
            "baseline",
            "--seeds",
            "2",
            *TINY,
            *IN_MEMORY,
            "--data-dir",
            str(synthetic_data),
            "--out",
            str(out),
            "--dry-run",
        )
        assert res.returncode == 0, res.stderr
        assert (
            f"# {run_dir}: running elsewhere (pid {first.pid} on {socket.gethostname()}"
            in res.stderr
        )
        assert [line.split()[-1] for line in res.stdout.splitlines()] == [
            str(out / "baseline" / "seed43")
        ]
        assert RunDir(run_dir).state() == "running"
        assert hashes(run_dir) == before
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert [r["epoch"] for r in RunDir(run_dir).read_metrics()] == [1, 2, 3], (
        "each epoch logged once"
    )
    assert RunDir(run_dir).state() == "completed"
    assert not RunDir(run_dir).holder_file.exists() and RunDir(run_dir).holder_pid() is None


def test_a_run_killed_with_sigkill_leaves_no_stale_lock_and_resumes_from_last_pt(
    synthetic_data, memory_source, tmp_path
):
    # What the kernel's OOM killer does on a CPU: no handler runs, no summary is written.
    run_dir = tmp_path / "run"
    first = start_training(
        *TINY, *IN_MEMORY, "--data-dir", str(synthetic_data), "--run-dir", str(run_dir)
    )
    wait_for_epoch(first, run_dir)
    while not RunDir(run_dir).last_checkpoint.exists():  # written just after the epoch's metrics
        time.sleep(0.01)
    first.kill()
    first.wait()
    run = RunDir(run_dir)
    assert run.state() == "incomplete" and run.holder_pid() is None, "the kernel released the lock"
    res = run_cli("train", "--resume", str(run_dir), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stdout and [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    assert run.state() == "completed"


def test_a_run_directory_that_could_not_start_is_not_left_behind(tmp_path, capsys):
    run_dir = tmp_path / "new-run"
    res = run_main(
        capsys, "train", *TINY, "--data-dir", str(tmp_path / "no-data"), "--run-dir", str(run_dir)
    )
    assert res.returncode == 2 and "prepare-data" in one_line(res.stderr)
    assert not run_dir.exists()


def test_a_file_system_without_locks_is_named(tmp_path, monkeypatch):
    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr("fastres.files.fcntl.lockf", no_locks)
    with pytest.raises(
        FastresError, match="does not support locks .No locks available.; use a folder on a local"
    ):
        FileLock(tmp_path / "x.lock").acquire(wait=False)


# --- full disks and file-size limits ----------------------------------------------------------


def test_a_checkpoint_over_the_file_size_limit_stops_the_run_and_keeps_the_last_one(
    synthetic_data, memory_source, tmp_path
):
    run_dir = tmp_path / "run"
    first = start_training(
        *TINY, *IN_MEMORY, "--data-dir", str(synthetic_data), "--run-dir", str(run_dir)
    )
    wait_for_epoch(first, run_dir)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    run = RunDir(run_dir)
    last = run.last_checkpoint
    kept = {
        k: v
        for k, v in hashes(run_dir).items()
        if k.startswith("checkpoints/") or k == "config.json"
    }

    limit = last.stat().st_size - 1  # the next checkpoint cannot be written; every small file can
    res = subprocess.run(
        [*FASTRES, "train", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert line.startswith(
        f"fastres: error: cannot write {last}: File too large (EFBIG): a file-size limit"
    )
    assert line.endswith(f"continue with: fastres train --resume {run_dir}")
    assert {k: v for k, v in hashes(run_dir).items() if k in kept} == kept, (
        "the earlier checkpoints are intact"
    )
    assert load_checkpoint(last)["epoch"] == 1
    assert run.read_summary()["status"] == "failed"
    assert not [p for p in run.checkpoints.iterdir() if ".tmp-" in p.name], (
        "no half-written file is left"
    )

    res = run_cli("train", "--resume", str(run_dir), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3] and run.state() == "completed"


def test_a_stop_landing_while_the_checkpoint_is_queued_still_keeps_it(
    memory_source, tmp_path, monkeypatch
):
    """Ctrl-C or SIGTERM right after an epoch is logged can arrive while its checkpoint is being
    handed to the background writer: the run still stops with that epoch's checkpoint."""
    from fastres.checkpoint import BackgroundWriter
    from fastres.train import Interrupted

    real_write = BackgroundWriter.write

    def interrupted_write(self, *args, **kwargs):
        monkeypatch.setattr(BackgroundWriter, "write", real_write)  # the signal arrives once
        raise KeyboardInterrupt

    monkeypatch.setattr(BackgroundWriter, "write", interrupted_write)
    cfg = tiny_config(tmp_path)
    with pytest.raises(Interrupted, match="interrupted after epoch 1/3"):
        train(cfg, log=lambda m: None, progress=False)
    run = RunDir(cfg.run_dir)
    assert run.read_summary()["status"] == "interrupted" and [
        r["epoch"] for r in run.read_metrics()
    ] == [1]
    assert load_checkpoint(run.last_checkpoint)["epoch"] == 1


def _fail_fsync_of(monkeypatch, *names: str, after: int = 0) -> None:
    """ENOSPC from fsync for files whose name contains one of ``names``, after ``after`` good
    calls."""
    real, calls = os.fsync, {"n": 0}

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if any(name in target for name in names):
            calls["n"] += 1
            if calls["n"] > after:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_while_logging_keeps_earlier_rows_and_the_first_error(
    memory_source, tmp_path, monkeypatch
):
    cfg = tiny_config(tmp_path)
    run = RunDir(cfg.run_dir)
    # metrics.jsonl fails at epoch 2, and then summary.json fails too.
    _fail_fsync_of(monkeypatch, "metrics.jsonl", "summary.json", after=1)
    with pytest.raises(WriteError) as caught:
        train(cfg, log=lambda m: None, progress=False)
    message = str(caught.value)
    assert message.startswith(
        f"cannot write {run.metrics}: No space left on device (ENOSPC): the disk or quota is full"
    )
    assert f"continue with: fastres train --resume {run.path}" in message
    assert f"(also: cannot write {run.summary}: No space left on device" in message, (
        "the second failure is a note"
    )
    assert caught.value.exit_code == 1
    assert [r["epoch"] for r in run.read_metrics()] == [1] and run.metrics.read_text().endswith(
        "}\n"
    )
    assert load_checkpoint(run.last_checkpoint)["epoch"] >= 1

    monkeypatch.setattr(os, "fsync", REAL_FSYNC)  # space is back
    summary = train(cfg, log=lambda m: None, progress=False, resume=True)
    assert summary["status"] == "completed" and [r["epoch"] for r in run.read_metrics()] == [
        1,
        2,
        3,
    ]


def test_tensorboard_events_that_cannot_be_written_stop_the_run_with_one_line(
    memory_source, tmp_path, monkeypatch
):
    from torch.utils.tensorboard import SummaryWriter

    calls = {"n": 0}
    real_flush = SummaryWriter.flush

    def flush(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_flush(self)

    monkeypatch.setattr(SummaryWriter, "flush", flush)
    cfg = tiny_config(tmp_path)
    with pytest.raises(
        WriteError,
        match=r"cannot write the TensorBoard events in .*tensorboard: No space left on device",
    ):
        train(cfg, log=lambda m: None, progress=False)
    assert RunDir(cfg.run_dir).read_summary()["status"] == "failed"


def test_prepare_data_over_the_file_size_limit_fails_instead_of_hanging(synthetic_source, tmp_path):
    data_dir = tmp_path / "data"
    limit = 2_000_000  # the synthetic train beton is ~6 MB: a writer process hits the limit
    cmd = [
        *FASTRES,
        "prepare-data",
        "--source",
        str(synthetic_source),
        "--data-dir",
        str(data_dir),
        "--allow-small",
    ]
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert res.returncode == 1
    assert one_line(res.stderr) == (
        f"fastres: error: cannot write {data_dir / BETONS['train']}: File too large "
        "(EFBIG): a file-size limit (ulimit -f) was reached"
    )
    assert not data_dir.exists(), "nothing half-written, and no empty folder or lock file left"
    res = run_cli(*cmd[3:])
    assert res.returncode == 0, res.stderr
    assert verify_betons(data_dir)["files"]["train"]["count"] == 2000


@pytest.mark.realdata
def test_a_killed_converter_leaves_no_writer_processes_and_the_next_call_rebuilds(
    real_source, tmp_path
):
    data_dir = tmp_path / "data"
    cmd = [*FASTRES, "prepare-data", "--source", str(real_source), "--data-dir", str(data_dir)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    for line in proc.stdout:
        if "writing" in line:
            break
    deadline = time.monotonic() + 30
    while not [p for p in children_of(proc.pid) if "resource_tracker" not in cmdline(p)]:
        assert time.monotonic() < deadline, "FFCV's writer processes never started"
        time.sleep(0.01)
    time.sleep(0.2)  # all of them
    workers = children_of(proc.pid)
    proc.kill()  # SIGKILL to the main process only, as the OOM killer would
    proc.wait()
    deadline = time.monotonic() + 20
    while [w for w in workers if alive(w)]:
        assert time.monotonic() < deadline, (
            f"orphaned writer processes: {[w for w in workers if alive(w)]}"
        )
        time.sleep(0.05)
    assert not (data_dir / MANIFEST).exists()

    res = run_cli(*cmd[3:])
    assert res.returncode == 0, res.stderr
    assert verify_betons(data_dir)["files"]["train"]["count"] == 50_000
    assert not [p for p in data_dir.iterdir() if ".tmp-" in p.name]


# --- damaged checkpoints ----------------------------------------------------------------------


def flip_a_byte_in_the_largest_tensor(path: Path) -> None:
    """Change one byte of tensor data inside a checkpoint, leaving the file loadable."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        assert info.compress_type == zipfile.ZIP_STORED
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (
            int.from_bytes(f.read(2), "little"),
            int.from_bytes(f.read(2), "little"),
        )
        offset = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def test_a_flipped_byte_in_a_checkpoint_is_refused_by_resume_and_eval(
    memory_source, tmp_path, capsys
):
    cfg = tiny_config(tmp_path, epochs=2)
    train(cfg, log=lambda m: None, progress=False)
    run = RunDir(cfg.run_dir)
    flip_a_byte_in_the_largest_tensor(run.last_checkpoint)
    torch.load(run.last_checkpoint, weights_only=True)  # torch itself does not notice
    before = hashes(run.path)
    for args in (["eval", str(run.path)], ["train", "--resume", str(run.path)]):
        res = run_main(capsys, *args)
        assert res.returncode == 2
        line = one_line(res.stderr)
        assert line.startswith(
            f"fastres: error: checkpoint {run.last_checkpoint} is damaged: its content no longer "
            "matches the checksum written with it"
        )
        assert "fastres eval RUN --checkpoint best" in line
        assert hashes(run.path) == before
    res = run_main(capsys, "eval", str(run.path), "--checkpoint", "best", "--json")
    assert res.returncode == 0, res.stderr
    # The advice works: best.pt copied over last.pt resumes.
    shutil.copyfile(run.best_checkpoint, run.last_checkpoint)
    res = run_main(capsys, "train", "--resume", str(run.path), "--no-progress")
    assert res.returncode == 0, res.stderr


# --- out of memory ----------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "wrapped-by-compile"])
def test_out_of_memory_in_training_is_one_line_with_the_fix(
    memory_source, tmp_path, monkeypatch, wrapped
):
    train_module = importlib.import_module("fastres.train")  # the package attribute is the function
    real_step, calls = train_module.train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20 + 3:  # 20 steps per epoch: epoch 2, step 3
            oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if not wrapped:
                raise oom
            raise RuntimeError("compiled graph failed") from oom  # how torch.compile hands it on
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step)
    cfg = tiny_config(tmp_path)
    with pytest.raises(TrainingFailed) as caught:
        train(cfg, log=lambda m: None, progress=False)
    message = str(caught.value)
    assert message.startswith(
        "out of memory training resnet18 (width 8) at batch size 100 in fp32 on "
    )
    assert "start a new run with a smaller --batch-size (e.g. 50)" in message
    assert f"the last good checkpoint is {RunDir(cfg.run_dir).last_checkpoint}" in message
    assert caught.value.exit_code == 1
    run = RunDir(cfg.run_dir)
    assert (
        run.read_summary()["status"] == "failed"
        and load_checkpoint(run.last_checkpoint)["epoch"] == 1
    )


def test_a_study_leaves_a_run_taken_by_another_process_to_it(tmp_path):
    from fastres.study.planning import PlannedRun, plan
    from fastres.study.pool import run_pool

    # Planned as new, then taken by another process before its turn: the child exits 75.
    (planned,) = plan(["baseline"], seeds=1, out=tmp_path)
    taken = PlannedRun(
        planned.preset,
        planned.seed,
        planned.run_dir,
        planned.config,
        "train",
        "new",
        (sys.executable, "-c", "import sys; print('held by pid 1', file=sys.stderr); sys.exit(75)"),
    )
    lines: list[str] = []
    result = run_pool([taken], log=lines.append, poll_s=0.05)
    assert [r.status for r in result.results] == ["elsewhere"] and not result.failed
    assert any(
        "left baseline/seed42 to the process that holds it: held by pid 1" in line for line in lines
    ), lines


# --- a GPU fault ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["launch failure", "cublas"])
def test_a_gpu_fault_in_training_is_one_line_and_the_run_resumes(
    memory_source, tmp_path, monkeypatch, kind
):
    # As seen on an H200: a kernel inside Muon's step failed after some epochs (BENCHMARKS.md).
    train_module = importlib.import_module("fastres.train")
    real_step, calls = train_module.train_step, {"n": 0}
    text = {
        "launch failure": (
            "CUDA error: unspecified launch failure\nSearch for `cudaErrorLaunchFailure' in ..."
        ),
        "cublas": (
            "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx( handle, ...)`"
        ),
    }[kind]

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20 + 3:  # 20 steps per epoch: epoch 2, step 3
            raise (
                getattr(torch, "AcceleratorError", RuntimeError)(text)
                if kind == "launch failure"
                else RuntimeError(text)
            )
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step)
    cfg = tiny_config(tmp_path)
    run = RunDir(cfg.run_dir)
    with pytest.raises(DeviceFault) as caught:
        train(cfg, log=lambda m: None, progress=False)
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 71
    assert message.startswith(
        f"the GPU failed during epoch 2/3 on {train_module.resolve_runtime(cfg).device_name} "
        f"({text.splitlines()[0]}); the last good checkpoint is {run.last_checkpoint}: "
        f"continue with: fastres train --resume {run.path}"
    )
    assert (
        run.read_summary()["status"] == "failed"
        and load_checkpoint(run.last_checkpoint)["epoch"] == 1
    )

    monkeypatch.setattr(train_module, "train_step", real_step)  # a fresh process, a working GPU
    summary = train(cfg, log=lambda m: None, progress=False, resume=True)
    assert summary["status"] == "completed" and [r["epoch"] for r in run.read_metrics()] == [
        1,
        2,
        3,
    ]
