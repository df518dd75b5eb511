"""The ``fastres`` command: a thin layer over the Python API.

Every ``TrainConfig`` field is a ``fastres train`` option (``--field-name``), generated from
the dataclass so the two can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import sys
import traceback
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cluster import LAUNCHERS, JobOptions, job_options
from .config import (
    ALIASES,
    DESCRIPTIONS,
    NUMBER_LISTS,
    PRESETS,
    TrainConfig,
    field_type,
    get_preset,
    load_config_file,
    option_flag,
    parse_numbers,
)
from .errors import FastresError
from .files import ensure_writable_dir, ensure_writable_file
from .models import IMAGENET_MODELS, check_model_name, check_width, model_names, standard_width
from .rundir import STUDY, STUDY_ROOT, RunDir


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), like every other fastres error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _numbers(name: str) -> Callable[[str], tuple[float, ...]]:
    def parse(text: str) -> tuple[float, ...]:
        try:
            return parse_numbers(text, name)
        except FastresError as exc:  # argparse would replace a ValueError's message with its own
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _held_out_images(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"--val-split takes a number of training images to hold out, N >= 1 (e.g. 5000), got {text!r}: "
            "leave it out to hold none out")
    return n


def _log(message: str) -> None:
    print(message, flush=True)


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field; defaults are SUPPRESSed so only given ones override."""
    group = parser.add_argument_group("training options (override the preset; every TrainConfig field)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":  # set by --preset, which picks the base config
            continue
        flag = option_flag(f.name)
        help_ = f"{f.metadata.get('help', '')} (default: {f.default})"
        kind = field_type(f.name)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        elif f.name in NUMBER_LISTS:
            group.add_argument(flag, type=_numbers(f.name), default=argparse.SUPPRESS,
                               metavar=f.metadata["metavar"], help=help_)
        elif f.name == "val_split":  # its default 0 means off; asked for, it must hold something out
            group.add_argument(flag, type=_held_out_images, default=argparse.SUPPRESS, metavar="N", help=help_)
        else:
            metavar = {int: "N", float: "X"}.get(kind, f.name.upper())
            group.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=metavar, help=help_)
    group.add_argument("--no-normalize", dest="norm", action="store_const", const="none", default=argparse.SUPPRESS,
                       help="train without BatchNorm, as in the original scripts (same as --norm none)")


def _config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The resolved config and whether this is a resume."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names and k != "preset"}
    if args.resume:
        base = TrainConfig.from_dict(RunDir(args.resume).require_run().read_config())
        return base.replace(**overrides, run_dir=args.resume), True
    if args.config:
        base = load_config_file(args.config).replace(run_dir="")
    else:
        base = get_preset(args.preset or "baseline")
    return base.replace(**overrides), False


