"""The training loop: ``train(config) -> summary``; the CLI is a thin layer over it.

Per step: uint8 batch on the device -> batched augmentation -> model (channels_last,
autocast) -> loss -> optimizer. Running sums live on the device and are read only at
logging points and epoch ends, so a GPU step never waits for the host.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint, contention, distributed, recipe, record, split
from .augment import BatchAugment
from .config import MACHINE_FIELDS, TrainConfig, describe_differences, recipe_differences
from .data import DataSource, choose_loader, open_data
from .errors import ConfigError, DeviceFault, FastresError
from .files import WriteError, atomic_write_text, write_failure, writing
from .models import build_model, count_parameters
from .provenance import git_commit, versions
from .rundir import TB_TAGS, VAL_SPLIT, RunDir, default_run_dir, finished_stamp
from .runtime import (
    Runtime,
    compile_module,
    compile_stats,
    device_fault,
    is_out_of_memory,
    resolve_runtime,
    seed_everything,
    set_deterministic,
)
from .schedule import lr_factor
from .step import GraphStep, graph_obstacle, train_step

LOG_EVERY = 50  # steps between host reads of the running loss (progress, divergence check)


class TrainingDiverged(FastresError):
    exit_code = 3


class Interrupted(FastresError):
    """Ctrl-C or SIGTERM: the run stopped cleanly and can be resumed."""


class TrainingFailed(FastresError):
    """The run stopped on a fault that is not bad input (e.g. out of memory); it can be resumed."""

    exit_code = 1


class LoopClock:
    """Wall time of each part of the training loop, summed over an epoch: waiting for the
    loader, augmentation (resizing included), the train step, and the rest (scheduler, EMA,
    bookkeeping). Only on a CPU, where an operation has finished when it returns, so each part
    is exact and measured in the same epoch as the others: drift of a shared machine's speed
    cancels in their ratios. On a GPU the host runs ahead of the device and the parts would
    say where the host waited, not what cost what; timing them would need a sync per part."""

    PARTS = ("load", "augment", "step", "other")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        self.last = time.perf_counter()

    def lap(self, part: str) -> None:
        if self.enabled:
            now = time.perf_counter()
            self.seconds[part] += now - self.last
            self.last = now

    def totals(self) -> dict[str, float] | None:
        return dict(self.seconds) if self.enabled else None


class Trainer:
    """One run: model, optimizer, data and run directory, built from a config."""

    def __init__(self, config: TrainConfig, runtime: Runtime, data: DataSource, run: RunDir,
                 log: Callable[[str], None], dist: distributed.Dist = distributed.SINGLE) -> None:
        self.config, self.runtime, self.data, self.run, self.log, self.dist = config, runtime, data, run, log, dist
        device = runtime.device
        seed_everything(config.seed)
        self.model = runtime.place(build_model(config.model, norm=config.norm, width=config.width))
        recipe.set_bn_momentum(self.model, config.bn_momentum)
        self.params = count_parameters(self.model)
        if dist.enabled and config.sync_bn and config.norm == "batch":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        # torch.compile and DDP wrap the module; the plain one gives state_dicts without their
        # prefixes, so checkpoints load in any setting (one process or many, compiled or not).
        compiled = compile_module(self.model) if runtime.compile else self.model
        if dist.enabled:
            ddp = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
            self.forward = compile_module(ddp) if runtime.compile else ddp
        else:
            self.forward = compiled
        # The average of the weights, when asked for, is what the run evaluates and reports.
        self.ema = recipe.build_ema(self.model, config.ema)
        averaged = self.ema.module if self.ema is not None else None
        if averaged is None:
            self.eval_forward = compiled  # no gradient sync needed: evaluation is per process
        else:
            self.eval_forward = compile_module(averaged) if runtime.compile else averaged
        self.optimizer = recipe.build_optimizer(self.model, config)
        self.steps_per_epoch = len(data.train)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(config, step, self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler(device.type, enabled=runtime.grad_scaler)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        input_dtype = runtime.amp_dtype
        self.augment = BatchAugment(device, input_dtype, channels_last=runtime.channels_last,
                                    augment=config.augment, padding=config.crop_padding,
                                    seed=config.seed, alternate_flip=config.alternate_flip,
                                    dataset_size=data.train.dataset_size)
        # --cuda-graph on: the step a CUDA graph holds (on the CPU the same step, uncaptured).
        self.graph_step = self._graph_step() if config.cuda_graph == "on" else None
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
            "epoch": self.epoch, "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
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
        self.epoch, self.best_val_acc, self.best_epoch = state["epoch"], state["best_val_acc"], state["best_epoch"]
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
            self.writer.write(snapshot, self.run.last_checkpoint, self.run.best_checkpoint if improved else None)
            # Only now: a Ctrl-C or SIGTERM landing inside write() leaves the snapshot for _finish
            # to write (a CI run SIGTERMed right after its first epoch kept no last.pt: this window).
            self._checkpoint = None

    # -- steps -------------------------------------------------------------------------

    def _graph_step(self) -> GraphStep | None:
        obstacle = graph_obstacle(self.runtime, self.dist.enabled)
        if obstacle is not None:
            self.log(f"--cuda-graph on: stepping eagerly instead ({obstacle})")
            return None
        # It captures lazily, at its first full-batch steps: after a resume has loaded its state.
        return GraphStep(self.forward, self.model, self.criterion, self.optimizer, self.runtime,
                         batch_size=self.config.batch_size, ema=self.ema, ema_decay=self.config.ema,
                         log=self.log)

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
        order = self.data.train.epoch_order(self.epoch).to(device) if self.config.alternate_flip else None
        t0 = time.perf_counter()
        clock = LoopClock(enabled=device.type == "cpu")
        for i, (images, labels) in enumerate(self.data.train):
            clock.lap("load")
            if self.epoch == 0 and i == 0 and self.config.whiten_stem:
                self._whiten_stem(images)
            indices = order[seen:seen + labels.shape[0]] if order is not None else None
            x = self.augment.train(images, size, indices)
            clock.lap("augment")
            if self.graph_step is not None:  # its step updates the weight average too
                loss, out = self.graph_step(x, labels)
            else:
                loss, out = train_step(self.forward, self.criterion, self.optimizer, self.scaler,
                                       self.runtime, x, labels)
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
        totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.to(loss_sum.dtype),
                                                         torch.tensor(float(seen), device=device)]), self.dist)
        loss_total, correct_total, seen_total = totals.tolist()  # also waits for the device
        elapsed = time.perf_counter() - t0
        return {"train_loss": loss_total / seen_total, "train_acc": correct_total / seen_total,
                "images_per_s": seen_total / elapsed, "train_time_s": elapsed, "train_res": size,
                "loop_time_s": clock.totals()}

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
        step = int(bad_step.item())
        if step < 0:
            return
        global_step = self.epoch * self.steps_per_epoch + step
        lr = self.config.lr * lr_factor(self.config, global_step, self.steps_per_epoch)
        hint = "enable BatchNorm (--norm batch)" if self.config.norm == "none" else "use fp32 (--precision fp32)"
        raise TrainingDiverged(
            f"training diverged: non-finite loss at epoch {self.epoch + 1}, step {step + 1} "
            f"(lr {lr:.4g}); lower --lr (now {self.config.lr:g}), add --warmup-epochs, or {hint}. "
            f"The last good checkpoint is {self.run.last_checkpoint}"
        )

    @torch.no_grad()
    def evaluate(self, tta: bool = False, translate: int = 0, batches: Any = None) -> dict[str, float]:
        return evaluate(self.eval_forward, self.data, self.augment, self.runtime, tta=tta, translate=translate,
                        batches=batches)

    def evaluate_epoch(self, last: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """This epoch's (test, held-out split) results. With --val-split the held-out images
        are evaluated every epoch and the test set only after the last, so nothing chosen
        during the run has seen the test set; otherwise the test set every --eval-every epochs."""
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
        with _progress_bar(show_progress, self.steps_per_epoch, f"epoch {self.epoch + 1}/{cfg.epochs}") as bar:
            stats = self.train_epoch(bar)
        val, held = self.evaluate_epoch(self.epoch + 1 == cfg.epochs)
        self.epoch += 1
        row = {
            "epoch": self.epoch, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
            "val_loss": val["loss"], "val_acc": val["acc"], "val_images": val["images"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": stats["images_per_s"], "epoch_time_s": time.perf_counter() - epoch_start,
            "train_res": stats["train_res"], "epoch_train_s": stats["train_time_s"],
            "loop_time_s": stats["loop_time_s"], "cpu_wait": cpu_wait.lap(),
        }
        if held is not None:
            row |= {"val_split_loss": held["loss"], "val_split_acc": held["acc"], "val_split_images": held["images"]}
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
        epoch_log = EpochLog(self.run, self.epoch, self.config.epochs, self.log, write=self.dist.is_main)
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
        if self._checkpoint is not None and self.dist.is_main and len(self.run.read_metrics()) >= self.epoch:
            self.write_checkpoint()  # stopped between logging the epoch and queueing its checkpoint
        for close in (epoch_log.close, self.writer.close):
            try:
                close()
            except FastresError as exc:
                self.notes.append(str(exc))
        self.summary = self._summary(status)
        if self.dist.is_main:
            try:
                self.run.write_summary(self.summary)
            except FastresError as exc:
                if status == "completed":
                    raise
                self.notes.append(str(exc))

    def _val_split_summary(self) -> dict[str, Any]:
        """The held-out split's numbers (final_val_acc and best_val_acc stay the test set's), and
        which split chose best_epoch."""
        if self.data.val_indices is None:
            return {"best_on": "test"}
        accs = [r.get("val_split_acc") for r in self.rows]
        return {"best_on": "val_split", "val_split": len(self.data.val_indices),
                "val_split_digest": split.digest(self.data.val_indices),
                "val_split_acc": accs[-1] if accs else None,
                "best_val_split_acc": max((a for a in accs if a is not None), default=None)}

    def _summary(self, status: str) -> dict[str, Any]:
        rows = self.rows
        last = rows[-1] if rows else {}
        rt = self.runtime
        return {
            "status": status,
            "preset": self.config.preset,
            "model": self.config.model,
            "epochs": self.epoch,
            "epochs_planned": self.config.epochs,
            "best_val_acc": max((r["val_acc"] for r in rows if r["val_acc"] is not None), default=None),
            "best_epoch": self.best_epoch or None,
            **self._val_split_summary(),
            "final_val_acc": last.get("val_acc"),
            "final_val_loss": last.get("val_loss"),
            "final_train_acc": last.get("train_acc"),
            "final_train_loss": last.get("train_loss"),
            "train_time_s": self.train_time_s(),
            "images_per_s": self.trained_images / self.train_seconds if self.train_seconds else None,
            "checkpoint_time_s": self.checkpoint_seconds,
            "cpu_wait": contention.run_average(rows),
            "params": self.params,
            "device": rt.device_name,
            "device_type": rt.device.type,
            "precision": rt.precision,
            "channels_last": rt.channels_last,
            "compile": rt.compile,
            "cuda_graph_steps": self.graph_step.describe() if self.graph_step is not None else None,
            **(compile_stats() if rt.compile else {"compile_time_s": None, "compiles": None, "recompile_limit_hit": None}),
            "loader": self.data.loader,
            "data_hash": self.data.data_hash,
            "seed": self.config.seed,
            "versions": versions() | {"threads": str(torch.get_num_threads())},
            "git_commit": git_commit(),
            "finished": finished_stamp(),
            "run_dir": str(self.run.path),
            "world_size": self.dist.world_size,
        }


class EpochLog:
    """Where each finished epoch is recorded: metrics.jsonl and TensorBoard (by the process that
    writes the run directory) and a console line."""

    def __init__(self, run: RunDir, done_epochs: int, epochs: int, log: Callable[[str], None], *,
                 write: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run, self.epochs, self.log = run, epochs, log
        self.tb = None
        if write:
            _quiet_tensorboard_thread()
            # purge_step drops events past the checkpoint when a resumed run re-logs those epochs.
            with writing(run.tensorboard):
                self.tb = SummaryWriter(str(run.tensorboard), purge_step=done_epochs + 1 if done_epochs else None)

    def record(self, row: dict[str, Any]) -> None:
        if self.tb is not None:
            self.run.append_metrics(row)
            try:
                for key, tag in TB_TAGS.items():
                    if row[key] is not None:  # val_* of an epoch without evaluation (--eval-every)
                        self.tb.add_scalar(tag, row[key], row["epoch"])
                if row.get("val_split_acc") is not None:
                    self.tb.add_scalar("acc/val_split", row["val_split_acc"], row["epoch"])
                    self.tb.add_scalar("loss/val_split", row["val_split_loss"], row["epoch"])
                self.tb.flush()
            except OSError as exc:
                raise write_failure(f"the TensorBoard events in {self.run.tensorboard}", exc) from None
        self.log(
            f"epoch {row['epoch']}/{self.epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%  "
            + _evaluation_text(row)
            + f"lr {row['lr']:.4g}  "
            f"{row['images_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s"
        )

    def close(self) -> None:
        tb, self.tb = self.tb, None
        if tb is not None:
            try:
                tb.close()
            except OSError as exc:
                raise write_failure(f"the TensorBoard events in {self.run.tensorboard}", exc) from None


def _evaluation_text(row: dict[str, Any]) -> str:
    """The epoch line's evaluation part: the held-out split's accuracy (with --val-split), then
    the test set's, or that neither was evaluated."""
    held = row.get("val_split_acc")
    text = f"held-out acc {100 * held:.2f}%  " if held is not None else ""
    if row["val_acc"] is not None:
        name = "test" if "val_split_acc" in row else "val"
        return text + f"{name} loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%  "
    return text or "not evaluated  "


