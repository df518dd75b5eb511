"""A study's plan: one run per (setting, seed), each with the exact ``fastres train`` command.

Every run is an ordinary ``fastres train`` subprocess writing an ordinary run directory,
``<out>/<setting>/seed<S>/``; the command that runs is exactly the one ``--dry-run`` prints, so
a study can equally be handed to a job scheduler line by line. Whether a run is new, finished
or to be resumed is read from its run directory (``RunDir.state``), so planning the same
study again is always safe: finished runs are skipped and interrupted ones continue.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import MACHINE_FIELDS, TrainConfig, describe_differences, recipe_differences
from ..config_options import option_args
from ..errors import FastresError
from ..formatting import compact, option_flag
from ..presets import (
    ABLATIONS,
    ALIASES,
    DESCRIPTIONS,
    get_preset,
    preset_differences,
    preset_names,
)
from ..rundir import STUDY_JOBS, STUDY_ROOT, RunDir
from .reuse import EarlierRuns

TRAIN = [sys.executable, "-m", "fastres", "train"]


def ablation_presets() -> list[str]:
    """The seven presets of the original study's ablation table (``--all``)."""
    return list(ABLATIONS)


@dataclass(frozen=True)
class PlannedRun:
    """One (preset, seed) of a study: where it lives, what is to be done, the exact command."""

    preset: str  # the preset it starts from; a variant's name is its setting
    seed: int
    run_dir: Path
    config: TrainConfig
    # "train" (new), "resume" (interrupted), "skip" (finished), "elsewhere" (held by another
    # process), "reuse" (finished in an earlier study's folder: run_dir is there)
    action: str
    state: str  # RunDir.state() before this study touched it
    command: tuple[str, ...]
    done_epochs: int = 0
    device: str | None = None  # CUDA_VISIBLE_DEVICES of the child in a --dry-run with --devices
    holder: str = ""  # for "elsewhere": the process that holds the run directory
    resume_command: tuple[str, ...] = ()  # continues the run, should it be begun meanwhile
    setting: str = ""  # the folder it lives in: the preset's name, or a --variant's
    note: str = ""  # why an earlier study's run of it was not reused

    @property
    def runs_here(self) -> bool:
        return self.action in ("train", "resume")

    @property
    def group(self) -> str:
        """Its setting: the preset, or the variant of it."""
        return self.setting or self.preset

    @property
    def name(self) -> str:
        return f"{self.group}/seed{self.seed}"

    def shell(self) -> str:
        """The command as one pasteable shell line (with its GPU pinning, if any)."""
        prefix = f"CUDA_VISIBLE_DEVICES={self.device} " if self.device is not None else ""
        return prefix + shlex.join(self.command)


def plan(
    presets: Sequence[str],
    *,
    seeds: int = 1,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    out: str | Path = STUDY_ROOT,
    devices: Sequence[str] | None = None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    interleave: bool = False,
    reuse: Sequence[str | Path] = (),
) -> list[PlannedRun]:
    """The runs of a study, in order (preset by preset, seeds ascending; with ``interleave``
    seed by seed, every setting's run of one seed before the next seed's), each with its command.

    ``presets`` are preset names or aliases; ``seed`` is the first seed (default: each
    preset's own); ``overrides`` are TrainConfig fields applied to every run. ``variants``
    (name -> TrainConfig fields) adds, for one preset, each named variant of it over the same
    seeds, in ``OUT/<name>/seed<S>``, next to the preset's own runs (their reference). Bad
    input and run directories that hold a different recipe raise ``FastresError`` before
    anything runs. ``devices`` only labels the commands (round robin) for ``--dry-run`` output.
    A run not begun in ``out`` that finished with the same recipe and seed in one of the
    ``reuse`` folders (earlier studies' ``--out``; see ``EarlierRuns``) is not trained again: it
    is planned as ``reuse``, pointing there.
    """
    overrides = dict(overrides or {})
    variants = {k: dict(v) for k, v in (variants or {}).items()}
    names = _check_study(presets, seeds, overrides)
    _check_variants(names, variants)
    _check_out(Path(out))
    earlier = EarlierRuns(reuse, Path(out))
    settings = [(name, name, {}) for name in names] + [
        (v, names[0], o) for v, o in variants.items()
    ]
    runs: list[PlannedRun] = []
    conflicts: list[str] = []
    for setting, name, extra in settings:
        base = get_preset(name)
        first = base.seed if seed is None else seed
        changes = {**overrides, **extra}
        for s in range(first, first + seeds):
            planned = _plan_run(
                name, s, base.replace(**changes, seed=s), changes, Path(out), setting, earlier
            )
            if isinstance(planned, str):
                conflicts.append(planned)
            else:
                runs.append(planned)
    if conflicts:
        raise FastresError(
            f"{len(conflicts)} run folder(s) hold a different recipe than this study: "
            f"{conflicts[0]}{' and others' if len(conflicts) > 1 else ''}; pass another --out, or "
            "the options those runs used"
        )
    if interleave:  # a machine whose speed drifts then slows every setting alike
        runs.sort(key=lambda r: r.seed)
    if devices:
        todo = [r for r in runs if r.runs_here]
        for i, r in enumerate(todo):
            runs[runs.index(r)] = dataclasses.replace(r, device=devices[i % len(devices)])
    return runs