def _presets_table() -> str:
    rows = [f"  {name:<13} {DESCRIPTIONS[name]}" for name in PRESETS]
    rows += [f"  {alias:<13} alias of {target}" for alias, target in ALIASES.items()]
    return "presets:\n" + "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastres", description="Fast, reproducible CIFAR-10 ResNet training and ablations.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("prepare-data", help="convert CIFAR-10 into FFCV .beton files (once)",
                       description="Find CIFAR-10 (--source, $FASTRES_CIFAR10, DATA_DIR/cifar-10-batches-py, "
                                   "DATA_DIR/cifar-10-python.tar.gz, else download) and write "
                                   "DATA_DIR/cifar10_{train,test}.beton plus a manifest. A no-op when they are up to date.")
    p.add_argument("--data-dir", default="data", help="where the betons go (default: data)")
    p.add_argument("--source", help="a cifar-10-batches-py folder or cifar-10-python.tar.gz")
    p.add_argument("--force", action="store_true", help="rebuild even if the betons are up to date")
    p.add_argument("--allow-small", action="store_true",
                   help="accept a source with fewer images than CIFAR-10 (custom subsets, tests)")

    p = sub.add_parser("train", help="train one run", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a CIFAR-10 ResNet from a preset plus overrides.\n\n" + _presets_table(),
                       epilog="examples:\n  fastres train --preset fast          # on a GPU\n"
                              "  fastres train --preset quick         # on a CPU\n"
                              "  fastres train --preset baseline --model resnet34 --lr 0.05\n"
                              "  fastres train --resume runs/cosine-20260101-120000")
    p.add_argument("--preset", help="start from this preset (default: baseline)")
    p.add_argument("--config", metavar="CONFIG_JSON", help="start from a recorded config (a run's config.json or run directory)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoints/last.pt")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar per epoch (default: on when stderr is a terminal)")
    _add_config_options(p)

    p = sub.add_parser("eval", help="test accuracy of a run's saved weights")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average the predictions for each image and its mirror (default: as the run evaluated, "
                        "its eval_tta)")
    p.add_argument("--tta-translate", type=int, default=None, metavar="N",
                   help="multi-view TTA: add views shifted by N pixels (default: as the run's last evaluation, its tta_translate)")
    p.add_argument("--weights", choices=("auto", "averaged", "raw"), default="auto",
                   help="auto (default): the weight average when the run kept one (--ema), else the trained weights")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last")
    p.add_argument("--data-dir", default=None,
                   help="where the .beton files are (default: the data_dir the run recorded)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser(
        "ablate", help="run presets over several seeds, then report mean and spread",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run each chosen preset with seeds S, S+1, ..., S+N-1, one run directory each "
                    "(OUT/<preset>/seed<S>/), then write OUT/report.md (see fastres report). Running "
                    "the same command again skips finished runs and resumes interrupted ones. Every "
                    "training option below applies to every run.\n\n" + _presets_table(),
        epilog="examples:\n  fastres ablate --list\n  fastres ablate --all --seeds 3 --epochs 100\n"
               "  fastres ablate --all --base quick --seeds 3 --interleave   # the settings as changes to quick\n"
               "  fastres ablate --config baseline no_batchnorm --seeds 2 --width 16 --epochs 4 --train-subset 10000\n"
               "  fastres ablate --all --seeds 2 --dry-run > jobs.txt      # one command per line, for a scheduler\n"
               "  fastres ablate --config quick --seeds 3 --out runs/b --reuse runs/a --variant ema:\"--ema 0.99\"\n"
               "  fastres ablate --all --seeds 3 --devices 0,1,2,3        # one run per GPU at a time\n"
               "  fastres ablate --all --seeds 3 --launcher slurm --partition gpu --time-limit 4:00:00\n"
               "  fastres ablate --status runs/ablations                   # where each run of the study stands")
    p.add_argument("--list", action="store_true", help="list every preset, its description and its differences from baseline")
    p.add_argument("--status", metavar="OUT", help="one line per planned run of the study in OUT (done, running, "
                                                   "interrupted, diverged, failed, not started) with epochs done; starts nothing")
    p.add_argument("--config", nargs="+", metavar="NAME", help="presets (or aliases, e.g. cosine_schedule) to run")
    p.add_argument("--all", action="store_true", help="the seven ablation presets of the original study (with "
                                                       "--base: its six settings on that base)")
    p.add_argument("--base", metavar="PRESET|CONFIG",
                   help="run the original study's settings (--all, or --config cosine small_batch ...) as changes to "
                        "this base: a preset (e.g. quick) or a config file (a run's config.json or run directory); "
                        "each setting is the base plus exactly its change, a named variant paired by seed with the "
                        "base's runs (--list and --dry-run say what each changes, and by which rule)")
    p.add_argument("--times-from", action="append", metavar="DIR",
                   help="with --dry-run: finished runs below DIR (repeatable) whose epoch times project the study's "
                        "training time (the runs below --out and --reuse count too)")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="runs per preset, seeds S..S+N-1 (default: 1); S is --seed (default: the preset's, 42)")
    p.add_argument("--out", default=STUDY_ROOT, metavar="DIR", help=f"where the run directories and the report go (default: {STUDY_ROOT})")
    p.add_argument("--variant", action="append", metavar='NAME:"OPTIONS"',
                   help='a named variant of the (one) preset: its training options, run over the same seeds into '
                        'OUT/NAME/seed<S> next to the preset\'s own runs, which the report compares it with, '
                        'paired by seed (repeatable), e.g. --variant ema:"--ema 0.99" --variant bn:"--bn-momentum 0.4"')
    p.add_argument("--reuse", action="append", metavar="DIR",
                   help="an earlier study's --out: a run of this study not begun in OUT that finished below DIR "
                        "with the same recipe and seed (whatever its folder's name) is counted, not trained again "
                        "(repeatable), e.g. new variants against an earlier study's runs of the preset; the report "
                        "shows it")
    p.add_argument("--interleave", action="store_true",
                   help="run seed by seed (seed S of every setting, then S+1, ...) instead of setting by setting: "
                        "a machine whose speed drifts then slows every setting alike, as comparing times needs")
    p.add_argument("--dry-run", action="store_true", help="print the fastres train commands, one per line, and run nothing")
    p.add_argument("--devices", metavar="0,1,...", help="GPU indices: runs go side by side, each pinned to one of "
                                                        "these GPUs (one per GPU at a time, see --runs-per-device)")
    p.add_argument("--runs-per-device", type=int, default=1, metavar="K",
                   help="runs at a time on each device (default 1): on a GPU, K runs share it (a CIFAR ResNet leaves "
                        "a large GPU mostly idle); on the CPU, K runs share the cores (--threads cores/K each)")
    p.add_argument("--retries", type=int, default=1, metavar="N",
                   help="resume a run the GPU failed under (a CUDA error: exit status 71) up to N times from its "
                        "last checkpoint (default 1; 0: report it as failed; the local launcher)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local (default): runs go from this process; slurm: one task of a Slurm job array per run, "
                        "submitted through submitit (pip install 'fastres[slurm]'); submitit-local: the same jobs, "
                        "run on this machine (to try a setup out)")
    g = p.add_argument_group("scheduler options (with --launcher slurm or submitit-local)")
    g.add_argument("--time-limit", metavar="TIME", help="each task's time limit, as Slurm writes it (90, 4:00:00, "
                                                        "1-12:00:00); a task reaching it is requeued and resumes")
    g.add_argument("--partition", help="Slurm partition")
    g.add_argument("--gpus-per-run", type=int, metavar="N", help="GPUs per run (default 1; 0 for a CPU partition)")
    g.add_argument("--cpus-per-run", type=int, metavar="N", help="CPU cores per run (default: the cluster's)")
    g.add_argument("--account", help="Slurm account to charge")
    g.add_argument("--qos", help="Slurm quality of service")
    g.add_argument("--max-parallel", type=int, metavar="N", help="runs at a time (Slurm's array throttle %%N; "
                                                                 "submitit-local: default 1)")
    g.add_argument("--max-requeues", type=int, metavar="N", help="how often a task that reaches its time limit is "
                                                                 "requeued (default 3; preemptions always requeue)")
    g.add_argument("--slurm", action="append", metavar="KEY=VALUE", help="any other sbatch option, e.g. --slurm "
                                                                          "mem=32G --slurm constraint=a100 (repeatable)")
    _add_config_options(p)

    p = sub.add_parser("report", help="aggregate the runs in a folder (or several): report.md, plots, JSON",
                       description="Group the runs below DIR (or below several DIRs, as one study) by setting "
                                   "(preset + recipe), and write into DIR (or --out OUT) report.md (final and "
                                   "best-epoch val accuracy, mean ± sample std over seeds, the difference from the "
                                   "reference with its 95% interval from Student's t for the n at hand and the seeds "
                                   "that would separate it, train accuracy, epochs, "
                                   "wall time, images/s, the original study's number), report.json and the plots "
                                   "val_acc.png, lr_schedule.png and acc_vs_time.png. Unfinished runs are listed, not counted; a run "
                                   "whose CPU other processes shared is marked and left out of time ratios.")
    p.add_argument("dir", metavar="DIR", nargs="+",
                   help="a folder of runs, e.g. the --out of fastres ablate; several are reported as one study "
                        "(a setting's seeds from each count together; a run of a setting and seed already "
                        "counted from an earlier folder is listed, not counted again)")
    p.add_argument("--out", metavar="OUT", help="where report.md, report.json and the plots go (default: DIR; "
                                                "needed with several folders)")
    p.add_argument("--reference", metavar="NAME", help="the setting every other is compared with (a preset's or a "
                                                       "--variant's name; default: baseline, or the study's preset "
                                                       "when it has variants); paired by seed where seeds match")
    p.add_argument("--json", action="store_true", help="print the aggregated results as JSON (accuracies as fractions)")

    _add_bench_parser(sub)
    return parser


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .prepare import prepare_data

    prepare_data(args.data_dir, args.source, force=args.force, allow_small=args.allow_small, log=_log)
    return 0


