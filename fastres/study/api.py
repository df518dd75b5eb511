"""A whole study as one call: ``run_study(StudyRequest(...))`` checks the request, plans the
runs, and prints the plan (``dry_run``) or hands it to its launcher; ``fastres ablate`` is
this call with its options as the request's fields.

```python
from fastres.study import StudyRequest, run_study

result = run_study(StudyRequest(presets=["quick"], seeds=3, variants={"ema": {"ema": 0.99}}))
result.raise_for_failure()  # a FastresError when a run failed or the study was stopped
```
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import FastresError
from ..ffcv_compat import ffcv_available
from ..files import ensure_writable_dir
from ..prepare import verify_betons
from ..presets import get_preset
from ..rundir import STUDY_ROOT
from . import factors, projection
from .devices import check_devices, expand_slots, on_cpu, parse_devices, share_cores
from .launcher import Launch, Launcher, Outcome
from .planning import PlannedRun, ablation_presets, plan, preset_listing
from .registry import get_launcher


@dataclass(frozen=True)
class StudyRequest:
    """What to run: ``fastres ablate``'s options, one field each (docs/studies.md)."""

    presets: Sequence[str] = ()  # --config: preset names or aliases (with ``base``: settings)
    all: bool = False  # --all: the original study's presets (with ``base``: its settings)
    base: str | None = None  # --base: a preset or config file the settings change
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name -> fields
    seeds: int = 1
    seed: int | None = None  # the first seed (default: each preset's own)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig fields, every run
    out: str = STUDY_ROOT
    reuse: Sequence[str] = ()
    interleave: bool = False
    devices: str | None = None  # "0,1,...": GPU indices
    runs_per_device: int = 1
    retries: int = 1
    launcher: str = "local"  # a name in ``registry.LAUNCHERS``
    scheduler: Mapping[str, Any] = field(default_factory=dict)  # launcher.SCHEDULER_OPTIONS given
    dry_run: bool = False
    times_from: Sequence[str] = ()  # with dry_run: folders whose runs project the time


@dataclass
class DryRun:
    """What a dry run shows: ``commands`` for stdout, ``notes`` (comment lines) for stderr."""

    commands: list[str]
    notes: list[str]


@dataclass
class StudyResult:
    """A study's end: its planned runs, and its launcher's ``Outcome`` (or its ``DryRun``)."""

    out: str
    runs: list[PlannedRun]
    launcher: str
    outcome: Outcome = field(default_factory=Outcome)
    dry_run: DryRun | None = None

    def raise_for_failure(self) -> None:
        """A ``FastresError`` (with the exit status the CLI uses) when the study did not end
        as planned: a run failed, or it was stopped."""
        if self.outcome.error:
            raise FastresError(self.outcome.error, exit_code=self.outcome.exit_code)


@dataclass
class _BaseStudy:
    """``--base``: the preset its runs start from, the base, and each setting as a variant."""

    presets: list[str]
    base: factors.Base
    settings: list[str]
    variants: dict[str, Any]


def _base_study(request: StudyRequest, listing: bool = False) -> _BaseStudy | None:
    """``--base``: bad combinations are one-line errors."""
    if request.base is None:
        return None
    if request.variants:
        raise FastresError(
            "--base runs the study's settings as the base's variants; --variant adds "
            "others to a --config preset: drop --variant, or run those variants as "
            "a study of their own"
        )
    settings = (
        list(factors.SETTINGS) if request.all else factors.choose_settings(list(request.presets))
    )
    if not settings and not listing:
        raise FastresError(
            f"--base {request.base} needs the settings to run on it: pass --all, or "
            f"--config with some of {', '.join(factors.SETTINGS)}"
        )
    if listing and not settings:
        settings = list(factors.SETTINGS)
    base = factors.resolve_base(request.base, dict(request.overrides))
    variants = factors.study_variants(base.config, settings, f"--base {request.base}")
    return _BaseStudy([base.preset], base, settings, variants)


def check_base(request: StudyRequest) -> None:
    """A ``FastresError`` for a ``base`` that cannot be read or a bad combination with it."""
    _base_study(request)


def listing(request: StudyRequest) -> str:
    """``--list``: every preset and its differences, or with ``base`` what each setting changes."""
    base = _base_study(request, listing=True)
    return "\n".join(factors.describe(base.base, base.settings)) if base else preset_listing()


@dataclass
class _Planned:
    """A checked request, planned: what ``dry_run`` shows and a launcher gets."""

    request: StudyRequest
    launcher: Launcher
    options: Any
    out: str
    runs: list[PlannedRun]
    overrides: dict[str, Any]
    study: dict[str, Any]
    devices: list[str] | None
    slots: int
    reference: str | None
    base: _BaseStudy | None


def run_study(
    request: StudyRequest,
    *,
    log: Callable[[str], None] = print,
    on_start: Callable[[], None] = lambda: None,
) -> StudyResult:
    """Check the request, plan its runs and launch them (with ``dry_run``: only say what would
    run). ``log`` gets every line of progress; ``on_start`` is called just before runs start
    in this process. Bad input is a ``FastresError`` before anything runs; failed runs and a
    stopped study are in the result (``raise_for_failure``)."""
    planned = _plan(request, log)
    result = StudyResult(planned.out, planned.runs, planned.launcher.name)
    if request.dry_run:
        result.dry_run = _dry_run(planned)
        return result
    if planned.devices:  # the options' own conflicts are named before the data's state
        check_devices(planned.devices, planned.overrides)
    _check_data(planned.runs)
    ensure_writable_dir(planned.out, "ablation folder", "--out")
    result.outcome = planned.launcher.launch(
        Launch(
            out=planned.out,
            runs=planned.runs,
            study=planned.study,
            reference=planned.reference,
            options=planned.options,
            overrides=planned.overrides,
            devices=planned.devices,
            runs_per_device=request.runs_per_device,
            retries=request.retries,
            log=log,
            on_start=on_start,
        )
    )
    return result


