"""The training loop: ``train(config) -> summary``; the CLI is a thin layer over it.

Per step: uint8 batch on the device -> batched augmentation -> model (channels_last,
autocast) -> loss -> optimizer. Running sums live on the device and are read only at
logging points and epoch ends, so a GPU step never waits for the host. What the loop leans
on has a module each: ``run_parts`` (what a run is built from), ``run_start`` (its run
directory held, started or resumed), ``evaluation``, ``epoch_log``, ``loop_clock``,
``run_summary``, ``resume`` and ``run_errors`` (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint, contention, distributed, recipe, seedstats
from .config import TrainConfig
from .data import DataSource, open_config_data
from .epoch_log import EpochLog, progress_bar
from .errors import ConfigError, FastresError
from .evaluation import evaluate, evaluate_run
from .loop_clock import LoopClock, loop_account
from .resume import check_resume, check_val_split
from .run_errors import (
    Interrupted,
    TrainingDiverged,
    TrainingFailed,
    diverged,
    explain,
    out_of_memory_at_start,
)
from .run_parts import build_parts
from .run_start import hold, start_or_resume
from .run_summary import chance_note, finished_line, run_summary
from .rundir import RunDir, default_run_dir
from .runtime import Runtime, is_out_of_memory, resolve_runtime, set_deterministic
from .step import train_step

# Callers import these from here: the loop's errors, its step, and evaluation.
__all__ = [
    "Interrupted",
    "Trainer",
    "TrainingDiverged",
    "TrainingFailed",
    "evaluate",
    "evaluate_run",
    "loop_account",
    "parameter_hash",
    "train",
    "train_step",
]

LOG_EVERY = 50  # steps between host reads of the running loss (progress, divergence check)


class Trainer:
    """One run: its parts (``run_parts``: model, optimizer, ...), data and run directory,
    built from a config."""

    def __init__(
        self,
        config: TrainConfig,
        runtime: Runtime,
        data: DataSource,
        run: RunDir,
        log: Callable[[str], None],
        dist: distributed.Dist = distributed.SINGLE,
    ) -> None:
        self.config, self.runtime, self.data, self.run = config, runtime, data, run
        self.log, self.dist = log, dist
        parts = build_parts(config, runtime, data, log, dist)
        self.model, self.forward, self.eval_forward = parts.model, parts.forward, parts.eval_forward
        self.ema, self.optimizer, self.scheduler = parts.ema, parts.optimizer, parts.scheduler
        self.scaler, self.criterion, self.augment = parts.scaler, parts.criterion, parts.augment
        self.graph_step, self.params = parts.graph_step, parts.params
        self.steps_per_epoch = parts.steps_per_epoch
        self.writer = checkpoint.BackgroundWriter()
        self.rows: list[dict[str, Any]] = []  # metrics of the finished epochs
        self.epoch = 0  # completed epochs
        self.best_val_acc = -1.0
        self.best_epoch = 0
        # This process's totals, for the summary's images/s and checkpoint cost.
        self.trained_images, self.train_seconds, self.checkpoint_seconds = 0, 0.0, 0.0
        # train_time_s spans every call that trained this run: earlier calls' time up to the
        # checkpoint this one resumed from, plus this call's since `started` (set by fit).
        self.earlier_seconds, self.started = 0.0, time.perf_counter()
        self.notes: list[str] = []  # what else failed while the run was stopping on an error
        self._checkpoint: tuple[dict[str, Any], bool] | None = None  # taken, not yet queued

    # -- state -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": checkpoint.capture_rng(),
            "config": self.config.to_dict(),
            "train_time_s": self.train_time_s(),
        } | ({"ema": self.ema.state_dict()} if self.ema is not None else {})

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        checkpoint.restore_rng(state["rng"])
        self.epoch, self.best_val_acc = state["epoch"], state["best_val_acc"]
        self.best_epoch = state["best_epoch"]
        self.earlier_seconds = float(state.get("train_time_s", 0.0))

    def snapshot_checkpoint(self, improved: bool) -> float:
        """Take this epoch's checkpoint (written by ``write_checkpoint``); returns the seconds
        the training loop was held up for it."""
        t0 = time.perf_counter()
        self._checkpoint = (self.writer.snapshot(self.state()), improved)
        return time.perf_counter() - t0

    def write_checkpoint(self) -> None:
        """Queue last.pt (and best.pt) of the epoch just logged. A checkpoint is written only
        after its epoch's metrics are, so a run resumed from it never misses a row."""
        if self._checkpoint is not None:
            snapshot, improved = self._checkpoint
            self.writer.write(
                snapshot, self.run.last_checkpoint, self.run.best_checkpoint if improved else None
            )
            # Only now: a Ctrl-C or SIGTERM landing inside write() leaves the snapshot for
            # _finish to write (a CI run SIGTERMed right after its first epoch kept no last.pt:
            # this window).
            self._checkpoint = None

    # -- steps -------------------------------------------------------------------------

    def train_epoch(self, progress) -> dict[str, float]:
        self.model.train()
        device = self.runtime.device
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        # First step whose loss was not finite, tracked on the device (-1: none yet).
        bad_step = torch.full((), -1, device=device, dtype=torch.long)
        step_counter = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        self.data.train.set_epoch(self.epoch)
        self.augment.set_epoch(self.config.seed, self.epoch, self.dist.rank)
        size = self.config.resolution(self.epoch)
        # Alternating flips need each image's data-set index: the epoch's order, batch by batch.
        order = (
            self.data.train.epoch_order(self.epoch).to(device)
            if self.config.alternate_flip
            else None
        )
        t0 = time.perf_counter()
        clock = LoopClock(enabled=device.type == "cpu")
        for i, (images, labels) in enumerate(self.data.train):
            clock.lap("load")
            if self.epoch == 0 and i == 0 and self.config.whiten_stem:
                self._whiten_stem(images)
            indices = order[seen : seen + labels.shape[0]] if order is not None else None
            x = self.augment.train(images, size, indices)
            clock.lap("augment")
            if self.graph_step is not None:  # its step updates the weight average too
                loss, out = self.graph_step(x, labels)
            else:
                loss, out = train_step(
                    self.forward,
                    self.criterion,
                    self.optimizer,
                    self.scaler,
                    self.runtime,
                    x,
                    labels,
                )
            clock.lap("step")
            self.scheduler.step()
            if self.ema is not None and self.graph_step is None:
                self.ema.update_parameters(self.model)
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step_counter, bad_step)
            step_counter += 1
            loss_sum += loss * labels.shape[0]
            correct += (out.argmax(1) == labels).sum()
            seen += labels.shape[0]
            if (i + 1) % LOG_EVERY == 0 or i + 1 == self.steps_per_epoch:
                self._check_finite(bad_step)
                if progress is not None:
                    progress.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", refresh=False)
            if progress is not None:
                progress.update(1)
            clock.lap("other")
        self._check_finite(bad_step)
        # Sum over processes: the epoch's numbers describe every image trained on.
        totals = distributed.all_reduce_sum(
            torch.stack(
                [loss_sum, correct.to(loss_sum.dtype), torch.tensor(float(seen), device=device)]
            ),
            self.dist,
        )
        loss_total, correct_total, seen_total = totals.tolist()  # also waits for the device
        elapsed = time.perf_counter() - t0
        return {
            "train_loss": loss_total / seen_total,
            "train_acc": correct_total / seen_total,
            "images_per_s": seen_total / elapsed,
            "train_time_s": elapsed,
            "train_res": size,
            "loop_time_s": clock.totals(),
        }

    def _whiten_stem(self, images: torch.Tensor) -> None:
        """Patch-whitening of the stem from rank 0's first (unaugmented) batch, before the
        first step; a resumed run has it in its checkpoint."""
        stem = self.model.stem[0]
        recipe.whiten_stem(stem, self.augment.test(images))
        if self.dist.enabled:  # each rank's first batch differs: all take rank 0's filters
            weight = distributed.broadcast(stem.weight.detach().cpu(), self.dist)
            with torch.no_grad():
                stem.weight.copy_(weight)

    def _check_finite(self, bad_step: torch.Tensor) -> None:
        step = int(bad_step.item())  # the epoch's first step whose loss was not finite, or -1
        if step >= 0:
            raise diverged(self.config, self.run, self.epoch, step, self.steps_per_epoch)

    @torch.no_grad()
    def evaluate(
        self, tta: bool = False, translate: int = 0, batches: Any = None
    ) -> dict[str, float]:
        return evaluate(
            self.eval_forward,
            self.data,
            self.augment,
            self.runtime,
            tta=tta,
            translate=translate,
            batches=batches,
        )

    def evaluate_epoch(self, last: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """This epoch's (test, held-out split) results. With --val-split the held-out images
        are evaluated every epoch and the test set only after the last, so nothing chosen
        during the run has seen the test set; otherwise the test set every --eval-every
        epochs."""
        cfg = self.config
        translate = cfg.tta_translate if last or not cfg.tta_final_only else 0
        held = None
        if self.data.val is not None:
            held = self.evaluate(tta=cfg.eval_tta, translate=translate, batches=self.data.val)
        due = not cfg.val_split and cfg.eval_every and (self.epoch + 1) % cfg.eval_every == 0
        if last or due:
            return self.evaluate(tta=cfg.eval_tta, translate=translate), held
        return {"loss": None, "acc": None, "images": 0}, held

    # -- loop --------------------------------------------------------------------------

    def run_epoch(self, show_progress: bool) -> dict[str, Any]:
        """Train one epoch, evaluate, take the checkpoint's snapshot; the epoch's metrics row."""
        cfg = self.config
        epoch_start = time.perf_counter()
        cpu_wait = contention.CpuWait()
        description = f"epoch {self.epoch + 1}/{cfg.epochs}"
        with progress_bar(show_progress, self.steps_per_epoch, description) as bar:
            stats = self.train_epoch(bar)
        val, held = self.evaluate_epoch(self.epoch + 1 == cfg.epochs)
        self.epoch += 1
        row = {
            "epoch": self.epoch,
            "train_loss": stats["train_loss"],
            "train_acc": stats["train_acc"],
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "val_images": val["images"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": stats["images_per_s"],
            "epoch_time_s": time.perf_counter() - epoch_start,
            "train_res": stats["train_res"],
            "epoch_train_s": stats["train_time_s"],
            "loop_time_s": stats["loop_time_s"],
            "cpu_wait": cpu_wait.lap(),
        }
        if held is not None:
            row |= {
                "val_split_loss": held["loss"],
                "val_split_acc": held["acc"],
                "val_split_images": held["images"],
            }
        # The best epoch (best.pt) is chosen on the held-out split when there is one; the
        # checkpoint's best_val_acc is then that split's accuracy.
        score = row["val_split_acc"] if held is not None else row["val_acc"]
        improved = score is not None and score > self.best_val_acc
        if improved:
            self.best_val_acc, self.best_epoch = score, self.epoch
        row["checkpoint_time_s"] = self.snapshot_checkpoint(improved) if self.dist.is_main else 0.0
        self.rows.append(row)
        self.trained_images += round(stats["images_per_s"] * stats["train_time_s"])
        self.train_seconds += stats["train_time_s"]
        self.checkpoint_seconds += row["checkpoint_time_s"]
        return row

    def train_time_s(self) -> float:
        """Wall time spent training this run so far, over every call that trained it."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def fit(self, started: float, show_progress: bool) -> dict[str, Any]:
        """Train the remaining epochs; the summary, also written when training stops early."""
        self.started = started
        epoch_log = EpochLog(
            self.run, self.epoch, self.config.epochs, self.log, write=self.dist.is_main
        )
        status = "failed"
        try:
            while self.epoch < self.config.epochs:
                epoch_log.record(self.run_epoch(show_progress and self.dist.is_main))
                self.write_checkpoint()
            epoch_log.close()
            self.writer.close()  # the last checkpoint is on disk before the run counts as completed
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except TrainingDiverged:
            status = "diverged"
            raise
        finally:
            self._finish(status, epoch_log)
        return self.summary

    def _finish(self, status: str, epoch_log: EpochLog) -> None:
        """Close the logs, let the last checkpoint reach the disk, write the summary. When the
        run is already stopping on an error, a failure here becomes a note on that error
        (``self.notes``) instead of hiding it."""
        if (
            self._checkpoint is not None
            and self.dist.is_main
            and len(self.run.read_metrics()) >= self.epoch
        ):
            self.write_checkpoint()  # stopped between logging the epoch and queueing its checkpoint
        for close in (epoch_log.close, self.writer.close):
            try:
                close()
            except FastresError as exc:
                self.notes.append(str(exc))
        self.summary = run_summary(self, status)
        if self.dist.is_main:
            try:
                self.run.write_summary(self.summary)
            except FastresError as exc:
                if status == "completed":
                    raise
                self.notes.append(str(exc))


def train(
    config: TrainConfig,
    *,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train one run and return its summary (also written to ``<run_dir>/summary.json``).

    With ``resume=True``, ``config.run_dir`` must hold an earlier run of the same recipe;
    training continues from its ``checkpoints/last.pt``. Under torchrun every process calls
    this; they train data-parallel and only rank 0 logs and writes the run directory.

    The run directory is held for the whole call: another process training it makes this one
    raise ``RunDirBusy`` (exit status 75) before anything there is read or changed. A fault
    during training (a full disk, out of memory) raises a ``FastresError`` whose message
    names the cause and the command that continues the run.
    """
    started = time.perf_counter()
    d = distributed.from_env()
    if not d.is_main:
        log = _silent
    if not resume and not config.run_dir and d.is_main:
        config = config.replace(run_dir=str(default_run_dir(config.preset)))
    # Recorded absolute, so `fastres eval` and `--resume` find the data from any directory.
    config = config.replace(data_dir=str(Path(config.data_dir).resolve()))
    if config.threads:  # before the loaders, which keep the count FFCV would otherwise reset
        torch.set_num_threads(config.threads)
    set_deterministic(config.deterministic)
    runtime = resolve_runtime(config, local_rank=d.local_rank if d.enabled else None)
    if config.optimizer == "muon" and runtime.grad_scaler:
        raise ConfigError(
            "--optimizer muon does not work with fp16 autocast (its gradient scaler "
            "does not see Muon's flattened filters): pass --precision bf16 or "
            "--precision fp32"
        )
    distributed.init(d, runtime.device.type)
    try:
        config = config.replace(run_dir=distributed.broadcast(config.run_dir, d))
        with hold(RunDir(config.run_dir), d):
            if resume:
                config = check_resume(config, log)
            return _train(config, runtime, d, started, log, progress, resume)
    except Exception as exc:
        if isinstance(exc, FastresError) or not is_out_of_memory(exc):
            raise
        raise out_of_memory_at_start(config, runtime) from None  # fit() explains one later on
    finally:
        distributed.shutdown()


def _silent(message: str) -> None:
    pass


def _train(
    config: TrainConfig,
    runtime: Runtime,
    d: distributed.Dist,
    started: float,
    log: Callable[[str], None],
    progress: bool | None,
    resume: bool,
) -> dict[str, Any]:
    run = RunDir(config.run_dir)
    if not resume and run.holds_run():
        run.create()  # raises: refuses to overwrite
    distributed.barrier(d)  # every rank has checked before rank 0 creates it
    data = open_config_data(config, runtime.device, log, rank=d.rank, world_size=d.world_size)
    if resume:
        check_val_split(run, data)
    trainer = Trainer(config, runtime, data, run, log, d)
    start_or_resume(trainer, resume)
    scale = (
        f"; {d.world_size} processes, {config.batch_size // d.world_size} images each per step"
        if d.enabled
        else ""
    )
    log(
        f"run {run.path}: {config.model} (width {config.width}, "
        f"{trainer.params / 1e6:.2f}M params), {config.epochs} epochs, "
        f"batch {config.batch_size}, lr {config.lr:g} {config.lr_schedule}; "
        f"{runtime.describe()}; data: {data.description}{scale}"
    )
    show = sys.stderr.isatty() if progress is None else progress
    try:
        summary = trainer.fit(started, show)
    except BaseException as exc:
        error = explain(
            exc, config=config, runtime=runtime, run=run, epoch=trainer.epoch, notes=trainer.notes
        )
        if error is exc:
            raise
        raise error from None
    if d.enabled:
        _report_parameters(trainer, d)
    log(finished_line(summary, run))
    if (note := chance_note(summary, seedstats.test_images(config.test_subset))) is not None:
        log(note)
    if (account := loop_account(trainer.rows)) is not None:
        log(account)
    if (note := contention.shared_note(summary["cpu_wait"])) is not None:
        log(note)
    return summary


def _report_parameters(trainer: Trainer, d: distributed.Dist) -> None:
    """Every rank reports its own parameters: they must agree (tests and users can check)."""
    averaged = f", averaged {parameter_hash(trainer.ema.module)}" if trainer.ema is not None else ""
    # One write with its newline: unbuffered, print() writes the text and the newline apart,
    # and the ranks' lines could interleave on a shared stdout.
    sys.stdout.write(
        f"rank {d.rank}/{d.world_size}: parameters sha256 "
        f"{parameter_hash(trainer.model)}{averaged}\n"
    )
    sys.stdout.flush()


def parameter_hash(model: nn.Module) -> str:
    """Of the parameters only: under DDP the BatchNorm statistics are rank 0's at the start of
    each forward and then each rank's own batch moves them, so after the last step they differ."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