class _Stopped(KeyboardInterrupt):
    """A stop signal other than Ctrl-C; ``signum`` makes the exit status (128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def _raise_stopped(signum: int, frame: Any) -> None:
    # Slurm signals every process of a job step and a launcher may pass the same signal on:
    # a second one must not cut short the checkpoint and summary the first one started.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise _Stopped(signum)


def _stop_cleanly_on_signals() -> None:
    """SIGTERM (kill, schedulers) and SIGUSR1/SIGUSR2 (what Slurm sends before it ends or
    preempts a job, with --signal) stop as cleanly as Ctrl-C: checkpoint kept, summary written."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _raise_stopped)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    if args.resume and (args.preset or args.config):
        raise FastresError("--resume continues a recorded run: drop --preset/--config")
    config, resume = _config_from_args(args)
    speaks = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for the run
    if speaks and not resume and (note := _cpu_hours_note(config)) is not None:
        _log(note)
    _stop_cleanly_on_signals()
    summary = train(config, log=_log, progress=args.progress, resume=resume)
    if speaks:
        _log(_next_steps(summary["run_dir"]))
    return 0


# A full-width ResNet-18 step trains roughly 50 images/s per core on a CPU (BENCHMARKS.md, "CPU,
# 2 cores"); the others cost about this many times as much per image.
_CPU_IMAGES_PER_S_PER_CORE = 50.0
_MODEL_COST = {"resnet18": 1.0, "resnet34": 2.0, "resnet50": 3.0}


