"""Multi-seed ablations: plan one run per (preset, seed), run them, resume and skip as needed.

Every run is an ordinary ``fastres train`` subprocess writing an ordinary run directory,
``<out>/<preset>/seed<S>/``; the command that runs is exactly the one ``--dry-run`` prints, so
a study can equally be handed to a job scheduler line by line. Whether a run is new, finished
or to be resumed is read from its run directory (``RunDir.state``), so re-running the same
command is always safe: finished runs are skipped and interrupted ones continue.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import contention
from .config import (
    ABLATIONS,
    ALIASES,
    DESCRIPTIONS,
    MACHINE_FIELDS,
    TrainConfig,
    describe_differences,
    get_preset,
    option_args,
    option_flag,
    preset_differences,
    preset_names,
    recipe_differences,
)
from .errors import DeviceFault, FastresError
from .formatting import compact, duration
from .record import EditedRun, read_config
from .rundir import STUDY_JOBS, STUDY_ROOT, RunDir, RunDirBusy, find_runs, read_study, record_study

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


def plan_ablation(presets: Sequence[str], *, seeds: int = 1, seed: int | None = None,
                  overrides: Mapping[str, Any] | None = None, out: str | Path = STUDY_ROOT,
                  devices: Sequence[str] | None = None,
                  variants: Mapping[str, Mapping[str, Any]] | None = None,
                  interleave: bool = False, reuse: Sequence[str | Path] = ()) -> list[PlannedRun]:
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
    settings = [(name, name, {}) for name in names] + [(v, names[0], o) for v, o in variants.items()]
    runs: list[PlannedRun] = []
    conflicts: list[str] = []
    for setting, name, extra in settings:
        base = get_preset(name)
        first = base.seed if seed is None else seed
        changes = {**overrides, **extra}
        for s in range(first, first + seeds):
            planned = _plan_run(name, s, base.replace(**changes, seed=s), changes, Path(out), setting, earlier)
            if isinstance(planned, str):
                conflicts.append(planned)
            else:
                runs.append(planned)
    if conflicts:
        raise FastresError(
            f"{len(conflicts)} run folder(s) hold a different recipe than this study: {conflicts[0]}"
            f"{' and others' if len(conflicts) > 1 else ''}; pass another --out, or the options those runs used"
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
            where = "is a run directory" if folder == resolved else f"is inside the run directory {folder}"
            raise FastresError(f"--out {out} {where}: a study's runs and report would mix with that run's "
                               f"files; pass a folder outside any run, e.g. --out {STUDY_ROOT}")


def _check_study(presets: Sequence[str], seeds: int, overrides: Mapping[str, Any]) -> list[str]:
    """The canonical preset names of a study, once each; a FastresError for bad input."""
    if not presets:
        raise FastresError("no presets chosen: pass --config NAME [NAME ...] or --all (see fastres ablate --list)")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise FastresError(f"--seeds must be a whole number >= 1, got {seeds!r}")
    if seeds > MAX_SEEDS:
        raise FastresError(f"--seeds must be at most {MAX_SEEDS}, got {seeds}: a study of more runs per setting "
                           "is several studies on one --out")
    for key in ("run_dir", "preset", "seed"):
        if key in overrides:
            what = {"run_dir": "each run's directory is <out>/<preset>/seed<S>: pass --out instead",
                    "preset": "pass presets with --config or --all",
                    "seed": "pass the first seed as seed=, not in overrides"}[key]
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
        raise FastresError(f"--variant varies one preset, and {len(presets)} were chosen ({', '.join(presets)}): "
                           "pass a single --config NAME")
    for name, changes in variants.items():
        if not _VARIANT_NAME.fullmatch(name) or name in (STUDY_JOBS, presets[0]):
            raise FastresError(f"variant name {name!r} cannot name a folder of the study: use letters, digits and "
                               f"_.+- (not {presets[0]!r} or {STUDY_JOBS!r}), e.g. --variant ema:\"--ema 0.99\"")
        if not changes:
            raise FastresError(f"variant {name!r} changes nothing: give it options, e.g. --variant {name}:\"--ema 0.99\"")
        for key, why in (("seed", "every setting runs over the same seeds: pass --seed to fastres ablate itself"),
                         ("run_dir", "its runs go to OUT/" + name + "/seed<S>: pass --out to fastres ablate")):
            if key in changes:
                raise FastresError(f"--variant {name} cannot set {option_flag(key)}: {why}")
        _check_study(presets, 1, changes)


class EarlierRuns:
    """The finished runs (completed or diverged) at or below earlier studies' folders
    (``--reuse``), found by recipe and seed: a run is the same run whatever its study named it."""

    def __init__(self, folders: Sequence[str | Path] = (), out: Path | None = None) -> None:
        self.folders = [Path(f) for f in folders]
        for folder in self.folders:
            if not folder.is_dir():
                what = "is a file, not a folder" if folder.exists() else "no such folder"
                raise FastresError(f"--reuse {folder}: {what}; pass the --out folder of an earlier study")
            if out is not None and folder.resolve() == out.resolve():
                raise FastresError(f"--reuse {folder} is this study's own --out: its finished runs are skipped "
                                   "anyway; pass an earlier study's folder")
        self._by_recipe: dict[str, list[Path]] = {}
        self._edited: dict[Path, str] = {}  # finished runs whose config.json was edited since
        for folder in self.folders:
            for rd in find_runs(folder):
                try:
                    if rd.state() in ("completed", "diverged"):
                        key = _recipe_key(read_config(rd))
                        self._by_recipe.setdefault(key, []).append(rd.path)
                except EditedRun as exc:
                    self._edited[rd.path] = str(exc).split(":")[0]
                except FastresError:  # not a run this fastres can read: not one to reuse
                    continue

    def find(self, config: TrainConfig, setting: str) -> tuple[Path | None, str]:
        """The run directory of a finished run with ``config``'s recipe and seed (one in a
        folder named like ``setting`` first, then the first folder's), else None and why the
        run of that name found there, if any, was not taken."""
        paths = self._by_recipe.get(_recipe_key(config), [])
        name = (setting, f"seed{config.seed}")
        if paths:
            return next((p for p in paths if p.parts[-2:] == name), paths[0]), ""
        why = []
        for folder in self.folders:
            candidate = RunDir(folder.joinpath(*name))
            state = candidate.state()
            if candidate.path in self._edited:
                why.append(self._edited[candidate.path])
            elif state in ("completed", "diverged"):
                diffs = recipe_differences(TrainConfig.from_dict(candidate.read_config()), config)
                why.append(f"{candidate.path} has another recipe: {describe_differences(diffs, 'planned')}")
            elif state != "new":
                why.append(f"{candidate.path} is {state}")
        return None, "; ".join(why)


def _recipe_key(config: TrainConfig) -> str:
    return json.dumps(config.recipe(), sort_keys=True, default=list)


def _plan_run(preset: str, seed: int, config: TrainConfig, overrides: Mapping[str, Any],
              out: Path, setting: str = "", earlier: EarlierRuns | None = None) -> PlannedRun | str:
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
    if state == "new":
        found, note = earlier.find(config, setting) if earlier is not None else (None, "")
        if found is not None:
            return PlannedRun(preset, seed, found, config.replace(run_dir=str(found)), "reuse", RunDir(found).state(), (),
                              len(RunDir(found).read_metrics()), setting=setting)
        command = (*TRAIN, "--preset", preset, "--seed", str(seed), *option_args(overrides), "--run-dir", str(run_dir))
        return PlannedRun(preset, seed, run_dir, config, "train", state, command, resume_command=resume,
                          setting=setting, note=note)
    diffs = recipe_differences(TrainConfig.from_dict(run.read_config()), config)
    if diffs:
        return f"{run_dir} ({describe_differences(diffs, 'planned')})"
    done = len(run.read_metrics())
    if state == "running":
        # Another process trains it (a second sweep, a requeued job): not ours to start.
        return PlannedRun(preset, seed, run_dir, config, "elsewhere", state, (), done, holder=run.describe_holder(),
                          resume_command=resume, setting=setting)
    if state in ("completed", "diverged"):
        # A diverged run is a result: the same recipe and seed would diverge again.
        return PlannedRun(preset, seed, run_dir, config, "skip", state, (), done, resume_command=resume, setting=setting)
    return PlannedRun(preset, seed, run_dir, config, "resume", state, resume, done, resume_command=resume, setting=setting)


def refresh(run: PlannedRun) -> PlannedRun:
    """The run as its directory stands now, just before it would start: another study on the
    same folder may have finished it, be training it, or have begun it since it was planned."""
    rd = RunDir(run.run_dir)
    state = rd.state()
    if state == run.state or state == "new":
        return run
    done = len(rd.read_metrics())
    if state == "running":
        return dataclasses.replace(run, action="elsewhere", state=state, command=(), holder=rd.describe_holder())
    if state in ("completed", "diverged"):
        return dataclasses.replace(run, action="skip", state=state, command=(), done_epochs=done)
    return dataclasses.replace(run, action="resume", state=state, command=run.resume_command, done_epochs=done)


def parse_devices(text: str) -> list[str]:
    """``"0,1,3"`` -> ``["0", "1", "3"]``: GPU indices as CUDA_VISIBLE_DEVICES takes them."""
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise FastresError(f"--devices takes distinct GPU indices such as 0,1,2,3, got {text!r}")
    return parts


def expand_slots(devices: Sequence[str] | None, runs_per_device: int) -> list[str | None]:
    """Where the runs that go at the same time run: each device ``runs_per_device`` times,
    interleaved so consecutive runs land on different GPUs; ``None`` is the default device."""
    if isinstance(runs_per_device, bool) or not isinstance(runs_per_device, int) or runs_per_device < 1:
        raise FastresError(f"--runs-per-device must be a whole number >= 1, got {runs_per_device!r}")
    return [d for _ in range(runs_per_device) for d in (devices or [None])]


def share_cores(overrides: Mapping[str, Any], runs_per_device: int, cores: int | None = None,
                flag: str = "--runs-per-device") -> dict[str, Any]:
    """The overrides for ``runs_per_device`` runs side by side on the CPU: each gets its share
    of the cores as ``threads`` (a machine field, so it never stands in the way of a resume),
    unless ``threads`` was given."""
    cores = cores or len(os.sched_getaffinity(0))
    if runs_per_device > cores:
        raise FastresError(f"{flag} {runs_per_device} on {cores} CPU core(s): each run needs a core of its "
                           f"own, pass at most {flag} {cores}")
    if "threads" in overrides or runs_per_device == 1:
        return dict(overrides)
    return {**overrides, "threads": cores // runs_per_device}


def check_devices(devices: Sequence[str], overrides: Mapping[str, Any]) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value for each requested GPU index; refuse ones not there.

    Indices count the GPUs this process sees, so they are mapped through an inherited
    CUDA_VISIBLE_DEVICES (``--devices 0`` under ``CUDA_VISIBLE_DEVICES=2,3`` pins GPU 2).
    """
    import torch

    if overrides.get("device") == "cpu":
        raise FastresError("--devices pins runs to GPUs, but --device cpu was given: drop one of them")
    count = torch.cuda.device_count()
    if count == 0:
        raise FastresError("--devices needs CUDA GPUs, and none is visible: drop --devices to run on the CPU")
    bad = [d for d in devices if int(d) >= count]
    if bad:
        raise FastresError(f"--devices {','.join(bad)}: only {count} GPU(s) visible (indices 0..{count - 1})")
    inherited = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return [inherited[int(d)] if len(inherited) > int(d) else d for d in devices]


