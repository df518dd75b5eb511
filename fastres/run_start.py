"""How ``train`` takes up its run directory: held by one process for the whole call (``hold``,
whose refusal every rank hears), then a new run's record started or a resumed run's checkpoint
and metrics loaded (``start_or_resume``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from . import checkpoint, distributed, record
from .config import TrainConfig
from .data import DataSource
from .errors import FastresError
from .resume import record_val_split
from .rundir import RunDir
from .runtime import Runtime


class StartingRun(Protocol):
    """What a run's start needs: the training loop's ``Trainer`` before its first epoch."""

    config: TrainConfig
    runtime: Runtime
    data: DataSource
    run: RunDir
    dist: distributed.Dist
    log: Callable[[str], None]
    rows: list[dict[str, Any]]  # metrics of the finished epochs
    epoch: int
    earlier_seconds: float

    def load_state(self, state: dict[str, Any]) -> None: ...


@contextlib.contextmanager
def hold(run: RunDir, d: distributed.Dist) -> Iterator[None]:
    """One process per run directory, for the whole run: rank 0 holds it, and its refusal
    (another process holds it, or the folder cannot be written) reaches every rank before
    any of them waits at a barrier."""
    with contextlib.ExitStack() as stack:
        error = None
        if d.is_main:
            try:
                stack.enter_context(run.hold())
            except FastresError as exc:
                error = exc
        error = distributed.broadcast(error, d)
        if error is not None:
            raise error
        yield


def start_or_resume(trainer: StartingRun, resume: bool) -> None:
    """Load the run's last checkpoint and the metrics up to it when resuming, or start the run
    directory's record of a new run."""
    run, config, log, d = trainer.run, trainer.config, trainer.log, trainer.dist
    if resume and run.last_checkpoint.exists():
        state = checkpoint.load(run.last_checkpoint, map_location=trainer.runtime.device, log=log)
        trainer.load_state(state)
        trainer.rows = run.read_metrics()[: trainer.epoch]
        if "train_time_s" not in state:  # written before checkpoints kept it: the epochs' times
            trainer.earlier_seconds = sum(r.get("epoch_time_s") or 0.0 for r in trainer.rows)
        if d.is_main:
            run.rewrite_metrics(trainer.rows)
        log(f"resuming {run.path} after epoch {trainer.epoch}/{config.epochs}")
    elif resume:
        if d.is_main:
            run.rewrite_metrics([])
        log(f"{run.path} has no checkpoint yet; starting it from epoch 1")
    elif d.is_main:
        run.create()
        record.start_record(run, config)
        record_val_split(run, trainer.data)