def _cpu_hours_note(config: TrainConfig) -> str | None:
    """One line when a run is about to train on the CPU for an hour or more (a bare `fastres
    train` is baseline: full width, 200 epochs): a rough guess, not a refusal."""
    cores = config.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    images = config.epochs * (config.train_subset or 50_000)
    work = images * _MODEL_COST.get(config.model, 1.0) * (config.width / 64) ** 2
    hours = work / (_CPU_IMAGES_PER_S_PER_CORE * (cores or 1)) / 3600
    if hours < 1 or config.device == "cuda" or (config.device == "auto" and _cuda_available()):
        return None
    return (f"note: {config.model} at width {config.width} for {config.epochs} epochs on the CPU takes hours "
            f"(roughly {hours:.0f} h on {cores} cores; machines vary); --preset quick trains in minutes")


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
    return (f"next: {fastres} eval {shlex.quote(str(run.path))} (test its saved weights); "
            f"{fastres} report {shlex.quote(str(folder))} (compare the runs there); "
            f"{_command('tensorboard')} --logdir {shlex.quote(str(run.tensorboard))} (the curves)")


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate_run

    result = evaluate_run(args.run_dir, tta=args.tta, translate=args.tta_translate, which=args.checkpoint,
                          weights=args.weights, device=args.device, data_dir=args.data_dir, log=_log)
    if args.json:
        print(json.dumps(result))
    else:
        views = (f"flip + {result['translate']}-pixel shifts TTA" if result["translate"]
                 else "flip TTA" if result["tta"] else "no TTA")
        print(f"{args.run_dir}: test accuracy {100 * result['acc']:.2f}% (loss {result['loss']:.4f}, "
              f"{result['images']} images, epoch {result['epoch']}, {result['weights']} weights, {views})")
    return 0


_SCHEDULER_OPTIONS = ("time_limit", "partition", "gpus_per_run", "cpus_per_run", "account", "qos", "max_parallel",
                      "max_requeues", "slurm")


class _VariantParser(_Parser):
    def error(self, message: str) -> typing.NoReturn:
        raise FastresError(f"{self.prog}: {message}")


