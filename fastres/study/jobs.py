"""A study's runs as submitit jobs: one task of a Slurm job array per run (``slurm``), or one
job per run on this machine (``submitit-local``: the same code path, to try a setup out);
the launchers themselves are in ``slurm``.

A task plans its run again when it starts (since it was submitted, another study may have
finished the run or be training it) and runs the same ``fastres train`` command a local study
runs, as a child process whose output goes to the task's log in ``OUT/jobs/``. When Slurm
warns the task that its time is up (``--signal USR2@90``, as submitit asks), the task passes
the signal on; the run checkpoints and writes its summary (status ``interrupted``), and the
task asks submitit to requeue it. The requeued task resumes the run from its ``last.pt``.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FastresError
from ..formatting import duration
from ..processes import die_with_parent, wait_exited
from ..rundir import STUDY_JOBS, RunDir, RunDirBusy
from .planning import PlannedRun, refresh

# sbatch settings fastres makes itself: a --slurm pass-through of one would break the study.
_OWN_SBATCH = frozenset({"array", "output", "error", "open-mode", "signal", "job-name", "wckey"})
_LOCAL_TIME_LIMIT_MIN = 7 * 24 * 60  # submitit-local's default limit is 2 minutes; a run is not
_CHILD_GRACE_S = 60.0  # of Slurm's 90 s warning: for the run to checkpoint and write its summary


@dataclass(frozen=True)
class JobOptions:
    """What a study asks of the scheduler; ``None`` leaves a setting to the cluster's default."""

    time_limit_min: int | None = None
    partition: str | None = None
    gpus_per_run: int = 1
    cpus_per_run: int | None = None
    account: str | None = None
    qos: str | None = None
    max_parallel: int | None = (
        None  # array tasks at once (Slurm's %N); submitit-local: jobs at once
    )
    max_requeues: int = 3  # requeues after reaching the time limit (preemptions always requeue)
    extra: Mapping[str, str] = field(
        default_factory=dict
    )  # --slurm KEY=VALUE, as sbatch --KEY=VALUE


def job_options(
    *,
    time_limit: str | None = None,
    partition: str | None = None,
    gpus_per_run: int | None = None,
    cpus_per_run: int | None = None,
    account: str | None = None,
    qos: str | None = None,
    max_parallel: int | None = None,
    max_requeues: int | None = None,
    slurm: Sequence[str] | None = None,
) -> JobOptions:
    """Validated ``JobOptions`` from the command line's spelling; a ``FastresError`` names a
    bad one."""
    for flag, value, least in (
        ("--gpus-per-run", gpus_per_run, 0),
        ("--cpus-per-run", cpus_per_run, 1),
        ("--max-parallel", max_parallel, 1),
        ("--max-requeues", max_requeues, 0),
    ):
        if value is not None and value < least:
            raise FastresError(f"{flag} must be a whole number >= {least}, got {value}")
    return JobOptions(
        time_limit_min=parse_time_limit(time_limit) if time_limit is not None else None,
        partition=partition,
        gpus_per_run=1 if gpus_per_run is None else gpus_per_run,
        cpus_per_run=cpus_per_run,
        account=account,
        qos=qos,
        max_parallel=max_parallel,
        max_requeues=3 if max_requeues is None else max_requeues,
        extra=parse_extra(slurm or []),
    )