def _check_data(runs: Sequence[PlannedRun]) -> None:
    """The prepared data of every run to train, checked once before any starts: missing betons
    would otherwise fail each run in turn with the same line."""
    for loader, data_dir in {(r.config.loader, r.config.data_dir) for r in runs if r.runs_here}:
        if loader == "ffcv" and ffcv_available():
            verify_betons(data_dir, check_hash=False)


def _check(request: StudyRequest) -> None:
    if request.retries < 0:
        raise FastresError(f"--retries must be a whole number >= 0, got {request.retries}")
    if request.times_from and not request.dry_run:
        raise FastresError(
            "--times-from projects a study's time for --dry-run: add --dry-run, or drop it"
        )
    for folder in request.times_from:
        if not Path(folder).is_dir():
            raise FastresError(
                f"--times-from {folder}: no such folder; pass a folder with finished runs"
            )


def _plan(request: StudyRequest, log: Callable[[str], None]) -> _Planned:
    """The request checked and planned, with what the plan noticed said through ``log``."""
    overrides = dict(request.overrides)
    base = _base_study(request)
    _check(request)
    presets = list(request.presets) + (ablation_presets() if request.all else [])
    variants = {k: dict(v) for k, v in request.variants.items()}
    if base is not None:
        presets, variants = base.presets, base.variants
        overrides = {**base.base.changes, **overrides}
    devices = parse_devices(request.devices) if request.devices else None
    slots = expand_slots(devices, request.runs_per_device)
    launcher = get_launcher(request.launcher)
    options = launcher.options(
        {k: v for k, v in request.scheduler.items() if v is not None},
        devices=devices,
        runs_per_device=request.runs_per_device,
    )
    out = request.out
    if launcher.remote:
        # A job starts in another process, perhaps on another machine: paths must not depend
        # on its directory.
        out = str(Path(out).resolve())
        data_dir = overrides.get("data_dir", TrainConfig.data_dir)
        overrides["data_dir"] = str(Path(data_dir).resolve())
    # Runs side by side on the CPU share its cores (more threads than cores slow every run).
    shared = launcher.side_by_side(options, request.runs_per_device)
    if shared is not None and shared[0] > 1 and on_cpu(devices, overrides):
        overrides = share_cores(overrides, shared[0], flag=shared[1])
    runs = plan(
        presets,
        seeds=request.seeds,
        seed=request.seed,
        overrides=overrides,
        out=out,
        devices=slots if request.dry_run and devices else None,
        variants=variants,
        interleave=request.interleave,
        reuse=request.reuse,
    )
    _say_notes(request, runs, log)
    study = {
        "presets": presets,
        "seeds": request.seeds,
        "seed": request.seed,
        "overrides": overrides,
        "variants": variants,
    }
    if base is not None:
        study["rules"] = {n: factors.RULES[n] for n in base.settings if n in factors.RULES}
    # A study of variants compares them with the preset they vary.
    reference = get_preset(presets[0]).preset if variants else None
    return _Planned(
        request,
        launcher,
        options,
        out,
        runs,
        overrides,
        study,
        devices,
        len(slots),
        reference,
        base,
    )


def _say_notes(
    request: StudyRequest, runs: Sequence[PlannedRun], log: Callable[[str], None]
) -> None:
    for run in runs:
        if run.note:
            log(f"not reusing {run.name}: {run.note}")
    if request.interleave and any(r.action == "reuse" for r in runs):
        log(
            "note: the reused runs did not run beside this study's, so the report leaves their "
            "seeds out of paired time ratios; to compare times, run the reference again here "
            "(without --reuse)"
        )


def _dry_run(planned: _Planned) -> DryRun:
    """The commands (or job script) on stdout; what each setting changes, the projected time
    and the runs not to run as comments."""
    notes = []
    if planned.base is not None:
        notes += [
            f"# {line}" for line in factors.describe(planned.base.base, planned.base.settings)
        ]
    request = planned.request
    folders = [*request.times_from, *request.reuse, planned.out]
    notes += _projection(planned.runs, folders, planned.slots, asked=bool(request.times_from))
    for run in planned.runs:
        if run.action == "skip":
            notes.append(f"# {run.run_dir}: already finished")
        elif run.action == "reuse":
            notes.append(f"# {run.name}: finished in {run.run_dir}, reused")
        elif run.action == "elsewhere":
            notes.append(f"# {run.run_dir}: running elsewhere ({run.holder})")
    todo = [r for r in planned.runs if r.runs_here]
    return DryRun(planned.launcher.dry_run(todo, planned.out, planned.options), notes)


def _projection(
    runs: Sequence[PlannedRun], folders: Sequence[str], slots: int, asked: bool
) -> list[str]:
    """The projected training time, as comment lines; with no finished run to project from,
    a word only when ``--times-from`` was ``asked``."""
    todo = [(r.group, r.config, r.config.epochs - r.done_epochs) for r in runs if r.runs_here]
    if not todo:
        return []
    found = projection.project(todo, projection.measure(folders))
    if not found.measured_runs and not asked:
        return []
    existing = [f for f in folders if Path(f).is_dir()]
    return [f"# {line}" for line in projection.describe(found, len(todo), slots, existing)]