def _parse_variants(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["ema:--ema 0.99", ...]`` -> {"ema": {"ema": 0.99}, ...}, read as fastres train reads options."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    variants: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, text = item.partition(":")
        if not sep or not name.strip():
            raise FastresError(f'--variant takes NAME:"OPTIONS", e.g. --variant ema:"--ema 0.99", got {item!r}')
        name = name.strip()
        if name in variants:
            raise FastresError(f"--variant {name} is given twice: give each variant its own name")
        parser = _VariantParser(prog=f"--variant {name}", add_help=False)
        _add_config_options(parser)
        try:
            parsed = parser.parse_args(shlex.split(text))
        except ValueError as exc:  # unbalanced quotes
            raise FastresError(f"--variant {name}: {exc} in {text!r}") from None
        variants[name] = {k: v for k, v in vars(parsed).items() if k in names}
    return variants


def _job_options(args: argparse.Namespace) -> JobOptions:
    """The scheduler options, checked; refused (one line) with the local launcher."""
    given = {name: getattr(args, name) for name in _SCHEDULER_OPTIONS if getattr(args, name) is not None}
    if args.launcher == "local":
        if given:
            raise FastresError(f"{option_flag(next(iter(given)))} is a scheduler option: add --launcher slurm "
                               "(or submitit-local), or drop it")
        return JobOptions()
    if args.devices or args.runs_per_device != 1:
        raise FastresError(f"--devices and --runs-per-device place runs on this machine; with --launcher {args.launcher} "
                           "each run is a job: ask for its GPUs with --gpus-per-run")
    return job_options(args.launcher, **given)


def _cmd_ablate(args: argparse.Namespace) -> int:
    from . import ablate, factors

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names and k != "preset"}
    seed = overrides.pop("seed", None)
    base_study = _base_study(args, overrides) if args.base is not None else None
    if args.list:
        print("\n".join(factors.describe(*base_study[1:3])) if base_study else ablate.preset_listing())
        return 0
    if args.status:
        print("\n".join(ablate.status_lines(args.status)))
        return 0
    if args.retries < 0:
        raise FastresError(f"--retries must be a whole number >= 0, got {args.retries}")
    if args.times_from and not args.dry_run:
        raise FastresError("--times-from projects a study's time for --dry-run: add --dry-run, or drop it")
    for folder in args.times_from or ():
        if not Path(folder).is_dir():
            raise FastresError(f"--times-from {folder}: no such folder; pass a folder with finished runs")
    presets = list(args.config or []) + (ablate.ablation_presets() if args.all else [])
    variants = _parse_variants(args.variant or [])
    if base_study is not None:
        presets, base, settings, variants = base_study
        overrides = {**base.changes, **overrides}
    devices = ablate.parse_devices(args.devices) if args.devices else None
    slots = ablate.expand_slots(devices, args.runs_per_device)
    jobs = _job_options(args)
    out = args.out
    if args.launcher != "local":
        # A job starts in another process, perhaps on another machine: paths must not depend on its directory.
        out = str(Path(out).resolve())
        overrides["data_dir"] = str(Path(overrides.get("data_dir", TrainConfig.data_dir)).resolve())
    def on_cpu() -> bool:  # asks torch (seconds to import) only when the answer matters
        return not devices and (overrides.get("device") == "cpu" or not _cuda_available())

    # Runs side by side on the CPU share its cores (more threads than cores slow every run down).
    side_by_side = args.runs_per_device if args.launcher == "local" else (jobs.max_parallel or 1)
    if args.launcher != "slurm" and side_by_side > 1 and on_cpu():
        overrides = ablate.share_cores(overrides, side_by_side,
                                       flag="--runs-per-device" if args.launcher == "local" else "--max-parallel")
    runs = ablate.plan_ablation(presets, seeds=args.seeds, seed=seed, overrides=overrides, out=out,
                                devices=slots if args.dry_run and devices else None, variants=variants,
                                interleave=args.interleave, reuse=args.reuse or ())
    for run in runs:
        if run.note:
            _log(f"not reusing {run.name}: {run.note}")
    if args.interleave and any(r.action == "reuse" for r in runs):
        _log("note: the reused runs did not run beside this study's, so the report leaves their seeds out of "
             "paired time ratios; to compare times, run the reference again here (without --reuse)")
    # A study of variants compares them with the preset they vary.
    reference = get_preset(presets[0]).preset if variants else None
    if args.dry_run:
        if base_study is not None:
            for line in factors.describe(base, settings):
                print(f"# {line}", file=sys.stderr)
        _print_projection(runs, [*(args.times_from or ()), *(args.reuse or ()), out], len(slots),
                          asked=bool(args.times_from))
        _print_dry_run(runs, args.launcher, out, jobs)
        return 0
    ensure_writable_dir(out, "ablation folder", "--out")
    study = {"presets": presets, "seeds": args.seeds, "seed": seed, "overrides": overrides, "variants": variants}
    if base_study is not None:
        study["rules"] = {name: factors.RULES[name] for name in settings if name in factors.RULES}
    if args.launcher != "local":
        return _ablate_with_submitit(args, runs, out, jobs, study, reference)
    gpus = ablate.check_devices(devices, overrides) if devices else None
    k = args.runs_per_device
    if gpus:
        why = f"up to {len(gpus) * k} at a time, {k} per GPU ({', '.join(devices)})"
    elif k > 1 and on_cpu():
        why = f"{k} at a time on the CPU, {overrides['threads']} thread(s) each"
    elif on_cpu():
        why = ("one after another: on the CPU each run already uses every core (--runs-per-device K shares "
               "them between K runs)")
    elif k > 1:
        why = f"{k} at a time on the default GPU"
    else:
        why = "one after another on the default GPU (pass --devices 0,1,... to run one per GPU)"
    ablate.record(out, runs, **study)
    _log(f"ablation in {out}: {ablate.describe_plan(runs)}; {why}")
    _stop_cleanly_on_signals()
    result = ablate.run_ablation(runs, devices=gpus, runs_per_device=k, log=_log, retries=args.retries)
    _write_study_report(out, reference)
    failed = result.failed
    for r in failed:
        print(f"fastres: failed: {r.run.name} ({r.run.run_dir}): {r.message}", file=sys.stderr, flush=True)
    done = result.count("finished") + result.count("skipped")
    if result.interrupted:
        raise FastresError(f"ablation interrupted with {done}/{len(runs)} runs done; run the same command again to "
                           "resume the stopped runs", exit_code=128 + result.signum)
    if failed:
        raise FastresError(f"{len(failed)} of {len(runs)} runs failed (listed above); the others finished. "
                           "Fix the cause and run the same command again to retry them", exit_code=1)
    elsewhere = result.count("elsewhere")
    _log(f"ablation finished: {done}/{len(runs)} runs done"
         + (f", {elsewhere} running elsewhere: run the same command again once they finish" if elsewhere else ""))
    return 0


