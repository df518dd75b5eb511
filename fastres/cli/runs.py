"""``fastres prepare-data``, ``train`` and ``eval``: one run's commands, and what a run tells a
newcomer (hours on a CPU, what to do next)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import FastresError
from ..rundir import STUDY, RunDir
from .options import add_config_options, config_from_args, presets_table
from .output import log
from .signals import stop_cleanly_on_signals


def add_parsers(sub: Any) -> None:
    """The ``prepare-data``, ``train`` and ``eval`` subcommands."""
    _add_prepare(sub)
    _add_train(sub)
    _add_eval(sub)


def _add_prepare(sub: Any) -> None:
    p = sub.add_parser(
        "prepare-data",
        help="convert CIFAR-10 into FFCV .beton files (once)",
        description="Find CIFAR-10 (--source, $FASTRES_CIFAR10, DATA_DIR/cifar-10-batches-py, "
        "DATA_DIR/cifar-10-python.tar.gz, else download) and write "
        "DATA_DIR/cifar10_{train,test}.beton plus a manifest. A no-op when they are up to date.",
    )
    p.add_argument("--data-dir", default="data", help="where the betons go (default: data)")
    p.add_argument("--source", help="a cifar-10-batches-py folder or cifar-10-python.tar.gz")
    p.add_argument("--force", action="store_true", help="rebuild even if the betons are up to date")
    p.add_argument(
        "--allow-small",
        action="store_true",
        help="accept a source with fewer images than CIFAR-10 (custom subsets, tests)",
    )


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train one run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a CIFAR-10 ResNet from a preset plus overrides.\n\n" + presets_table(),
        epilog="examples:\n  fastres train --preset fast          # on a GPU\n"
        "  fastres train --preset quick         # on a CPU\n"
        "  fastres train --preset baseline --model resnet34 --lr 0.05\n"
        "  fastres train --resume runs/cosine-20260101-120000",
    )
    p.add_argument("--preset", help="start from this preset (default: baseline)")
    p.add_argument(
        "--config",
        metavar="CONFIG_JSON",
        help="start from a recorded config (a run's config.json or run directory)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its checkpoints/last.pt",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar per epoch (default: on when stderr is a terminal)",
    )
    add_config_options(p)


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="test accuracy of a run's saved weights")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the predictions for each image and its mirror (default: as the run "
        "evaluated, its eval_tta)",
    )
    p.add_argument(
        "--tta-translate",
        type=int,
        default=None,
        metavar="N",
        help="multi-view TTA: add views shifted by N pixels (default: as the run's last "
        "evaluation, its tta_translate)",
    )
    p.add_argument(
        "--weights",
        choices=("auto", "averaged", "raw"),
        default="auto",
        help="auto (default): the weight average when the run kept one (--ema), else the trained "
        "weights",
    )
    p.add_argument("--checkpoint", choices=("last", "best"), default="last")
    p.add_argument(
        "--data-dir",
        default=None,
        help="where the .beton files are (default: the data_dir the run recorded)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..prepare import prepare_data

    prepare_data(
        args.data_dir, args.source, force=args.force, allow_small=args.allow_small, log=log
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import train

    if args.resume and (args.preset or args.config):
        raise FastresError("--resume continues a recorded run: drop --preset/--config")
    config, resume = config_from_args(args)
    speaks = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for the run
    if speaks and not resume and (note := _cpu_hours_note(config)) is not None:
        log(note)
    stop_cleanly_on_signals()
    summary = train(config, log=log, progress=args.progress, resume=resume)
    if speaks:
        log(_next_steps(summary["run_dir"]))
    return 0


# What a full-width ResNet-18 step trains per second per CPU core, roughly (BENCHMARKS.md, "CPU,
# 2 cores"), and what the other models cost per image relative to it.
_CPU_IMAGES_PER_S_PER_CORE = 50.0
_MODEL_COST = {"resnet18": 1.0, "resnet34": 2.0, "resnet50": 3.0}


def _cpu_hours_note(config: TrainConfig) -> str | None:
    """One line when a run is about to train on the CPU for an hour or more (a bare `fastres
    train` is baseline: full width, 200 epochs): a rough guess, not a refusal."""
    cores = config.threads or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    images = config.epochs * (config.train_subset or 50_000)
    work = images * _MODEL_COST.get(config.model, 1.0) * (config.width / 64) ** 2
    hours = work / (_CPU_IMAGES_PER_S_PER_CORE * (cores or 1)) / 3600
    if hours < 1 or config.device == "cuda" or (config.device == "auto" and _cuda_available()):
        return None
    return (
        f"note: {config.model} at width {config.width} for {config.epochs} epochs on the CPU "
        f"takes hours (roughly {hours:.0f} h on {cores} cores; machines vary); --preset quick "
        "trains in minutes"
    )


def _command(name: str) -> str:
    """How to call NAME, a command installed beside this Python (fastres, tensorboard), from
    here: bare when the shell finds this one, else by its path (e.g. .venv/bin/tensorboard)."""
    exe = Path(sys.executable).parent / name
    found = shutil.which(name)
    if not exe.exists() or (found is not None and Path(found).resolve() == exe.resolve()):
        return name
    relative = os.path.relpath(exe)
    return relative if not relative.startswith("..") else str(exe)


def _next_steps(run_dir: str) -> str:
    run = RunDir(run_dir)
    fastres = _command("fastres")
    study = run.path.parent.parent  # a study's run is OUT/<setting>/seed<S>: its report is OUT's
    folder = study if (study / STUDY).exists() else run.path.parent
    return (
        f"next: {fastres} eval {shlex.quote(str(run.path))} (test its saved weights); "
        f"{fastres} report {shlex.quote(str(folder))} (compare the runs there); "
        f"{_command('tensorboard')} --logdir {shlex.quote(str(run.tensorboard))} (the curves)"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from ..train import evaluate_run

    result = evaluate_run(
        args.run_dir,
        tta=args.tta,
        translate=args.tta_translate,
        which=args.checkpoint,
        weights=args.weights,
        device=args.device,
        data_dir=args.data_dir,
        log=log,
    )
    if args.json:
        print(json.dumps(result))
    else:
        views = (
            f"flip + {result['translate']}-pixel shifts TTA"
            if result["translate"]
            else "flip TTA"
            if result["tta"]
            else "no TTA"
        )
        print(
            f"{args.run_dir}: test accuracy {100 * result['acc']:.2f}% (loss {result['loss']:.4f}, "
            f"{result['images']} images, epoch {result['epoch']}, {result['weights']} weights, "
            f"{views})"
        )
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
