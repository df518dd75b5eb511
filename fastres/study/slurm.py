"""The submitit launchers: ``slurm`` submits one Slurm job array (a task per run) and returns;
``submitit-local`` runs the same jobs on this machine and waits for them, to try a set-up out.
The jobs themselves (the task, requeueing, the sbatch script) are in ``jobs``."""

from __future__ import annotations

import shlex
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import FastresError
from .jobs import JobOptions, job_options, jobs_folder, run_jobs_here, sbatch_script, submit_array
from .launcher import Launch, Launcher, Outcome, write_study_report
from .planning import PlannedRun, describe_plan
from .records import record


class _SubmititLauncher(Launcher):
    """What both submitit launchers share: the scheduler options, and each run as one job."""

    remote = True

    def options(
        self, scheduler: Mapping[str, Any], *, devices: Sequence[str] | None, runs_per_device: int
    ) -> JobOptions:
        if devices or runs_per_device != 1:
            raise FastresError(
                "--devices and --runs-per-device place runs on this machine; with "
                f"--launcher {self.name} each run is a job: ask for its GPUs with "
                "--gpus-per-run"
            )
        self.require(scheduler)
        return job_options(**scheduler)

    def require(self, scheduler: Mapping[str, Any]) -> None:
        """Refuse a launch without an option this launcher needs."""

    def dry_run(self, runs: Sequence[PlannedRun], out: str, options: JobOptions) -> list[str]:
        lines = [f"# {len(runs)} task(s); each re-reads its run folder when it starts, then runs:"]
        return lines + [f"# task {i}: {run.name}: {run.shell()}" for i, run in enumerate(runs)]


class SlurmLauncher(_SubmititLauncher):
    name = "slurm"
    help = (
        "slurm: one task of a Slurm job array per run, submitted through submitit "
        "(pip install 'fastres[slurm]')"
    )

    def require(self, scheduler: Mapping[str, Any]) -> None:
        if scheduler.get("time_limit") is None:
            raise FastresError(
                "--launcher slurm needs --time-limit (e.g. 4:00:00): each task is "
                "requeued at its limit and resumes, so a limit shorter than a run "
                "only costs a requeue"
            )

    def side_by_side(self, options: Any, runs_per_device: int) -> tuple[int, str] | None:
        return None  # each task has its node's cores to itself

    def dry_run(self, runs: Sequence[PlannedRun], out: str, options: JobOptions) -> list[str]:
        script = []
        if runs:
            script = [
                "# the job array fastres would submit with sbatch (not submitted), logs in "
                f"{jobs_folder(out)}:",
                sbatch_script(runs, out, options),
            ]
        return script + super().dry_run(runs, out, options)

    def launch(self, launch: Launch) -> Outcome:
        out, runs = launch.out, launch.runs
        launch.log(f"ablation in {out}: {describe_plan(runs)}; launcher {self.name}")
        submitted = submit_array(runs, out, launch.options)
        record(out, runs, **launch.study, launcher=self.name, jobs=submitted.jobs)
        if not submitted.jobs:
            return Outcome(summary="nothing to submit: every run is finished or running elsewhere")
        array = next(iter(submitted.jobs.values())).split("_")[0]
        return Outcome(
            jobs=submitted.jobs,
            summary=(
                f"submitted job array {array}: {len(submitted.jobs)} task(s), logs in "
                f"{jobs_folder(out)}. Follow it with: fastres ablate --status {shlex.quote(out)}; "
                f"then fastres report {shlex.quote(out)}"
            ),
        )


class SubmititLocalLauncher(_SubmititLauncher):
    name = "submitit-local"
    help = "submitit-local: the same jobs, run on this machine (to try a setup out)"

    def side_by_side(self, options: JobOptions, runs_per_device: int) -> tuple[int, str] | None:
        return options.max_parallel or 1, "--max-parallel"

    def launch(self, launch: Launch) -> Outcome:
        out, runs = launch.out, launch.runs
        launch.log(f"ablation in {out}: {describe_plan(runs)}; launcher {self.name}")
        launch.on_start()
        study = {**launch.study, "launcher": self.name}
        started = record(out, runs, **study)
        try:
            submitted = run_jobs_here(runs, out, launch.options, log=launch.log)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            return Outcome(
                error="ablation interrupted: its jobs stop cleanly; run the same command "
                "again to resume them",
                exit_code=128 + int(signum),
            )
        record(out, runs, **study, jobs=submitted.jobs, launch=started)
        write_study_report(out, launch.reference, launch.log)
        failed = {name: why for name, why in submitted.results.items() if why.startswith("failed")}
        outcome = Outcome(
            jobs=submitted.jobs,
            problems=[f"fastres: {name}: {why}" for name, why in failed.items()],
        )
        if failed:
            outcome.error = (
                f"{len(failed)} of {len(runs)} runs failed (listed above; logs in "
                f"{jobs_folder(out)}). Fix the cause and run the same command again "
                "to retry them"
            )
            outcome.exit_code = 1
        else:
            outcome.summary = f"ablation finished: {len(submitted.results)} job(s) ended"
        return outcome