# --- running ---------------------------------------------------------------------------


@dataclass
class RunResult:
    run: PlannedRun
    status: str  # "skipped", "finished", "failed", "interrupted", "elsewhere" (held by another process)
    seconds: float = 0.0
    returncode: int | None = None
    message: str = ""


@dataclass
class AblationResult:
    results: list[RunResult] = field(default_factory=list)
    interrupted: bool = False
    signum: int = 0  # the signal that stopped the study (SIGINT, SIGTERM, SIGUSR1/2), when interrupted

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.results if r.status == "failed"]


class _Eta:
    """Time left, from the epoch times the study's runs have logged so far.

    A preset not yet seen is assumed to cost the mean of the seen ones, so the estimate is
    rough until every preset has run an epoch. Start-up (interpreter, data, first epoch's
    warm-up) is added per run from the runs measured so far.
    """

    def __init__(self, runs: Sequence[PlannedRun], slots: int) -> None:
        self.runs, self.slots = list(runs), max(1, slots)
        self.overheads: list[float] = []

    def epoch_seconds(self) -> dict[str, list[float]]:
        seen: dict[str, list[float]] = {}
        for run in self.runs:
            for row in RunDir(run.run_dir).read_metrics():
                seen.setdefault(run.group, []).append(float(row["epoch_time_s"]))
        return seen

    def left(self, pending: Sequence[PlannedRun]) -> float | None:
        seen = self.epoch_seconds()
        if not seen:
            return None
        per_preset = {p: sum(v) / len(v) for p, v in seen.items()}
        fallback = sum(per_preset.values()) / len(per_preset)
        overhead = sum(self.overheads) / len(self.overheads) if self.overheads else 0.0
        total = 0.0
        for run in pending:
            left_epochs = run.config.epochs - len(RunDir(run.run_dir).read_metrics())
            total += max(0, left_epochs) * per_preset.get(run.group, fallback) + overhead
        return total / self.slots