def _quiet_tensorboard_thread() -> None:
    """TensorBoard writes events on a thread that prints a traceback when a write fails, and
    re-raises the error on the loop's next call, which turns it into a one-line error: keep
    that traceback off the console."""
    previous = threading.excepthook
    if getattr(previous, "fastres_quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (type(args.thread).__name__ == "_AsyncWriterThread" and issubclass(args.exc_type, OSError)):
            previous(args)

    hook.fastres_quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


@contextlib.contextmanager
def _progress_bar(show: bool, total: int, description: str) -> Iterator[Any]:
    """A per-step tqdm bar that disappears when the epoch ends, or None."""
    if not show:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


@torch.no_grad()
def evaluate(model: nn.Module, data: DataSource, augment: BatchAugment, runtime: Runtime, *,
             tta: bool = False, translate: int = 0, batches: Any = None) -> dict[str, float]:
    """Test loss and accuracy (of ``batches`` instead, e.g. the held-out split, when given);
    ``tta`` averages the logits of each image and its mirror; ``translate`` > 0 adds shifted
    views (``recipe.tta_views``)."""
    model.eval()
    device = runtime.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    criterion = nn.CrossEntropyLoss(reduction="sum")
    layout = torch.channels_last if runtime.channels_last else torch.contiguous_format
    for images, labels in data.test if batches is None else batches:
        x = augment.test(images)
        with torch.autocast(device.type, dtype=runtime.amp_dtype, enabled=runtime.autocast):
            if translate:
                out = sum(w * model(v.contiguous(memory_format=layout)).float()
                          for w, v in recipe.tta_views(x, translate, flip=True))
            else:
                out = model(x).float()
                if tta:
                    out = (out + model(x.flip(3)).float()) / 2
        loss_sum += criterion(out, labels)
        correct += (out.argmax(1) == labels).sum()
        seen += labels.shape[0]
    return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen, "images": seen}