def _base_study(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[list[str], Any, list[str], dict[str, Any]]:
    """``--base``: the preset its runs start from, the base, the settings chosen and each as a
    named variant of the base; bad combinations are one-line errors."""
    from . import factors

    if args.variant:
        raise FastresError("--base runs the study's settings as the base's variants; --variant adds others to a "
                           "--config preset: drop --variant, or run those variants as a study of their own")
    settings = list(factors.SETTINGS) if args.all else factors.choose_settings(args.config or [])
    if not settings and not args.list:
        raise FastresError(f"--base {args.base} needs the settings to run on it: pass --all, or --config with some "
                           f"of {', '.join(factors.SETTINGS)}")
    if args.list and not settings:
        settings = list(factors.SETTINGS)
    base = factors.resolve_base(args.base, overrides)
    return [base.preset], base, settings, factors.study_variants(base.config, settings, f"--base {args.base}")


def _print_projection(runs: Sequence[Any], folders: Sequence[str], slots: int, asked: bool) -> None:
    """``--dry-run``'s projected training time, as comment lines on stderr; with no finished
    run to project from, a word only when ``--times-from`` was ``asked``."""
    from . import projection

    todo = [(r.group, r.config, r.config.epochs - r.done_epochs) for r in runs if r.runs_here]
    if not todo:
        return
    found = projection.project(todo, projection.measure(folders))
    if not found.measured_runs and not asked:
        return
    for line in projection.describe(found, len(todo), slots, [f for f in folders if Path(f).is_dir()]):
        print(f"# {line}", file=sys.stderr)


def _print_dry_run(runs: Sequence[Any], launcher: str, out: str, jobs: JobOptions) -> None:
    for run in runs:
        if run.action == "skip":
            print(f"# {run.run_dir}: already finished", file=sys.stderr)
        elif run.action == "reuse":
            print(f"# {run.name}: finished in {run.run_dir}, reused", file=sys.stderr)
        elif run.action == "elsewhere":
            print(f"# {run.run_dir}: running elsewhere ({run.holder})", file=sys.stderr)
    todo = [r for r in runs if r.runs_here]
    if launcher == "local":
        for run in todo:
            print(run.shell())
        return
    from .cluster import jobs_folder, sbatch_script

    if launcher == "slurm" and todo:
        print(f"# the job array fastres would submit with sbatch (not submitted), logs in {jobs_folder(out)}:")
        print(sbatch_script(todo, out, jobs))
    print(f"# {len(todo)} task(s); each re-reads its run folder when it starts, then runs:")
    for i, run in enumerate(todo):
        print(f"# task {i}: {run.name}: {run.shell()}")


def _ablate_with_submitit(args: argparse.Namespace, runs: Sequence[Any], out: str, jobs: JobOptions,
                          study: dict[str, Any], reference: str | None) -> int:
    from . import ablate
    from .cluster import jobs_folder, submit

    _log(f"ablation in {out}: {ablate.describe_plan(runs)}; launcher {args.launcher}")
    if args.launcher == "slurm":
        submitted = submit(runs, out, "slurm", jobs, log=_log)
        ablate.record(out, runs, **study, launcher="slurm", jobs=submitted.jobs)
        if submitted.jobs:
            array = next(iter(submitted.jobs.values())).split("_")[0]
            _log(f"submitted job array {array}: {len(submitted.jobs)} task(s), logs in {jobs_folder(out)}. "
                 f"Follow it with: fastres ablate --status {shlex.quote(out)}; then fastres report {shlex.quote(out)}")
        else:
            _log("nothing to submit: every run is finished or running elsewhere")
        return 0
    _stop_cleanly_on_signals()
    study = {**study, "launcher": args.launcher}
    launch = ablate.record(out, runs, **study)
    try:
        submitted = submit(runs, out, args.launcher, jobs, log=_log)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        raise FastresError("ablation interrupted: its jobs stop cleanly; run the same command again to resume them",
                           exit_code=128 + int(signum)) from None
    ablate.record(out, runs, **study, jobs=submitted.jobs, launch=launch)
    _write_study_report(out, reference)
    failed = {name: why for name, why in submitted.results.items() if why.startswith("failed")}
    for name, why in failed.items():
        print(f"fastres: {name}: {why}", file=sys.stderr, flush=True)
    if failed:
        raise FastresError(f"{len(failed)} of {len(runs)} runs failed (listed above; logs in {jobs_folder(out)}). "
                           "Fix the cause and run the same command again to retry them", exit_code=1)
    _log(f"ablation finished: {len(submitted.results)} job(s) ended")
    return 0


def _write_study_report(out: str, reference: str | None) -> None:
    from .report import write_report

    try:
        data = write_report(out, reference)
        files = data["files"]
        _log(f"report: {out}/{files['markdown']} (plots {files['val_plot']}, {files['lr_plot']}, {files['time_plot']})")
    except FastresError as exc:
        _log(f"no report: {exc}")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import summary_table, write_report

    data = write_report(args.dir, args.reference, out=args.out)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(summary_table(data))
        files = data["files"]
        print(f"wrote {args.out or args.dir[0]}/{files['markdown']}, {files['json']}, "
              f"{files['val_plot']}, {files['lr_plot']}, {files['time_plot']}")
    return 0


def _add_bench_parser(sub: Any) -> None:
    from .bench import DEFAULT_BATCH_SIZES, FULL_TIMING, QUICK_BATCH_SIZES, QUICK_WIDTH

    p = sub.add_parser(
        "bench", help="measure training/inference throughput: baseline vs fastres",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Images/s of the train step (forward, loss, backward, SGD step) and of inference, for each\n"
            "model and batch size, in two configurations measured back to back in this process:\n"
            "  baseline  fp32, NCHW, eager: what a plain PyTorch script does\n"
            "  fastres   the trainer's default fast path (bf16 where supported, channels_last, compile on CUDA)\n"
            "Same threads, same input already in memory: the ratio measures the step alone.\n"
            "Timing: the first step alone (compile time), warm-up steps, then the median of --repeats\n"
            "repeats of at least --min-time seconds each (synchronised on a GPU)."),
        epilog="examples:\n  fastres bench --quick\n"
               "  fastres bench --models resnet18 --batch-sizes 32 64 128 256 512 --mode train --json bench.json --plot bench.png\n"
               "  fastres bench --models resnet18,resnet34,resnet50 --batch-sizes 128 --csv bench.csv")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help=f"models to measure (space or comma separated; default: {', '.join(IMAGENET_MODELS)}; "
                        f"also {', '.join(n for n in model_names() if n not in IMAGENET_MODELS)} when named)")
    p.add_argument("--batch-sizes", nargs="+", default=None, metavar="N",
                   help=f"batch sizes (default: {' '.join(map(str, DEFAULT_BATCH_SIZES))}; "
                        f"--quick: {' '.join(map(str, QUICK_BATCH_SIZES))})")
    p.add_argument("--mode", choices=("train", "infer", "both"), default="both",
                   help="train step, inference, or both (default: both)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: width-{QUICK_WIDTH} models, tiny batches, one step per repeat (numbers are not meaningful)")
    p.add_argument("--width", type=int, default=None, metavar="N",
                   help=f"first-stage channels (default: each model's published width, 64 for resnet18-50 and 16 "
                        f"for resnet20-110; --quick: {QUICK_WIDTH})")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto (CUDA when present, else CPU), cuda or cpu")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads for both configurations (default: torch's default; --quick: 1)")
    p.add_argument("--warmup", type=int, default=None, metavar="N",
                   help=f"untimed steps after the first (default {FULL_TIMING.warmup})")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help=f"timed repeats; the median counts (default {FULL_TIMING.repeats})")
    p.add_argument("--min-time", type=float, default=None, metavar="S",
                   help=f"least seconds per timed repeat (default {FULL_TIMING.min_repeat_s:g})")
    p.add_argument("--mem-limit", type=float, default=None, metavar="GB",
                   help="on CPU, skip configurations estimated to need more than this (default: the memory free now)")
    p.add_argument("--json", metavar="PATH", help="write machine info and every record as JSON")
    p.add_argument("--csv", metavar="PATH", help="write one CSV row per record")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of images/s against batch size per model")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: a bar on a terminal, a line per configuration otherwise)")