class _Child:
    """A running ``fastres train``: its process, output readers and last error line."""

    def __init__(self, run: PlannedRun, device: str | None, log: Callable[[str], None],
                 on_epoch: Callable[[], None]) -> None:
        self.run, self.device, self.started = run, device, time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        # A session of its own: a Ctrl-C in the terminal reaches only the ablation, which then
        # stops every child exactly once (a second SIGINT would make a child skip its summary).
        self.proc = subprocess.Popen(run.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, start_new_session=True, bufsize=1)
        self.last_error = ""
        tag = f"  {run.name}" + (f" @GPU{device}" if device is not None else "") + " | "

        def pump(stream: Any, is_err: bool) -> None:
            for line in stream:
                line = line.rstrip()
                if not line:
                    continue
                if is_err:
                    self.last_error = line
                log(tag + line)
                if not is_err and line.startswith("epoch "):
                    on_epoch()

        self.readers = [threading.Thread(target=pump, args=(s, e), daemon=True)
                        for s, e in ((self.proc.stdout, False), (self.proc.stderr, True))]
        for t in self.readers:
            t.start()

    def finish(self) -> int:
        code = self.proc.wait()
        for t in self.readers:
            t.join(timeout=10)
        return code


def run_ablation(runs: Sequence[PlannedRun], *, devices: Sequence[str] | None = None, runs_per_device: int = 1,
                 log: Callable[[str], None] = print, poll_s: float = 0.2, retries: int = 1) -> AblationResult:
    """Run the planned runs: skip finished ones, resume interrupted ones, train the rest.

    With ``devices`` (CUDA_VISIBLE_DEVICES values), up to ``runs_per_device`` runs per device
    go at a time, each pinned to its device; otherwise ``runs_per_device`` runs at a time on
    the default device (on the CPU, give them their share of the cores with ``share_cores``).
    A run the GPU failed under (exit status ``DeviceFault.exit_code``) is resumed from its last
    checkpoint, at the back of the queue, up to ``retries`` times; any other failed run is
    reported with its last error line and the others go on. Each run's directory is read again just
    before it starts, so several studies on one folder share out the runs (a run held by
    another process is left to it). Ctrl-C, SIGTERM, SIGUSR1 or SIGUSR2 stops the running
    children cleanly (they can be resumed by running the same study again) and sets
    ``interrupted``.
    """
    lock = threading.Lock()

    def say(message: str) -> None:
        with lock:
            log(message)

    result = AblationResult()
    todo = [r for r in runs if r.runs_here]
    for r in runs:
        if r.action == "skip":
            result.results.append(RunResult(r, "skipped", message="already finished"))
        elif r.action == "reuse":
            result.results.append(RunResult(r, "skipped", message=f"finished in {r.run_dir}, reused"))
        elif r.action == "elsewhere":
            result.results.append(RunResult(r, "elsewhere", message=f"running elsewhere ({r.holder})"))
    total = len(runs)
    slots = expand_slots(devices, runs_per_device)
    eta = _Eta(runs, len(slots))
    queue = list(todo)
    retried: dict[Path, int] = {}  # by run directory: resumes after a device fault so far
    running: dict[int, _Child] = {}  # by slot index: a GPU may hold several runs
    # Reader threads only raise this flag; the main loop (which owns `running`) prints.
    epoch_seen = threading.Event()
    last_progress = time.monotonic()

    def progress() -> str:
        done = result.count("finished") + result.count("skipped")
        left = eta.left([c.run for c in running.values()] + queue)
        text = f"{done}/{total} done"
        if result.failed:
            text += f", {len(result.failed)} failed"
        return text + (f", about {duration(left)} left" if left is not None else ", time left: after the first epoch")

    reused = [r for r in runs if r.action == "reuse"]
    if reused:
        say(f"ablation: reusing {len(reused)} run(s) finished in earlier studies: "
            + ", ".join(f"{r.name} ({r.run_dir})" for r in reused))
    for status, what in (("skipped", "finished"), ("elsewhere", "running elsewhere")):
        passed = [r for r in result.results if r.status == status and r.run.action != "reuse"]
        if passed:
            say(f"ablation: skipping {len(passed)} {what} run(s): " + ", ".join(r.run.name for r in passed))
    try:
        while queue or running:
            for index, slot in enumerate(slots):
                if index in running or not queue:
                    continue
                run = refresh(queue.pop(0))
                if not run.runs_here:  # finished or taken by another study since it was planned
                    result.results.append(RunResult(
                        run, "skipped" if run.action == "skip" else "elsewhere",
                        message="finished meanwhile" if run.action == "skip" else f"running elsewhere ({run.holder})"))
                    say(_result_line(result.results[-1]) + f" ({progress()})")
                    continue
                what = (f"resuming after epoch {run.done_epochs}/{run.config.epochs}" if run.action == "resume"
                        else f"training {run.config.epochs} epochs")
                where = f" on GPU {slot}" if slot is not None else ""
                number = total - len(queue) - len(running)
                with lock:  # the header comes before the child's first line
                    running[index] = _Child(run, slot, say, epoch_seen.set)
                    log(f"[{number}/{total}] {run.name}: {what}{where} -> {run.run_dir} ({progress()})")
            time.sleep(poll_s)
            # A progress line after an epoch, at most every 30 s, keeps long runs readable.
            if epoch_seen.is_set() and time.monotonic() - last_progress >= 30:
                epoch_seen.clear()
                last_progress = time.monotonic()
                say(f"ablation: {progress()}")
            for index, child in list(running.items()):
                if child.proc.poll() is None:
                    continue
                code = child.finish()
                del running[index]
                seconds = time.monotonic() - child.started
                if code == DeviceFault.exit_code and retried.get(child.run.run_dir, 0) < retries:
                    retried[child.run.run_dir] = retried.get(child.run.run_dir, 0) + 1
                    queue.append(child.run)  # refreshed when it starts again: a resume
                    say(f"retrying {child.run.name} (resume {retried[child.run.run_dir]} of {retries}) after a GPU "
                        f"fault: {child.last_error or f'exit status {code}'}")
                    continue
                _record(result, child, code, seconds, eta)
                say(_result_line(result.results[-1]) + f" ({progress()})")
    except KeyboardInterrupt as exc:
        result.interrupted = True
        sig = getattr(exc, "signum", signal.SIGINT)
        result.signum = int(sig)
        say(f"ablation: stopping {len(running)} running run(s) cleanly ...")
        result.results += _stop(list(running.values()), sig)
    return result


