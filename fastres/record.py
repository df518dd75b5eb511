"""Whether a run directory's record is what ran: its config.json against the recipe digest
written when the run started, and against the recipe its checkpoint trained.

Resume, eval, report and ``ablate --reuse`` read a run's recipe from config.json; a hand edit
there would otherwise make them continue, evaluate or count a run under a recipe it never ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TrainConfig, recipe_differences
from .errors import FastresError
from .rundir import RunDir


class EditedRun(FastresError):
    """config.json no longer says what the run trained."""


def start_record(run: RunDir, config: TrainConfig) -> None:
    """Write a new run's config.json with the digest its readers check it against."""
    run.write_config(config.to_dict(), config.recipe_digest())


def read_config(run: RunDir) -> TrainConfig:
    """The run's config.json, refused in one line when its recipe was edited after the run
    started. A run from before digests were kept is read unverified."""
    config = TrainConfig.from_dict(run.read_config())
    recorded = run.recorded_digest()
    if recorded is not None and recorded != config.recipe_digest():
        raise EditedRun(
            f"{run.config} was edited after the run started (its recipe no longer matches "
            f"{run.recipe_digest}): it is not a record of what ran; restore it, or train the "
            f"recipe as a new run (fastres train --config {run.config} --run-dir NEW_DIR)"
        )
    return config


def _trained_differences(
    config: TrainConfig, trained: dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Recipe fields (and the preset name) where config.json differs from ``trained``."""
    try:
        ran = TrainConfig.from_dict(trained)
    except FastresError:  # a checkpoint from another fastres: compare what both know
        ran = TrainConfig.from_dict({k: v for k, v in trained.items() if k in config.to_dict()})
    diffs = recipe_differences(ran, config)
    if ran.preset != config.preset:
        diffs["preset"] = (ran.preset, config.preset)
    return diffs


def check_checkpoint(
    run: RunDir,
    config: TrainConfig,
    checkpoint: Path,
    trained: dict[str, Any] | None,
    *,
    action: str,
) -> None:
    """Refuse, naming each field, a config.json whose recipe is not the one ``checkpoint``
    trained (``trained``: the config stored in it; None when it has none to compare)."""
    if trained is None:
        return
    diffs = _trained_differences(config, trained)
    if not diffs:
        return
    fields = "; ".join(
        f"{k} ({a!r} in {checkpoint.name}, {b!r} in config.json)" for k, (a, b) in diffs.items()
    )
    hint = (
        " (a finished run is not extended: train a longer run with fastres train --config "
        f"{run.config} --epochs N --run-dir NEW_DIR)"
        if "epochs" in diffs
        else ""
    )
    raise EditedRun(
        f"cannot {action} {run.path}: its config.json differs from the recipe {checkpoint} "
        "trained: "
        f"{fields}; restore config.json{hint}"
    )
