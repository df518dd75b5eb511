"""What a launcher is: the interface every way of running a planned study implements.

A launcher takes a study that is planned already (``planning``) and gets its runs done: in
this process's children (``local``), as submitit jobs (``slurm``), or any other way. It
validates the options it needs, says what it would do (``--dry-run``), and launches. To add
one, write a module with a ``Launcher`` subclass and add it to ``registry.LAUNCHERS``
(docs/studies.md, "A launcher of your own").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import FastresError
from ..formatting import option_flag
from .planning import PlannedRun

# The command line's scheduler options, as ``StudyRequest.scheduler`` keys: only a launcher
# that schedules jobs takes them.
SCHEDULER_OPTIONS = (
    "time_limit",
    "partition",
    "gpus_per_run",
    "cpus_per_run",
    "account",
    "qos",
    "max_parallel",
    "max_requeues",
    "slurm",
)


@dataclass
class Launch:
    """A planned study, handed to a launcher: its runs, where they go, and how to speak."""

    out: str
    runs: list[PlannedRun]
    # ``records.record``'s study fields: presets, seeds, seed, overrides, variants (and rules).
    study: dict[str, Any]
    reference: str | None  # the setting the report compares the others with (None: its default)
    options: Any  # what the launcher's ``options`` returned
    overrides: Mapping[str, Any]  # the TrainConfig fields every run was planned with
    devices: list[str] | None = None  # --devices: GPU indices as this process counts them
    runs_per_device: int = 1
    retries: int = 1
    log: Callable[[str], None] = print
    # Called just before runs start in this process: the CLI installs its signal handlers, so
    # that a scheduler's SIGTERM stops the runs as cleanly as Ctrl-C.
    on_start: Callable[[], None] = lambda: None


@dataclass
class Outcome:
    """How a launch ended. ``error`` (with its ``exit_code``) says why the study did not end
    as planned; ``problems`` are one line per failed run, said before it."""

    summary: str = ""  # the closing line when it did
    problems: list[str] = field(default_factory=list)
    error: str = ""
    exit_code: int = 0
    jobs: dict[str, str] = field(default_factory=dict)  # run name -> the scheduler's job id


class Launcher(ABC):
    """One way to run a study's runs. ``name`` is its ``--launcher`` value."""

    name: str = ""
    help: str = ""  # what it does, for --launcher's help: one clause
    # True when its runs start in other processes, perhaps on other machines: the study's
    # folder and data are then passed as absolute paths.
    remote: bool = False

    def options(
        self, scheduler: Mapping[str, Any], *, devices: Sequence[str] | None, runs_per_device: int
    ) -> Any:
        """This launcher's validated options from the scheduler options given (``scheduler``:
        only those given) and the local placement; a ``FastresError`` for one it cannot take.
        By default it takes no scheduler option."""
        if scheduler:
            raise FastresError(
                f"{option_flag(next(iter(scheduler)))} is a scheduler option: add --launcher slurm "
                "(or submitit-local), or drop it"
            )
        return None

    def side_by_side(self, options: Any, runs_per_device: int) -> tuple[int, str] | None:
        """How many runs share this machine's CPU at a time and the flag that says so (their
        threads then share its cores), or None when its runs run elsewhere."""
        return runs_per_device, "--runs-per-device"

    @abstractmethod
    def dry_run(self, runs: Sequence[PlannedRun], out: str, options: Any) -> list[str]:
        """What ``--dry-run`` prints on stdout for the runs to run (``runs_here``); starts
        nothing."""

    @abstractmethod
    def launch(self, launch: Launch) -> Outcome:
        """Get the runs done (or handed to a scheduler), record the launch in ``study.json``
        (``records.record``) and, when the runs have ended here, write the report
        (``write_study_report``)."""


def write_study_report(out: str, reference: str | None, log: Callable[[str], None]) -> None:
    """Write the study's report.md and plots and say so in one line; a study with nothing to
    report says why."""
    from ..report import write_report

    try:
        data = write_report(out, reference)
        files = data["files"]
        log(
            f"report: {out}/{files['markdown']} (plots {files['val_plot']}, {files['lr_plot']}, "
            f"{files['time_plot']})"
        )
    except FastresError as exc:
        log(f"no report: {exc}")