def _stop(children: Sequence[_Child], sig: int) -> list[RunResult]:
    """Pass the study's signal on to each running child (which checkpoints and writes its
    summary) and wait for them; one that does not stop within two minutes is killed."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(sig)
    results = []
    for child in children:
        try:
            code = child.proc.wait(timeout=120)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            child.proc.kill()
            code = child.proc.wait()
        child.finish()
        results.append(RunResult(child.run, "interrupted", time.monotonic() - child.started, code,
                                 f"stopped after epoch {len(RunDir(child.run.run_dir).read_metrics())}"))
    return results


def _record(result: AblationResult, child: _Child, code: int, seconds: float, eta: _Eta) -> None:
    run = child.run
    state = RunDir(run.run_dir).state()
    if code == 0 and state == "completed":
        summary = RunDir(run.run_dir).read_summary()
        epoch_s = sum(float(r["epoch_time_s"]) for r in RunDir(run.run_dir).read_metrics()[run.done_epochs:])
        eta.overheads.append(max(0.0, seconds - epoch_s))
        result.results.append(RunResult(run, "finished", seconds, code, finished_message(summary)))
        return
    reason = child.last_error or f"exit status {code}, run state {state}"
    if code == RunDirBusy.exit_code:  # another process took the run directory first
        result.results.append(RunResult(run, "elsewhere", seconds, code, reason))
        return
    result.results.append(RunResult(run, "failed", seconds, code, reason))


def finished_message(summary: dict[str, Any]) -> str:
    """What a finished run's line says: its final accuracy, and whether it shared its CPU."""
    wait = summary.get("cpu_wait")
    shared = (f" (shared its CPU: {wait:.2f} threads kept waiting; its time is not a measurement)"
              if contention.is_shared(wait) else "")
    return f"final val acc {100 * summary['final_val_acc']:.2f}%{shared}"