def parse_time_limit(text: str) -> int:
    """Slurm's time formats (``MM``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) -> whole minutes."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise FastresError(
            f"--time-limit takes Slurm's formats (90, 4:00:00, 1-12:00:00), got {text!r}"
        )
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        minutes = days * 1440 + a * 60 + (b or 0) + (1 if c else 0)
    elif b is None:  # MM
        minutes = a
    elif c is None:  # MM:SS
        minutes = a + (1 if b else 0)
    else:  # HH:MM:SS
        minutes = a * 60 + b + (1 if c else 0)
    if minutes < 1:
        raise FastresError(
            f"--time-limit {text} is under a minute: a run needs time to start, train and "
            "checkpoint"
        )
    return minutes


def parse_extra(items: Sequence[str]) -> dict[str, str]:
    """``["mem=32G", "constraint=a100"]`` -> sbatch options; one fastres sets itself is refused."""
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("_", "-")
        if not sep or not key:
            raise FastresError(
                "--slurm takes KEY=VALUE (an sbatch option without its dashes, e.g. mem=32G), got "
                f"{item!r}"
            )
        if key in _OWN_SBATCH:
            raise FastresError(
                f"--slurm {key}=...: fastres sets sbatch's --{key} itself (the job array, its logs "
                "and its warning signal); drop it"
            )
        extra[key] = value
    return extra


# --- the task, in the job ---------------------------------------------------------------


class RunTask:
    """One planned run as a submitit task. Picklable (it holds only the plan), and
    checkpointable in submitit's sense: ``checkpoint`` is what submitit calls on Slurm's warning."""

    def __init__(self, run: PlannedRun) -> None:
        self.run = run
        self._child: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"run": self.run, "_child": None}

    def __call__(self) -> dict[str, Any]:
        run = refresh(self.run)
        if not run.runs_here:
            what = "finished" if run.action == "skip" else f"running elsewhere ({run.holder})"
            print(f"fastres: {run.name} is {what}: nothing to do", flush=True)
            return {"run": run.name, "status": "skipped" if run.action == "skip" else "elsewhere"}
        print(f"fastres: {run.name}: {shlex.join(run.command)}", flush=True)
        started = time.monotonic()
        parent = os.getpid()
        self._child = subprocess.Popen(
            run.command,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=lambda: die_with_parent(signal.SIGTERM, parent),
        )
        # poll, not wait: wait would hold the lock that checkpoint's look at the child needs.
        while (code := self._child.poll()) is None:
            time.sleep(0.5)
        state = RunDir(run.run_dir).state()
        if code == 0 and state == "completed":
            return {"run": run.name, "status": "finished", "seconds": time.monotonic() - started}
        if code == RunDirBusy.exit_code:
            return {"run": run.name, "status": "elsewhere"}
        raise FastresError(
            f"{run.name} ended with exit status {code} (run state {state}); its output is above. "
            f"Continue it with: {shlex.join(run.resume_command)}"
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Stop the run cleanly (it checkpoints and writes its summary) and hand submitit a
        fresh task for the requeued job, which resumes the run."""
        from submitit.helpers import DelayedSubmission

        child = self._child
        if child is not None and child.returncode is None:
            # Slurm may have signalled the run itself; a second signal is ignored there.
            child.send_signal(signal.SIGUSR2)
            if not wait_exited(child.pid, _CHILD_GRACE_S):
                print(
                    f"fastres: {self.run.name} did not stop within {_CHILD_GRACE_S:.0f} s; "
                    "requeued anyway (it resumes from its last checkpoint)",
                    flush=True,
                )
        return DelayedSubmission(RunTask(self.run))


# --- submitting ---------------------------------------------------------------------------


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise FastresError(
            "this launcher needs submitit, which is not installed: pip install 'fastres[slurm]' "
            "(or pip install submitit)"
        ) from None
    return submitit


def jobs_folder(out: str | Path) -> Path:
    return Path(out) / STUDY_JOBS


def _slurm_parameters(options: JobOptions, out: Path) -> dict[str, Any]:
    params: dict[str, Any] = {
        "time": options.time_limit_min,
        "job_name": f"fastres-{out.resolve().name}",
        "stderr_to_stdout": True,
    }
    if options.gpus_per_run:
        params["gpus_per_node"] = options.gpus_per_run
    for key, value in (
        ("partition", options.partition),
        ("cpus_per_task", options.cpus_per_run),
        ("account", options.account),
        ("qos", options.qos),
        ("array_parallelism", options.max_parallel),
    ):
        if value is not None:
            params[key] = value
    if options.extra:
        params["additional_parameters"] = dict(options.extra)
    return params


