"""What a training run is built from: the model (and what trains and evaluates it under
torch.compile and DDP), the average of its weights, the optimizer, its lr schedule, the gradient
scaler, the loss and the batch augmentation, built from a config in one fixed order (the seeded
draws in it are the run's), and the CUDA-graph step over them with ``--cuda-graph on``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed, recipe
from .augment import BatchAugment
from .config import TrainConfig
from .data import DataSource
from .models import build_model, count_parameters
from .runtime import Runtime, compile_module, seed_everything
from .schedule import lr_factor
from .step import GraphStep, graph_obstacle


@dataclass
class RunParts:
    model: nn.Module  # the plain module: its state_dict has no compile or DDP prefixes
    forward: Any  # what trains: the model, compiled and/or wrapped by DDP as the run asks
    eval_forward: Any  # what evaluates: the weight average when there is one, else the model
    ema: Any  # recipe.build_ema's average of the weights, or None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: nn.CrossEntropyLoss
    augment: BatchAugment
    graph_step: GraphStep | None  # --cuda-graph on (None: the eager step)
    params: int
    steps_per_epoch: int


def build_parts(
    config: TrainConfig,
    runtime: Runtime,
    data: DataSource,
    log: Callable[[str], None],
    dist: distributed.Dist = distributed.SINGLE,
) -> RunParts:
    """The parts of a run of ``config`` on ``data``, seeded with ``config.seed`` first."""
    device = runtime.device
    seed_everything(config.seed)
    model = runtime.place(build_model(config.model, norm=config.norm, width=config.width))
    recipe.set_bn_momentum(model, config.bn_momentum)
    params = count_parameters(model)
    if dist.enabled and config.sync_bn and config.norm == "batch":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # torch.compile and DDP wrap the module; the plain one gives state_dicts without their
    # prefixes, so checkpoints load in any setting (one process or many, compiled or not).
    compiled = compile_module(model) if runtime.compile else model
    if dist.enabled:
        ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        forward = compile_module(ddp) if runtime.compile else ddp
    else:
        forward = compiled
    # The average of the weights, when asked for, is what the run evaluates and reports.
    ema = recipe.build_ema(model, config.ema)
    averaged = ema.module if ema is not None else None
    if averaged is None:
        eval_forward = compiled  # no gradient sync needed: evaluation is per process
    else:
        eval_forward = compile_module(averaged) if runtime.compile else averaged
    optimizer = recipe.build_optimizer(model, config)
    steps_per_epoch = len(data.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config, step, steps_per_epoch)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=runtime.grad_scaler)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    augment = BatchAugment(
        device,
        runtime.amp_dtype,
        channels_last=runtime.channels_last,
        augment=config.augment,
        padding=config.crop_padding,
        seed=config.seed,
        alternate_flip=config.alternate_flip,
        dataset_size=data.train.dataset_size,
    )
    parts = RunParts(
        model,
        forward,
        eval_forward,
        ema,
        optimizer,
        scheduler,
        scaler,
        criterion,
        augment,
        None,
        params,
        steps_per_epoch,
    )
    # --cuda-graph on: the step a CUDA graph holds (on the CPU the same step, uncaptured).
    if config.cuda_graph == "on":
        parts.graph_step = _graph_step(parts, config, runtime, dist, log)
    return parts


def _graph_step(
    parts: RunParts,
    config: TrainConfig,
    runtime: Runtime,
    dist: distributed.Dist,
    log: Callable[[str], None],
) -> GraphStep | None:
    obstacle = graph_obstacle(runtime, dist.enabled)
    if obstacle is not None:
        log(f"--cuda-graph on: stepping eagerly instead ({obstacle})")
        return None
    # It captures lazily, at its first full-batch steps: after a resume has loaded its state.
    return GraphStep(
        parts.forward,
        parts.model,
        parts.criterion,
        parts.optimizer,
        runtime,
        batch_size=config.batch_size,
        ema=parts.ema,
        ema_decay=config.ema,
        log=log,
    )