def _result_line(r: RunResult) -> str:
    if r.status == "finished":
        return f"done {r.run.name} in {duration(r.seconds)}: {r.message}"
    if r.status == "elsewhere":
        return f"left {r.run.name} to the process that holds it: {r.message}"
    if r.status == "skipped":
        return f"skipped {r.run.name}: {r.message}"
    return f"FAILED {r.run.name} after {duration(r.seconds)} (exit {r.returncode}): {r.message}"


def describe_plan(runs: Sequence[PlannedRun]) -> str:
    """One line: how many runs, presets, seeds, and what will happen to them."""
    settings = list(dict.fromkeys(r.group for r in runs))
    counts = {a: sum(r.action == a for r in runs) for a in ("train", "resume", "skip", "elsewhere", "reuse")}
    elsewhere = f", {counts['elsewhere']} running elsewhere" if counts["elsewhere"] else ""
    reused = f", {counts['reuse']} reused from earlier studies" if counts["reuse"] else ""
    return (f"{len(runs)} run(s) ({len(settings)} setting(s) x {len(runs) // max(1, len(settings))} seed(s)): "
            f"{counts['train']} to train, {counts['resume']} to resume, {counts['skip']} already finished"
            f"{reused}{elsewhere}")


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


# --- the study's record ------------------------------------------------------------------


