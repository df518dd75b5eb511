"""Test accuracy: ``evaluate`` of a model on the test set (or the held-out split), as the
training loop runs it each epoch, and ``evaluate_run`` of a run directory's saved weights
(``fastres eval``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint, recipe, record
from .augment import BatchAugment
from .config import TrainConfig
from .data import DataSource, open_config_data
from .errors import ConfigError, FastresError
from .models import build_model
from .rundir import RunDir
from .runtime import Runtime, resolve_runtime


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataSource,
    augment: BatchAugment,
    runtime: Runtime,
    *,
    tta: bool = False,
    translate: int = 0,
    batches: Any = None,
) -> dict[str, float]:
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
                out = sum(
                    w * model(v.contiguous(memory_format=layout)).float()
                    for w, v in recipe.tta_views(x, translate, flip=True)
                )
            else:
                out = model(x).float()
                if tta:
                    out = (out + model(x.flip(3)).float()) / 2
        loss_sum += criterion(out, labels)
        correct += (out.argmax(1) == labels).sum()
        seen += labels.shape[0]
    return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen, "images": seen}


def evaluate_run(
    run_dir: str | Path,
    *,
    tta: bool | None = None,
    translate: int | None = None,
    which: str = "last",
    weights: str = "auto",
    device: str = "auto",
    data_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
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
        raise ConfigError(
            f"--tta-translate must be 0 to 4 pixels, got {translate!r}: pass e.g. --tta-translate 1"
        )
    path = run.last_checkpoint if which == "last" else run.best_checkpoint
    if not path.exists():
        raise FastresError(
            f"{run.path} has no {path.name} yet: train it first (fastres train --resume {run.path})"
        )
    runtime = resolve_runtime(config)
    state = checkpoint.load(path, map_location=runtime.device, log=log)
    record.check_checkpoint(run, config, path, state.get("config"), action="evaluate")
    if weights == "averaged" and "ema" not in state:
        raise FastresError(
            f"{path} holds no weight average (the run trained without --ema): "
            "drop --weights averaged"
        )
    averaged = weights != "raw" and "ema" in state
    model = _saved_model(run, config, runtime, path, state, averaged)
    data = open_config_data(config, runtime.device, log)
    augment = BatchAugment(runtime.device, runtime.amp_dtype, channels_last=runtime.channels_last)
    result = evaluate(model, data, augment, runtime, tta=tta, translate=translate)
    return {
        **result,
        "epoch": state["epoch"],
        "checkpoint": str(path),
        "tta": tta,
        "translate": translate,
        "weights": "averaged" if averaged else "raw",
    }


def _saved_model(
    run: RunDir,
    config: TrainConfig,
    runtime: Runtime,
    path: Path,
    state: dict[str, Any],
    averaged: bool,
) -> nn.Module:
    """The model ``config`` describes with the checkpoint's weights: its weight average's when
    ``averaged``, else the trained ones."""
    model = runtime.place(build_model(config.model, norm=config.norm, width=config.width))
    try:
        if averaged:  # AveragedModel's keys: the module's under "module.", and its update count
            model.load_state_dict(
                {
                    k.removeprefix("module."): v
                    for k, v in state["ema"].items()
                    if k.startswith("module.")
                }
            )
        else:
            model.load_state_dict(state["model"])
    except RuntimeError as exc:  # a checkpoint of another run copied in: torch lists every tensor
        raise FastresError(
            f"{path} does not hold weights of the model {run.config} describes "
            f"({config.model}, width {config.width}, norm {config.norm}): "
            f"{str(exc).splitlines()[0][:160]}; "
            "evaluate the run the checkpoint came from"
        ) from None
    return model