def _words(values: Sequence[str]) -> list[str]:
    return [w for v in values for w in v.replace(",", " ").split()]


def _bench_models(values: Sequence[str] | None) -> list[str]:
    if values is None:  # the paper's CIFAR ResNets only when named: the sweep's results stay comparable
        return list(IMAGENET_MODELS)
    names = [check_model_name(name) for name in _words(values)]
    if not names:
        raise FastresError(f"--models needs at least one of {', '.join(model_names())}")
    return list(dict.fromkeys(names))


def _bench_width(models: Sequence[str], width: int | None) -> str:
    """The width line: one number, or each model's published width where they differ."""
    if width is not None:
        return str(width)
    widths = {standard_width(m) for m in models}
    if len(widths) == 1:
        return str(widths.pop())
    return ", ".join(f"{m} {standard_width(m)}" for m in models)


def _bench_batch_sizes(values: Sequence[str]) -> list[int]:
    sizes = []
    for word in _words(values):
        try:
            size = int(word)
        except ValueError:
            raise FastresError(f"batch size {word!r} is not an integer: pass e.g. --batch-sizes 32 64 128") from None
        if size < 1:
            raise FastresError(f"batch sizes must be positive, got {size}: pass e.g. --batch-sizes 32 64 128")
        sizes.append(size)
    if not sizes:
        raise FastresError("--batch-sizes needs at least one size")
    return list(dict.fromkeys(sizes))