def record(out: str | Path, runs: Sequence[PlannedRun], *, presets: Sequence[str], seeds: int,
           seed: int | None, overrides: Mapping[str, Any], launcher: str = "local",
           jobs: Mapping[str, str] | None = None, launch: Mapping[str, Any] | None = None,
           variants: Mapping[str, Mapping[str, Any]] | None = None,
           rules: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Record the plan and this launch in ``OUT/study.json`` (read by ``fastres ablate --status``)
    and return the launch's entry; passing that back as ``launch`` updates it (with ``jobs``,
    run names ``preset/seedS`` -> the scheduler's job ids) instead of adding another. ``rules``
    (setting -> text) says how a ``--base`` study chose a setting's learning rate."""
    out = Path(out)
    plan = {
        "format": "fastres-study", "version": 1, "presets": list(presets), "seeds": seeds, "first_seed": seed,
        "overrides": json.loads(json.dumps(dict(overrides), default=list)), "launcher": launcher,
        "variants": json.loads(json.dumps(dict(variants or {}), default=list)),
        **({"rules": dict(rules)} if rules else {}),
        # A reused run stays where it is: its path from OUT (relative, so the folders can move together).
        "runs": [{"preset": r.preset, "setting": r.group, "seed": r.seed,
                  "run_dir": os.path.relpath(r.run_dir, out), **({"reused": True} if r.action == "reuse" else {})}
                 for r in runs],
    }
    entry = dict(launch) if launch else {"launcher": launcher, "host": socket.gethostname(), "pid": os.getpid(),
                                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv[1:]}
    if jobs:
        entry["jobs"] = dict(jobs)
    record_study(out, plan, entry)
    return entry


_STATUS = {"new": "not started", "completed": "done", "incomplete": "interrupted (killed: no summary)"}


def status_lines(out: str | Path) -> list[str]:
    """One line per planned run of the study in ``out``: its state and epochs done; starts nothing."""
    study = read_study(out)
    launches = study.get("launches", [])
    job_ids: dict[str, str] = {}
    for launch in launches:  # the latest launch that submitted a run names its job
        job_ids.update(launch.get("jobs", {}))
    rows = []
    entries = study.get("runs", [])
    own = {(e.get("setting", e["preset"]), e["seed"]) for e in entries if not e.get("reused")}
    for entry in entries:
        name = f"{entry.get('setting', entry['preset'])}/seed{entry['seed']}"
        if entry.get("reused") and (entry.get("setting", entry["preset"]), entry["seed"]) in own:
            continue  # trained in this folder since (a later launch without --reuse)
        run = RunDir(os.path.normpath(Path(out) / entry["run_dir"]))
        state = run.state()
        status = f"running ({run.describe_holder()})" if state == "running" else _STATUS.get(state, state)
        if entry.get("reused"):
            status = ("missing (reused from an earlier study's folder, since moved?)" if state == "new"
                      else status + " (reused)")
        planned = run.read_config().get("epochs", "?") if run.holds_run() else "?"
        job = f"job {job_ids[name]}  " if name in job_ids else ""
        rows.append((name, status, f"{len(run.read_metrics())}/{planned} epochs", job + str(run.path)))
    last = launches[-1] if launches else {}
    head = (f"study in {out}: {len(rows)} planned run(s), {len(launches)} launch(es)"
            + (f", last {last.get('started')} on {last.get('host')} (pid {last.get('pid')})" if last else ""))
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
    return [head] + ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3] for r in rows]
