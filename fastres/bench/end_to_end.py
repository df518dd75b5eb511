"""A real training run against the pure train step: how much of the step rate the whole loop
(loader, augmentation, bookkeeping, evaluation) keeps."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..data import DataSource, open_data
from ..rundir import RunDir
from ..runtime import Runtime, resolve_runtime
from ..train import Trainer, train, train_step
from .step import measure_step
from .timing import FULL_TIMING, Timing


def _bench_config(
    model: str,
    width: int,
    batch_size: int,
    data_dir: str | Path,
    run_dir: str | Path,
    device: torch.device,
    **changes: Any,
) -> TrainConfig:
    """The benchmarks' training config: constant learning rate, the FFCV loader."""
    return TrainConfig(
        model=model,
        width=width,
        batch_size=batch_size,
        lr_schedule="none",
        loader="ffcv",
        data_dir=str(data_dir),
        run_dir=str(run_dir),
        device=device.type,
        preset="bench",
        **changes,
    )


def measure_end_to_end(
    model: str,
    batch_size: int,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    device: torch.device,
    width: int = 64,
    train_subset: int = 0,
    epochs: int = 2,
    test_subset: int = 500,
    timing: Timing = FULL_TIMING,
    run_training: Callable[[Callable[[], dict[str, Any]]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A real training run's epoch rate against the pure train-step rate of the same setup.

    The run is ``fastres.train.train`` with the FFCV loader; its last epoch is compared
    (the first one includes FFCV's pipeline compilation and, on CUDA, torch.compile).
    ``kept`` = epoch images/s / step images/s: how much of the step rate the whole loop keeps.
    On a CPU the epoch also says where its time went (``loop_shares``: load, augment, step,
    other, as fractions of the epoch's training time; ``loop_shares["step"]`` is the share of
    the step inside the loop, measured without drift between two measurements).
    ``run_training(fn)`` calls ``fn`` (pytest-benchmark's pedantic times it in the suite).
    """
    config = _bench_config(
        model,
        width,
        batch_size,
        data_dir,
        run_dir,
        device,
        epochs=epochs,
        train_subset=train_subset,
        test_subset=test_subset,
    )
    runtime = resolve_runtime(config)

    def step_rate() -> dict[str, Any]:
        return measure_step(
            model,
            batch_size,
            "train",
            "fastres",
            device=device,
            width=width,
            timing=timing,
            runtime=runtime,
        )

    def training() -> dict[str, Any]:
        return train(config, log=lambda m: None, progress=False)

    before, summary, wall, after = _between_step_rates(step_rate, training, run_training)
    step = dict(before, images_per_s=(before["images_per_s"] + after["images_per_s"]) / 2)
    rows = RunDir(run_dir).read_metrics()
    epoch_rate = rows[-1]["images_per_s"]
    return {
        **_loop_account(rows[-1]),
        "model": model,
        "batch_size": batch_size,
        "width": width,
        "epochs": epochs,
        "train_images": (train_subset or 50_000) // batch_size * batch_size,
        "step_images_per_s": step["images_per_s"],
        "epoch_images_per_s": epoch_rate,
        "epoch_images_per_s_all": [r["images_per_s"] for r in rows],
        "run_images_per_s": summary["images_per_s"],
        "kept": epoch_rate / step["images_per_s"],
        "run_wall_s": wall,
        "cpu_wait": summary.get("cpu_wait"),
        "precision": runtime.precision,
        "channels_last": runtime.channels_last,
        "compile": runtime.compile,
        "step": step,
        "step_images_per_s_before_after": [before["images_per_s"], after["images_per_s"]],
    }


def _between_step_rates(
    step_rate: Callable[[], dict[str, Any]],
    training: Callable[[], dict[str, Any]],
    run_training: Callable[[Callable[[], dict[str, Any]]], dict[str, Any]] | None,
) -> tuple[dict[str, Any], dict[str, Any], float, dict[str, Any]]:
    """The step rate, the run (its summary and wall time) and the step rate again: averaged,
    the two rates keep a machine whose speed drifts (shared CPUs) from showing up as a loss or
    gain of the loop."""
    before = step_rate()
    t0 = time.perf_counter()
    summary = run_training(training) if run_training is not None else training()
    wall = time.perf_counter() - t0
    return before, summary, wall, step_rate()


def _loop_account(row: dict[str, Any]) -> dict[str, Any]:
    """The last epoch's own account of its time (CPU only; None elsewhere): each part of the
    loop measured in the same epoch, so the machine's drift cancels in the shares, unlike in
    ``kept``; and the step's rate inside the loop."""
    parts = row.get("loop_time_s")
    train_s = row.get("epoch_train_s")
    shares = {k: v / train_s for k, v in parts.items()} if parts and train_s else None
    return {
        "loop_time_s": parts,
        "loop_shares": shares,
        "step_in_loop_images_per_s": row["images_per_s"] * train_s / parts["step"]
        if shares
        else None,
    }


def measure_step_in_loop(
    model: str,
    batch_size: int,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    device: torch.device,
    width: int = 64,
    train_subset: int = 0,
    size: int = 32,
    block: int = 10,
    settle: int = 3,
) -> dict[str, Any]:
    """Does the train step itself run slower inside the training loop than alone?

    One epoch of a real ``Trainer`` (FFCV loader, augmentation, the trained step) in which
    every ``block`` loop steps are followed by ``block`` steps on a batch held from the
    loader, with nothing else running: the two kinds alternate every few seconds, so a shared
    machine's drift cancels in their ratio, which two separate measurements (``kept``) cannot
    promise. The first ``settle`` held steps of each block are not counted: the loader's
    thread is still filling its queue then. ``step_kept`` = median held step time / median
    loop step time (1.0: the loop costs the step nothing; below: the loader's threads, or the
    data arriving in fresh memory, slow it). CPU only (a GPU step returns before it ran).
    """
    if device.type != "cpu":
        raise ValueError("measure_step_in_loop times steps on the host: CPU only")
    if not 0 <= settle < block:
        raise ValueError(
            f"settle ({settle}) must be smaller than block ({block}): it skips held steps of each "
            "block"
        )
    trainer, data, runtime = _loop_trainer(
        model, width, batch_size, data_dir, run_dir, device, train_subset
    )
    in_loop, alone = _alternate_blocks(trainer, data, runtime, size, block, settle)
    if not in_loop or not alone:
        raise ValueError(
            f"{train_subset or 50_000} training images make fewer than two blocks of {block} "
            f"batches of {batch_size}: use more images or a smaller block"
        )
    loop_s, alone_s = statistics.median(in_loop), statistics.median(alone)
    return {
        "model": model,
        "width": width,
        "batch_size": batch_size,
        "size": size,
        "block": block,
        "loop_steps": len(in_loop),
        "alone_steps": len(alone),
        "loop_step_s": loop_s,
        "alone_step_s": alone_s,
        "step_kept": alone_s / loop_s,
        "precision": runtime.precision,
        "channels_last": runtime.channels_last,
    }


def _loop_trainer(
    model: str,
    width: int,
    batch_size: int,
    data_dir: str | Path,
    run_dir: str | Path,
    device: torch.device,
    train_subset: int,
) -> tuple[Trainer, DataSource, Runtime]:
    """A real ``Trainer`` for one epoch on the FFCV loader, in training mode: the trainer, its
    data and its runtime."""
    config = _bench_config(
        model,
        width,
        batch_size,
        data_dir,
        run_dir,
        device,
        epochs=1,
        lr=0.01,
        train_subset=train_subset,
    )
    runtime = resolve_runtime(config)
    data = open_data(
        loader="ffcv",
        data_dir=data_dir,
        batch_size=batch_size,
        device=device,
        seed=config.seed,
        train_subset=train_subset,
        test_subset=batch_size,
        log=lambda m: None,
    )
    trainer = Trainer(config, runtime, data, RunDir(run_dir), log=lambda m: None)
    trainer.model.train()
    return trainer, data, runtime


def _alternate_blocks(
    trainer: Trainer, data: DataSource, runtime: Runtime, size: int, block: int, settle: int
) -> tuple[list[float], list[float]]:
    """One epoch in which every ``block`` loop steps are followed by ``block`` steps on a batch
    held from the loader: the seconds of the loop's steps and of the held ones, the first block
    and each block's first ``settle`` held steps left out."""

    def step(x: torch.Tensor, labels: torch.Tensor) -> float:
        t0 = time.perf_counter()
        train_step(
            trainer.forward,
            trainer.criterion,
            trainer.optimizer,
            trainer.scaler,
            runtime,
            x,
            labels,
        )
        return time.perf_counter() - t0

    data.train.set_epoch(0)
    in_loop: list[float] = []
    alone: list[float] = []
    held = None
    for i, (images, labels) in enumerate(data.train):
        x = trainer.augment.train(images, size, None)
        if held is None:  # the loader reuses its buffers: keep copies
            held = (x.clone(), labels.clone())
        seconds = step(x, labels)
        if i >= block:  # the first block warms up the loader's pipeline (FFCV compiles it)
            in_loop.append(seconds)
        if (i + 1) % block == 0:
            times = [step(*held) for _ in range(block)]
            if i >= block:
                alone.extend(times[settle:])
    return in_loop, alone