def _open(config: TrainConfig, runtime: Runtime, log: Callable[[str], None],
          d: distributed.Dist = distributed.SINGLE) -> DataSource:
    loader = choose_loader(config.loader, log=log)
    return open_data(loader=loader, data_dir=config.data_dir, batch_size=config.batch_size,
                     device=runtime.device, seed=config.seed, num_workers=config.num_workers,
                     train_subset=config.train_subset, test_subset=config.test_subset,
                     shuffle=config.shuffle, rank=d.rank, world_size=d.world_size, val_split=config.val_split,
                     log=log)


def train(config: TrainConfig, *, log: Callable[[str], None] = print, progress: bool | None = None,
          resume: bool = False) -> dict[str, Any]:
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
        raise ConfigError("--optimizer muon does not work with fp16 autocast (its gradient scaler does not see "
                          "Muon's flattened filters): pass --precision bf16 or --precision fp32")
    distributed.init(d, runtime.device.type)
    try:
        config = config.replace(run_dir=distributed.broadcast(config.run_dir, d))
        with _hold(RunDir(config.run_dir), d):
            if resume:
                config = _check_resume(config, log)
            return _train(config, runtime, d, started, log, progress, resume)
    except Exception as exc:
        if isinstance(exc, FastresError) or not is_out_of_memory(exc):
            raise
        raise _out_of_memory_at_start(config, runtime) from None  # fit() explains one later on
    finally:
        distributed.shutdown()


