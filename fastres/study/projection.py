"""How long a planned study will train, projected from the finished runs of the same settings
that it can find (``fastres ablate --dry-run``; the folders of ``--out``, ``--reuse`` and
``--times-from``).

A planned run takes the seconds per epoch of finished runs with its cost-relevant recipe (the
model, its size, the data, batch, resolution, evaluation; not its seed, length or learning-rate
settings, which do not change an epoch's cost), times the epochs it has left. Runs that shared
their CPU with other processes measured the machine's load and are not used.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import contention
from ..config import TrainConfig
from ..errors import FastresError
from ..formatting import duration
from ..rundir import find_runs

# Recipe fields that leave an epoch's cost unchanged: runs differing only in them share a
# measurement (an optimizer's choice does change it: Muon's step costs more than SGD's).
COST_NEUTRAL = frozenset(
    {
        "seed",
        "epochs",
        "lr",
        "lr_schedule",
        "milestones",
        "lr_gamma",
        "warmup_epochs",
        "momentum",
        "nesterov",
        "weight_decay",
        "label_smoothing",
        "bn_momentum",
        "decay_norm_bias",
        "bn_bias_lr",
        "muon_lr",
        "muon_momentum",
    }
)


def cost_key(config: TrainConfig) -> str:
    """What an epoch's cost depends on, as a key: the recipe without COST_NEUTRAL fields."""
    return json.dumps(
        {k: v for k, v in config.recipe().items() if k not in COST_NEUTRAL},
        sort_keys=True,
        default=list,
    )


@dataclass
class Measured:
    """Seconds per epoch of finished runs by cost key, and the devices they ran on."""

    per_epoch: dict[str, list[float]] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)
    runs: int = 0


def measure(folders: Sequence[str | Path]) -> Measured:
    """The finished runs below ``folders`` (missing folders are skipped: they have no runs yet)
    that did not share their CPU, as seconds of training per epoch."""
    measured = Measured()
    seen: set[Path] = set()
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for rd in find_runs(folder):
            if rd.path.resolve() in seen:
                continue
            seen.add(rd.path.resolve())
            try:
                if rd.state() != "completed":
                    continue
                summary = rd.read_summary()
                config = TrainConfig.from_dict(rd.read_config())
            except FastresError:  # not a run this fastres can read
                continue
            seconds, epochs = summary.get("train_time_s"), summary.get("epochs")
            if not seconds or not epochs or contention.is_shared(summary.get("cpu_wait")):
                continue
            measured.per_epoch.setdefault(cost_key(config), []).append(float(seconds) / int(epochs))
            measured.devices.add(str(summary.get("device") or "unknown device"))
            measured.runs += 1
    return measured


@dataclass(frozen=True)
class Projection:
    seconds: float  # of training, summed over the runs projected
    runs: int  # runs projected
    unmeasured: list[str]  # settings with no measured run of their cost key
    measured_runs: int
    devices: list[str]


def project(todo: Sequence[tuple[str, TrainConfig, int]], measured: Measured) -> Projection:
    """Training seconds of ``todo`` (setting, config, epochs left), from the median seconds
    per epoch measured for each run's cost key; settings without one are named, not guessed."""
    seconds, runs, unmeasured = 0.0, 0, []
    for setting, config, epochs in todo:
        times = measured.per_epoch.get(cost_key(config))
        if not times:
            if setting not in unmeasured:
                unmeasured.append(setting)
            continue
        seconds += statistics.median(times) * epochs
        runs += 1
    return Projection(seconds, runs, unmeasured, measured.runs, sorted(measured.devices))


def describe(p: Projection, total: int, slots: int, folders: Sequence[str | Path]) -> list[str]:
    """What ``--dry-run`` says about the projection: the training time, what it rests on, and
    what it lacks."""
    where = ", ".join(str(f) for f in folders)
    if not p.measured_runs:
        return [
            "projected time: no finished runs that had their CPU to themselves found below "
            f"{where or 'any folder'} to project from; pass --times-from DIR with finished runs "
            "of these settings (one seed of each is enough)"
        ]
    lines = []
    if p.runs:
        side = (
            (
                f"; {slots} at a time, about {duration(p.seconds / slots)} if each keeps the "
                "speed it was measured at (runs sharing a CPU do not)"
            )
            if slots > 1
            else ""
        )
        partial = (
            f" for {p.runs} of the {total} runs to train"
            if p.runs < total
            else f" for its {total} runs"
        )
        lines.append(
            f"projected training time{partial}: {duration(p.seconds)} one after another{side} "
            f"(from {p.measured_runs} finished run(s) below {where}, on {', '.join(p.devices)}; "
            "start-up not included)"
        )
    if p.unmeasured:
        lines.append(
            f"projected time: no finished run of {', '.join(p.unmeasured)} (same model, width, "
            "data, batch, resolution, evaluation) that had its CPU to itself below "
            + where
            + "; pass --times-from DIR with one"
        )
    return lines