def _cmd_bench(args: argparse.Namespace) -> int:
    """Validate everything first, sweep, print the table, write the files."""
    import torch

    from . import bench
    from .runtime import resolve_device

    models = _bench_models(args.models)
    batch_sizes = (_bench_batch_sizes(args.batch_sizes) if args.batch_sizes
                   else list(bench.QUICK_BATCH_SIZES if args.quick else bench.DEFAULT_BATCH_SIZES))
    modes = list(bench.MODES) if args.mode == "both" else [args.mode]
    width = args.width if args.width is not None else (bench.QUICK_WIDTH if args.quick else None)
    if width is not None and width < 1:
        raise FastresError(f"--width must be a positive integer, got {width}")
    for name in models if width is not None else ():
        check_width(name, width)
    if args.threads is not None and args.threads < 1:
        raise FastresError(f"--threads must be a positive integer, got {args.threads}")
    if args.mem_limit is not None and not (args.mem_limit > 0 and math.isfinite(args.mem_limit)):
        raise FastresError(f"--mem-limit must be a positive number of GB, got {args.mem_limit}")
    base = bench.QUICK_TIMING if args.quick else bench.FULL_TIMING
    timing = bench.Timing(warmup=base.warmup if args.warmup is None else args.warmup,
                          repeats=base.repeats if args.repeats is None else args.repeats,
                          min_repeat_s=base.min_repeat_s if args.min_time is None else args.min_time,
                          max_steps=base.max_steps if args.min_time is None else bench.FULL_TIMING.max_steps)
    outputs = {flag: ensure_writable_file(path, flag) for flag, path in
               (("--json", args.json), ("--csv", args.csv), ("--plot", args.plot)) if path}

    device = resolve_device(args.device)
    # --quick defaults to one thread: its tiny steps are mostly OpenMP barriers, which stall
    # for whole scheduler slices when the cores are shared; it is a smoke test, not a measurement.
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    machine = bench.machine_info(device)
    fast = bench.fastres_runtime(device)
    n = machine["threads"]
    _log(f"fastres bench on {machine['gpu'] or machine['cpu']} ({device.type}, {n} thread{'s' * (n != 1)}, "
         f"torch {machine['torch']}); width {_bench_width(models, width)}{' (quick: not a measurement)' if args.quick else ''}")
    _log(f"baseline: fp32, NCHW, eager   fastres: {fast.precision}, "
         f"{'channels_last' if fast.channels_last else 'NCHW'}, compile {'on' if fast.compile else 'off'}")
    mem_limit = int(args.mem_limit * 1e9) if args.mem_limit is not None else None
    records = bench.sweep(models, batch_sizes, modes, device=device, width=width, timing=timing,
                          mem_limit_bytes=mem_limit, progress=args.progress)
    _log(bench.format_table(records))
    settings = {"models": models, "batch_sizes": batch_sizes, "modes": modes, "width": width,
                "quick": bool(args.quick), "warmup": timing.warmup, "repeats": timing.repeats,
                "min_repeat_s": timing.min_repeat_s, "threads": torch.get_num_threads(),
                "mem_limit_gb": args.mem_limit}
    if "--json" in outputs:
        bench.write_json(outputs["--json"], machine, records, settings)
    if "--csv" in outputs:
        bench.write_csv(outputs["--csv"], records)
    if "--plot" in outputs:
        bench.write_plot(outputs["--plot"], records, title=f"{machine['gpu'] or machine['cpu']}, torch {machine['torch']}")
    if outputs:
        print()
    for flag, path in outputs.items():
        _log(f"wrote {flag[2:]}: {path}")
    return 0


COMMANDS = {"prepare-data": _cmd_prepare, "train": _cmd_train, "eval": _cmd_eval, "bench": _cmd_bench,
            "ablate": _cmd_ablate, "report": _cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except FastresError as exc:
        if args.debug:
            traceback.print_exc()
        # One write with its newline, so that the lines of several failing torchrun ranks
        # never run into each other (unbuffered, print() writes the newline apart).
        sys.stderr.write(f"fastres: error: {exc}\n")
        sys.stderr.flush()
        return exc.exit_code
    except KeyboardInterrupt:
        print("fastres: interrupted", file=sys.stderr, flush=True)
        return 130
    except OSError as exc:
        if exc.filename is None or args.debug:
            raise
        # A path the OS refused where no check foresaw it (a name too long, a loop of links).
        sys.stderr.write(f"fastres: error: cannot use {exc.filename}: {exc.strerror or exc}; "
                         "pass a path this system accepts\n")
        return 1
    except BrokenPipeError:
        # The reader went away (`fastres ... | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
