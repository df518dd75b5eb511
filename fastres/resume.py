"""What a resumed run must agree with: the recipe its run directory records (and its checkpoint
trained), and the training images it held out, which a new run records in val_split.json for
this check."""

from __future__ import annotations

import json
from collections.abc import Callable

from . import checkpoint, record, split
from .config import MACHINE_FIELDS, TrainConfig, describe_differences, recipe_differences
from .data import DataSource
from .errors import FastresError
from .files import atomic_write_text, writing
from .rundir import VAL_SPLIT, RunDir


def check_resume(config: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
    """The recorded config of ``config.run_dir`` with the machine fields of ``config``.

    A different recipe is refused, naming each differing field; so is a config.json that no
    longer says what the run's checkpoint trained (edited by hand), and more epochs for a
    finished run (a new run trains longer: see docs/faults.md).
    """
    run = RunDir(config.run_dir).require_run()
    recorded = TrainConfig.from_dict(run.read_config())
    if run.last_checkpoint.exists():
        record.check_checkpoint(
            run,
            recorded,
            run.last_checkpoint,
            checkpoint.recorded_config(run.last_checkpoint),
            action="resume",
        )
    record.read_config(run)  # the digest names an edit even before the first checkpoint
    diffs = recipe_differences(recorded, config)
    if diffs:
        longer = (
            " (a run is not extended: train a longer one with fastres train "
            f"--config {run.config} --epochs N --run-dir NEW_DIR)"
            if "epochs" in diffs
            else ""
        )
        raise FastresError(
            f"cannot resume {run.path} with a different recipe: "
            f"{describe_differences(diffs, 'given')}; "
            f"drop those options or start a new --run-dir{longer}"
        )
    machine = {
        k: v
        for k, v in config.to_dict().items()
        if k in MACHINE_FIELDS and k != "run_dir" and recorded.to_dict()[k] != v
    }
    if machine:
        log(
            "resuming with machine settings changed: "
            + ", ".join(f"{k} {recorded.to_dict()[k]!r} -> {v!r}" for k, v in machine.items())
        )
    return recorded.replace(**machine, run_dir=config.run_dir)


def record_val_split(run: RunDir, data: DataSource) -> None:
    """Write which training images the run holds out (val_split.json), when it holds any out."""
    if data.val_indices is None:
        return
    held_out = {
        "images": len(data.val_indices),
        "digest": split.digest(data.val_indices),
        "rule": (f"split.held_out: class-balanced, fixed permutation (seed {split.SPLIT_SEED})"),
        "indices": data.val_indices.tolist(),
    }
    with writing(run.path / VAL_SPLIT):
        atomic_write_text(run.path / VAL_SPLIT, json.dumps(held_out) + "\n")


def check_val_split(run: RunDir, data: DataSource) -> None:
    """A resumed run must hold out the images it held out before (the data may have changed)."""
    path = run.path / VAL_SPLIT
    if data.val_indices is None or not path.exists():
        return
    try:
        recorded = json.loads(path.read_text())["digest"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FastresError(
            f"cannot read {path}: {exc}; it records the run's held-out images"
        ) from None
    if recorded != split.digest(data.val_indices):
        raise FastresError(
            f"cannot resume {run.path}: its held-out images (val_split.json, digest {recorded}) "
            f"differ from those this data set gives ({split.digest(data.val_indices)}): resume it "
            "with the training data it started with, or start a new --run-dir"
        )