def _out_of_memory_at_start(config: TrainConfig, runtime: Runtime) -> TrainingFailed:
    """The one-line error for memory running out before the first step (building the model,
    the optimizer or the data on the device)."""
    return TrainingFailed(
        f"out of memory setting up {config.model} (width {config.width}, batch size {config.batch_size}) "
        f"on {runtime.device_name}, before training began: pass a smaller --width or --batch-size")


@contextlib.contextmanager
def _hold(run: RunDir, d: distributed.Dist) -> Iterator[None]:
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


def _silent(message: str) -> None:
    pass


def _train(config: TrainConfig, runtime: Runtime, d: distributed.Dist, started: float,
           log: Callable[[str], None], progress: bool | None, resume: bool) -> dict[str, Any]:
    run = RunDir(config.run_dir)
    if not resume and run.holds_run():
        run.create()  # raises: refuses to overwrite
    distributed.barrier(d)  # every rank has checked before rank 0 creates it
    data = _open(config, runtime, log, d)
    if resume:
        _check_val_split(run, data)
    trainer = Trainer(config, runtime, data, run, log, d)
    if resume and run.last_checkpoint.exists():
        state = checkpoint.load(run.last_checkpoint, map_location=runtime.device, log=log)
        trainer.load_state(state)
        trainer.rows = run.read_metrics()[: trainer.epoch]
        if "train_time_s" not in state:  # written before checkpoints kept it: the epochs' own times
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
        _record_val_split(run, data)
    scale = f"; {d.world_size} processes, {config.batch_size // d.world_size} images each per step" if d.enabled else ""
    log(f"run {run.path}: {config.model} (width {config.width}, {trainer.params / 1e6:.2f}M params), "
        f"{config.epochs} epochs, batch {config.batch_size}, lr {config.lr:g} {config.lr_schedule}; "
        f"{runtime.describe()}; data: {data.description}{scale}")
    show = sys.stderr.isatty() if progress is None else progress
    try:
        summary = trainer.fit(started, show)
    except BaseException as exc:
        error = _explain(exc, trainer, run)
        if error is exc:
            raise
        raise error from None
    if d.enabled:
        # Every rank reports its own parameters: they must agree (tests and users can check).
        averaged = f", averaged {parameter_hash(trainer.ema.module)}" if trainer.ema is not None else ""
        # One write with its newline: unbuffered, print() writes the text and the newline apart,
        # and the ranks' lines could interleave on a shared stdout.
        sys.stdout.write(f"rank {d.rank}/{d.world_size}: parameters sha256 {parameter_hash(trainer.model)}{averaged}\n")
        sys.stdout.flush()
    if summary["best_on"] == "val_split":
        best = (f"held-out acc {100 * summary['val_split_acc']:.2f}%, best {100 * summary['best_val_split_acc']:.2f}% "
                f"at epoch {summary['best_epoch']}, which best.pt holds")
        log(f"finished: test acc {100 * summary['final_val_acc']:.2f}% ({best}), {summary['train_time_s']:.0f}s; "
            f"logs in {run.path}")
    else:
        log(f"finished: final val acc {100 * summary['final_val_acc']:.2f}% (best {100 * summary['best_val_acc']:.2f}% "
            f"at epoch {summary['best_epoch']}), {summary['train_time_s']:.0f}s; logs in {run.path}")
    if (account := loop_account(trainer.rows)) is not None:
        log(account)
    if (note := contention.shared_note(summary["cpu_wait"])) is not None:
        log(note)
    return summary