def _check_out(out: Path) -> None:
    """A study's folder is not inside a run directory: the study would write its files among
    the run's and count that unrelated run as one of its own."""
    try:
        resolved = out.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise FastresError(f"--out {out}: {exc}; pass another folder") from None
    for folder in (resolved, *resolved.parents):
        if RunDir(folder).holds_run():
            where = (
                "is a run directory"
                if folder == resolved
                else f"is inside the run directory {folder}"
            )
            raise FastresError(
                f"--out {out} {where}: a study's runs and report would mix with that run's "
                f"files; pass a folder outside any run, e.g. --out {STUDY_ROOT}"
            )


def _check_study(presets: Sequence[str], seeds: int, overrides: Mapping[str, Any]) -> list[str]:
    """The canonical preset names of a study, once each; a FastresError for bad input."""
    if not presets:
        raise FastresError(
            "no presets chosen: pass --config NAME [NAME ...] or --all (see fastres ablate --list)"
        )
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise FastresError(f"--seeds must be a whole number >= 1, got {seeds!r}")
    if seeds > MAX_SEEDS:
        raise FastresError(
            f"--seeds must be at most {MAX_SEEDS}, got {seeds}: a study of more runs per setting "
            "is several studies on one --out"
        )
    for key in ("run_dir", "preset", "seed"):
        if key in overrides:
            what = {
                "run_dir": "each run's directory is <out>/<preset>/seed<S>: pass --out instead",
                "preset": "pass presets with --config or --all",
                "seed": "pass the first seed as seed=, not in overrides",
            }[key]
            raise FastresError(f"{key} cannot be overridden in an ablation: {what}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise FastresError(f"unknown training option(s) {', '.join(unknown)}")
    # get_preset raises with the valid names for an unknown one.
    return list(dict.fromkeys(get_preset(p).preset for p in presets))


MAX_SEEDS = 1000  # runs per setting: more is a typo, and its plan alone would fill the memory
_VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def _check_variants(presets: Sequence[str], variants: Mapping[str, Mapping[str, Any]]) -> None:
    if not variants:
        return
    if len(presets) != 1:
        raise FastresError(
            f"--variant varies one preset, and {len(presets)} were chosen ({', '.join(presets)}): "
            "pass a single --config NAME"
        )
    for name, changes in variants.items():
        if not _VARIANT_NAME.fullmatch(name) or name in (STUDY_JOBS, presets[0]):
            raise FastresError(
                f"variant name {name!r} cannot name a folder of the study: use letters, digits and "
                f'_.+- (not {presets[0]!r} or {STUDY_JOBS!r}), e.g. --variant ema:"--ema 0.99"'
            )
        if not changes:
            raise FastresError(
                f'variant {name!r} changes nothing: give it options, e.g. --variant {name}:"--ema '
                f'0.99"'
            )
        for key, why in (
            (
                "seed",
                "every setting runs over the same seeds: pass --seed to fastres ablate itself",
            ),
            ("run_dir", "its runs go to OUT/" + name + "/seed<S>: pass --out to fastres ablate"),
        ):
            if key in changes:
                raise FastresError(f"--variant {name} cannot set {option_flag(key)}: {why}")
        _check_study(presets, 1, changes)


def _plan_run(
    preset: str,
    seed: int,
    config: TrainConfig,
    overrides: Mapping[str, Any],
    out: Path,
    setting: str = "",
    earlier: EarlierRuns | None = None,
) -> PlannedRun | str:
    """What to do with one (preset, seed), read from its run directory (or, when it has none,
    from an ``earlier`` study's); or, when it holds another recipe, a description of
    the conflict."""
    setting = setting or preset
    run_dir = out / setting / f"seed{seed}"
    config = config.replace(run_dir=str(run_dir))
    # Only machine settings may change on a resume; the recipe is the recorded one.
    machine = {k: v for k, v in overrides.items() if k in MACHINE_FIELDS}
    resume = (*TRAIN, "--resume", str(run_dir), *option_args(machine))
    run = RunDir(run_dir)
    state = run.state()

    def planned(
        action: str, command: tuple[str, ...] = (), done: int = 0, **more: Any
    ) -> PlannedRun:
        return PlannedRun(
            preset,
            seed,
            run_dir,
            config,
            action,
            state,
            command,
            done,
            resume_command=resume,
            setting=setting,
            **more,
        )

    if state == "new":
        found, note = earlier.find(config, setting) if earlier is not None else (None, "")
        if found is not None:
            at = RunDir(found)
            return PlannedRun(
                preset,
                seed,
                found,
                config.replace(run_dir=str(found)),
                "reuse",
                at.state(),
                (),
                len(at.read_metrics()),
                setting=setting,
            )
        command = (
            *TRAIN,
            "--preset",
            preset,
            "--seed",
            str(seed),
            *option_args(overrides),
            "--run-dir",
            str(run_dir),
        )
        return planned("train", command, note=note)
    diffs = recipe_differences(TrainConfig.from_dict(run.read_config()), config)
    if diffs:
        return f"{run_dir} ({describe_differences(diffs, 'planned')})"
    done = len(run.read_metrics())
    if state == "running":
        # Another process trains it (a second sweep, a requeued job): not ours to start.
        return planned("elsewhere", (), done, holder=run.describe_holder())
    if state in ("completed", "diverged"):
        # A diverged run is a result: the same recipe and seed would diverge again.
        return planned("skip", (), done)
    return planned("resume", resume, done)


def refresh(run: PlannedRun) -> PlannedRun:
    """The run as its directory stands now, just before it would start: another study on the
    same folder may have finished it, be training it, or have begun it since it was planned."""
    rd = RunDir(run.run_dir)
    state = rd.state()
    if state == run.state or state == "new":
        return run
    done = len(rd.read_metrics())
    if state == "running":
        return dataclasses.replace(
            run, action="elsewhere", state=state, command=(), holder=rd.describe_holder()
        )
    if state in ("completed", "diverged"):
        return dataclasses.replace(run, action="skip", state=state, command=(), done_epochs=done)
    return dataclasses.replace(
        run, action="resume", state=state, command=run.resume_command, done_epochs=done
    )


def describe_plan(runs: Sequence[PlannedRun]) -> str:
    """One line: how many runs, presets, seeds, and what will happen to them."""
    settings = list(dict.fromkeys(r.group for r in runs))
    counts = {
        a: sum(r.action == a for r in runs)
        for a in ("train", "resume", "skip", "elsewhere", "reuse")
    }
    elsewhere = f", {counts['elsewhere']} running elsewhere" if counts["elsewhere"] else ""
    reused = f", {counts['reuse']} reused from earlier studies" if counts["reuse"] else ""
    return (
        f"{len(runs)} run(s) ({len(settings)} setting(s) x {len(runs) // max(1, len(settings))} "
        f"seed(s)): {counts['train']} to train, {counts['resume']} to resume, {counts['skip']} "
        f"already finished{reused}{elsewhere}"
    )


def preset_listing() -> str:
    """Every preset with its one-line description and its differences from ``baseline``."""
    lines = []
    width = max(len(n) for n in preset_names())
    for name in preset_names():
        diffs = preset_differences(name)
        changes = ", ".join(f"{k} {compact(a)} -> {compact(b)}" for k, (a, b) in diffs.items())
        lines.append(f"{name:<{width}}  {DESCRIPTIONS[name]}")
        lines.append(f"{'':<{width}}  vs baseline: {changes or 'none (the reference)'}")
    lines.append("aliases: " + ", ".join(f"{a} = {t}" for a, t in ALIASES.items()))
    lines.append("--all runs the ablation presets: " + ", ".join(ABLATIONS))
    return "\n".join(lines)
