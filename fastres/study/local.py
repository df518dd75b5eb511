"""The ``local`` launcher: the runs go from this process, as its children (``pool``), a few
at a time on this machine's GPUs or CPU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .devices import check_devices, on_cpu
from .launcher import Launch, Launcher, Outcome, write_study_report
from .planning import PlannedRun, describe_plan
from .pool import run_pool
from .records import record


class LocalLauncher(Launcher):
    name = "local"
    help = "local (default): runs go from this process"

    def dry_run(self, runs: Sequence[PlannedRun], out: str, options: Any) -> list[str]:
        # One pasteable command per line: a study can be handed to any scheduler this way.
        return [run.shell() for run in runs]

    def launch(self, launch: Launch) -> Outcome:
        runs = launch.runs
        gpus = check_devices(launch.devices, launch.overrides) if launch.devices else None
        record(launch.out, runs, **launch.study)
        launch.log(
            f"ablation in {launch.out}: {describe_plan(runs)}; "
            f"{_placement(launch, gpus is not None)}"
        )
        launch.on_start()
        result = run_pool(
            runs,
            devices=gpus,
            runs_per_device=launch.runs_per_device,
            log=launch.log,
            retries=launch.retries,
        )
        write_study_report(launch.out, launch.reference, launch.log)
        outcome = Outcome(
            problems=[
                f"fastres: failed: {r.run.name} ({r.run.run_dir}): {r.message}"
                for r in result.failed
            ]
        )
        done = result.count("finished") + result.count("skipped")
        if result.interrupted:
            outcome.error = (
                f"ablation interrupted with {done}/{len(runs)} runs done; run the same "
                "command again to resume the stopped runs"
            )
            outcome.exit_code = 128 + result.signum
        elif result.failed:
            outcome.error = (
                f"{len(result.failed)} of {len(runs)} runs failed (listed above); the "
                "others finished. Fix the cause and run the same command again to "
                "retry them"
            )
            outcome.exit_code = 1
        else:
            elsewhere = result.count("elsewhere")
            outcome.summary = f"ablation finished: {done}/{len(runs)} runs done" + (
                f", {elsewhere} running elsewhere: run the same command again once they finish"
                if elsewhere
                else ""
            )
        return outcome


def _placement(launch: Launch, pinned: bool) -> str:
    """How the runs share the machine, for the study's first line."""
    k, devices = launch.runs_per_device, launch.devices or []
    cpu = on_cpu(devices, launch.overrides)
    if pinned:
        return f"up to {len(devices) * k} at a time, {k} per GPU ({', '.join(devices)})"
    if k > 1 and cpu:
        return f"{k} at a time on the CPU, {launch.overrides['threads']} thread(s) each"
    if cpu:
        return (
            "one after another: on the CPU each run already uses every core "
            "(--runs-per-device K shares them between K runs)"
        )
    if k > 1:
        return f"{k} at a time on the default GPU"
    return "one after another on the default GPU (pass --devices 0,1,... to run one per GPU)"