def _record_val_split(run: RunDir, data: DataSource) -> None:
    """Write which training images the run holds out (val_split.json), when it holds any out."""
    if data.val_indices is None:
        return
    held_out = {"images": len(data.val_indices), "digest": split.digest(data.val_indices),
                "rule": f"split.held_out: class-balanced, fixed permutation (seed {split.SPLIT_SEED})",
                "indices": data.val_indices.tolist()}
    with writing(run.path / VAL_SPLIT):
        atomic_write_text(run.path / VAL_SPLIT, json.dumps(held_out) + "\n")


def _check_val_split(run: RunDir, data: DataSource) -> None:
    """A resumed run must hold out the images it held out before (the data may have changed)."""
    path = run.path / VAL_SPLIT
    if data.val_indices is None or not path.exists():
        return
    try:
        recorded = json.loads(path.read_text())["digest"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FastresError(f"cannot read {path}: {exc}; it records the run's held-out images") from None
    if recorded != split.digest(data.val_indices):
        raise FastresError(
            f"cannot resume {run.path}: its held-out images (val_split.json, digest {recorded}) differ from those "
            f"this data set gives ({split.digest(data.val_indices)}): resume it with the training data it "
            "started with, or start a new --run-dir")


def loop_account(rows: list[dict[str, Any]]) -> str | None:
    """Where the training epochs' time went, over the whole run (CPU runs only: see LoopClock)."""
    parts = [r["loop_time_s"] for r in rows if r.get("loop_time_s")]
    total = sum(sum(p.values()) for p in parts)
    if not parts or total <= 0:
        return None
    shares = ", ".join(f"{name} {100 * sum(p[name] for p in parts) / total:.1f}%" for name in LoopClock.PARTS)
    return f"training time by part of the loop: {shares}"


def _explain(exc: BaseException, trainer: Trainer, run: RunDir) -> BaseException:
    """The one-line error a stopped run ends with: what happened, where the run stands, and the
    command that continues it, plus anything that also failed while it was stopping."""
    config, resume = trainer.config, f"fastres train --resume {run.path}"
    if isinstance(exc, KeyboardInterrupt):
        # 128 + signal number, the shell's convention: 130 for Ctrl-C, 143 for SIGTERM.
        error: FastresError = Interrupted(
            f"interrupted after epoch {trainer.epoch}/{config.epochs}; continue with: {resume}",
            exit_code=128 + getattr(exc, "signum", 2))
    elif isinstance(exc, WriteError):
        error = WriteError(f"{exc}; the files written before are intact: make room, then continue with: {resume}")
    elif is_out_of_memory(exc):
        rt = trainer.runtime
        lower = "fp16" if rt.device.type == "cuda" else "bf16"
        error = TrainingFailed(
            f"out of memory training {config.model} (width {config.width}) at batch size {config.batch_size} "
            f"in {rt.precision} on {rt.device_name}: start a new run with a smaller --batch-size "
            f"(e.g. {max(1, config.batch_size // 2)})"
            + (f", or continue this one with: {resume} --precision {lower}" if rt.precision == "fp32" else "")
            + f"; the last good checkpoint is {run.last_checkpoint}")
    elif (fault := device_fault(exc)) is not None:
        # The CUDA context is lost with it, but the checkpoints are on the host: a new process resumes.
        kept = (f"the last good checkpoint is {run.last_checkpoint}" if run.last_checkpoint.exists()
                else "no epoch had finished")
        error = DeviceFault(
            f"the GPU failed during epoch {trainer.epoch + 1}/{config.epochs} on {trainer.runtime.device_name} "
            f"({fault}); {kept}: continue with: {resume} "
            f"(if it fails again at the same point, CUDA_LAUNCH_BLOCKING=1 names the failing operation)")
    elif isinstance(exc, FastresError):
        error = exc
    else:
        return exc  # a bug: its own traceback is what helps
    if trainer.notes:
        error.args = (f"{error} (also: {'; '.join(trainer.notes)})",)
    return error


def parameter_hash(model: nn.Module) -> str:
    """Of the parameters only: under DDP the BatchNorm statistics are rank 0's at the start of
    each forward and then each rank's own batch moves them, so after the last step they differ."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_resume(config: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
    """The recorded config of ``config.run_dir`` with the machine fields of ``config``.

    A different recipe is refused, naming each differing field; so is a config.json that no
    longer says what the run's checkpoint trained (edited by hand), and more epochs for a
    finished run (a new run trains longer: see docs/faults.md).
    """
    run = RunDir(config.run_dir).require_run()
    recorded = TrainConfig.from_dict(run.read_config())
    if run.last_checkpoint.exists():
        record.check_checkpoint(run, recorded, run.last_checkpoint,
                                checkpoint.recorded_config(run.last_checkpoint), action="resume")
    record.read_config(run)  # the digest names an edit even before the first checkpoint
    diffs = recipe_differences(recorded, config)
    if diffs:
        longer = (f" (a run is not extended: train a longer one with fastres train --config {run.config} "
                  "--epochs N --run-dir NEW_DIR)" if "epochs" in diffs else "")
        raise FastresError(f"cannot resume {run.path} with a different recipe: {describe_differences(diffs, 'given')}; "
                           f"drop those options or start a new --run-dir{longer}")
    machine = {k: v for k, v in config.to_dict().items() if k in MACHINE_FIELDS and k != "run_dir"
               and recorded.to_dict()[k] != v}
    if machine:
        log("resuming with machine settings changed: " + ", ".join(
            f"{k} {recorded.to_dict()[k]!r} -> {v!r}" for k, v in machine.items()))
    return recorded.replace(**machine, run_dir=config.run_dir)


def evaluate_run(run_dir: str | Path, *, tta: bool | None = None, translate: int | None = None,
                 which: str = "last", weights: str = "auto", device: str = "auto",
                 data_dir: str | Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Test accuracy of a finished (or interrupted) run's saved weights, by default as the run
    evaluated its last epoch, so the number matches its own ``final_val_acc``: ``tta`` and
    ``translate`` None follow its ``eval_tta`` and ``tta_translate``; ``weights`` ``auto``
    takes the weight average when the run kept one (``averaged``), else the trained weights
    (``raw``); ``data_dir`` None reads the data the run recorded."""
    run = RunDir(run_dir)
    config = TrainConfig.from_dict(run.read_config()).replace(device=device)
    if data_dir is not None:
        config = config.replace(data_dir=str(data_dir))
    tta = config.eval_tta if tta is None else tta
    translate = config.tta_translate if translate is None else translate
    if not isinstance(translate, int) or isinstance(translate, bool) or not 0 <= translate <= 4:
        raise ConfigError(f"--tta-translate must be 0 to 4 pixels, got {translate!r}: pass e.g. --tta-translate 1")
    path = run.last_checkpoint if which == "last" else run.best_checkpoint
    if not path.exists():
        raise FastresError(f"{run.path} has no {path.name} yet: train it first (fastres train --resume {run.path})")
    runtime = resolve_runtime(config)
    state = checkpoint.load(path, map_location=runtime.device, log=log)
    record.check_checkpoint(run, config, path, state.get("config"), action="evaluate")
    if weights == "averaged" and "ema" not in state:
        raise FastresError(f"{path} holds no weight average (the run trained without --ema): drop --weights averaged")
    averaged = weights != "raw" and "ema" in state
    model = runtime.place(build_model(config.model, norm=config.norm, width=config.width))
    try:
        if averaged:  # AveragedModel's keys: the module's under "module.", and its update count
            model.load_state_dict({k.removeprefix("module."): v for k, v in state["ema"].items()
                                   if k.startswith("module.")})
        else:
            model.load_state_dict(state["model"])
    except RuntimeError as exc:  # a checkpoint of another run copied in: torch lists every tensor
        raise FastresError(f"{path} does not hold weights of the model {run.config} describes "
                           f"({config.model}, width {config.width}, norm {config.norm}): "
                           f"{str(exc).splitlines()[0][:160]}; evaluate the run the checkpoint came from") from None
    data = _open(config, runtime, log)
    augment = BatchAugment(runtime.device, runtime.amp_dtype, channels_last=runtime.channels_last)
    result = evaluate(model, data, augment, runtime, tta=tta, translate=translate)
    return {**result, "epoch": state["epoch"], "checkpoint": str(path), "tta": tta, "translate": translate,
            "weights": "averaged" if averaged else "raw"}