def sbatch_script(runs: Sequence[PlannedRun], out: str | Path, options: JobOptions) -> str:
    """The sbatch script ``submit`` would hand to Slurm for these runs (for ``--dry-run``)."""
    _submitit()  # a missing submitit is one line, before its import below fails
    from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor itself writes

    folder = jobs_folder(out)
    command = (
        f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    )
    params = _slurm_parameters(options, Path(out))
    return _make_sbatch_string(command=command, folder=folder, map_count=len(runs), **params)


@dataclass
class Submitted:
    """What ``submit`` started: a job id per run name, and for ``submitit-local`` the outcome."""

    jobs: dict[str, str]
    results: dict[str, str] = field(
        default_factory=dict
    )  # run name -> finished | skipped | elsewhere | failed: ...


def submit_array(runs: Sequence[PlannedRun], out: str | Path, options: JobOptions) -> Submitted:
    """Submit the runs to run here (``runs_here``) as one Slurm job array through submitit;
    returns each run's task id."""
    submitit = _submitit()
    out = Path(out)
    todo = [r for r in runs if r.runs_here]
    if not todo:
        return Submitted({})
    folder = jobs_folder(out)
    params = _slurm_parameters(options, out)
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=options.max_requeues)
    except RuntimeError as exc:  # no srun: not on a Slurm cluster
        raise FastresError(
            f"--launcher slurm: {exc} (run it on a Slurm login node, or use --dry-run to see "
            "the job script)"
        ) from None
    executor.update_parameters(**params)
    try:
        jobs = executor.submit_array([RunTask(r) for r in todo])
    except (
        OSError,
        subprocess.CalledProcessError,
        submitit.core.utils.FailedJobError,
        submitit.core.utils.FailedSubmissionError,
    ) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise FastresError(
            f"sbatch did not take the job array: {lines[0] if lines else type(exc).__name__} "
            f"(nothing was submitted; the job script is in {folder})"
        ) from None
    return Submitted({r.name: str(j.job_id) for r, j in zip(todo, jobs, strict=True)})


def run_jobs_here(
    runs: Sequence[PlannedRun],
    out: str | Path,
    options: JobOptions,
    *,
    log: Callable[[str], None] = print,
) -> Submitted:
    """Run the runs to run here (``runs_here``) as submitit jobs on this machine, up to
    ``max_parallel`` at a time (default one); returns when all have ended."""
    submitit = _submitit()
    todo = [r for r in runs if r.runs_here]
    if not todo:
        return Submitted({})
    return _run_locally(submitit, todo, jobs_folder(out), options, log)


def _run_locally(
    submitit: Any,
    todo: Sequence[PlannedRun],
    folder: Path,
    options: JobOptions,
    log: Callable[[str], None],
) -> Submitted:
    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=options.max_requeues)
    executor.update_parameters(
        timeout_min=options.time_limit_min or _LOCAL_TIME_LIMIT_MIN,
        stderr_to_stdout=True,
        gpus_per_node=options.gpus_per_run if _cuda_count() else 0,
    )
    slots = max(1, options.max_parallel or 1)
    pending = list(todo)
    running: list[tuple[PlannedRun, Any, float]] = []
    done = Submitted({})
    try:
        while pending or running:
            while pending and len(running) < slots:
                run = pending.pop(0)
                job = executor.submit(RunTask(run))
                done.jobs[run.name] = str(job.job_id)
                running.append((run, job, time.monotonic()))
                log(f"{run.name}: job {job.job_id} started (log {job.paths.stdout})")
            time.sleep(0.5)
            for item in [i for i in running if i[1].done()]:
                running.remove(item)
                run, job, started = item
                done.results[run.name] = _outcome(job)
                log(
                    f"{run.name}: job {job.job_id} {done.results[run.name]} after "
                    f"{duration(time.monotonic() - started)}"
                )
    except KeyboardInterrupt:
        for (
            _,
            job,
            _,
        ) in running:  # each run stops cleanly: its task's end signals it (die_with_parent)
            job.cancel(check=False)
        raise
    return done


def _outcome(job: Any) -> str:
    try:
        result = job.result()
    except Exception as exc:  # noqa: BLE001 - the job's error, reported as its last line
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        return "failed: " + (lines[-1].strip() if lines else type(exc).__name__)
    return str(result.get("status", "finished"))


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()
