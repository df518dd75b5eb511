"""``fastres ablate``: a study's options read into a ``StudyRequest``; ``fastres.study``
runs it, and this prints what it says."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import typing
from collections.abc import Sequence
from typing import Any

from ..config import TrainConfig
from ..errors import FastresError
from ..rundir import STUDY_ROOT
from ..study import (
    LAUNCHERS,
    StudyRequest,
    check_base,
    listing,
    preset_listing,
    run_study,
    status_lines,
)
from ..study.launcher import SCHEDULER_OPTIONS
from .options import Parser, add_config_options, presets_table
from .output import log
from .signals import stop_cleanly_on_signals


def add_parser(sub: Any) -> None:
    """The ``ablate`` subcommand: the study's options, the scheduler's, every training option."""
    p = sub.add_parser(
        "ablate",
        help="run presets over several seeds, then report mean and spread",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run each chosen preset with seeds S, S+1, ..., S+N-1, one run directory each "
        "(OUT/<preset>/seed<S>/), then write OUT/report.md (see fastres report). Running "
        "the same command again skips finished runs and resumes interrupted ones. Every "
        "training option below applies to every run.\n\n" + presets_table(),
        epilog="examples:\n  fastres ablate --list\n  fastres ablate --all --seeds 3 --epochs 100\n"
        "  fastres ablate --all --base quick --seeds 3 --interleave   "
        "# the settings as changes to quick\n"
        "  fastres ablate --config baseline no_batchnorm --seeds 2 --width 16 --epochs 4 "
        "--train-subset 10000\n"
        "  fastres ablate --all --seeds 2 --dry-run > jobs.txt      "
        "# one command per line, for a scheduler\n"
        "  fastres ablate --config quick --seeds 3 --out runs/b --reuse runs/a "
        '--variant ema:"--ema 0.99"\n'
        "  fastres ablate --all --seeds 3 --devices 0,1,2,3        # one run per GPU at a time\n"
        "  fastres ablate --all --seeds 3 --launcher slurm --partition gpu --time-limit 4:00:00\n"
        "  fastres ablate --status runs/ablations                   "
        "# where each run of the study stands",
    )
    _add_study_options(p)
    _add_placement_options(p)
    _add_scheduler_options(p)
    add_config_options(p)


def _add_study_options(p: argparse.ArgumentParser) -> None:
    """What the study is: its settings, seeds, folder and the earlier studies it reuses."""
    p.add_argument(
        "--list",
        action="store_true",
        help="list every preset, its description and its differences from baseline",
    )
    p.add_argument(
        "--status",
        metavar="OUT",
        help="one line per planned run of the study in OUT (done, running, "
        "interrupted, diverged, failed, not started) with epochs done; starts nothing",
    )
    p.add_argument(
        "--config",
        nargs="+",
        metavar="NAME",
        help="presets (or aliases, e.g. cosine_schedule) to run",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="the seven ablation presets of the original study (with "
        "--base: its six settings on that base)",
    )
    p.add_argument(
        "--base",
        metavar="PRESET|CONFIG",
        help="run the original study's settings (--all, or --config cosine small_batch ...) as "
        "changes to this base: a preset (e.g. quick) or a config file (a run's config.json or "
        "run directory); each setting is the base plus exactly its change, a named variant "
        "paired by seed with the base's runs (--list and --dry-run say what each changes, and "
        "by which rule)",
    )
    p.add_argument(
        "--times-from",
        action="append",
        metavar="DIR",
        help="with --dry-run: finished runs below DIR (repeatable) whose epoch times project the "
        "study's training time (the runs below --out and --reuse count too)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="runs per preset, seeds S..S+N-1 (default: 1); S is --seed (default: the preset's, "
        "42)",
    )
    p.add_argument(
        "--out",
        default=STUDY_ROOT,
        metavar="DIR",
        help=f"where the run directories and the report go (default: {STUDY_ROOT})",
    )
    p.add_argument(
        "--variant",
        action="append",
        metavar='NAME:"OPTIONS"',
        help="a named variant of the (one) preset: its training options, run over the same seeds "
        "into OUT/NAME/seed<S> next to the preset's own runs, which the report compares it "
        'with, paired by seed (repeatable), e.g. --variant ema:"--ema 0.99" --variant '
        'bn:"--bn-momentum 0.4"',
    )
    p.add_argument(
        "--reuse",
        action="append",
        metavar="DIR",
        help="an earlier study's --out: a run of this study not begun in OUT that finished below "
        "DIR with the same recipe and seed (whatever its folder's name) is counted, not "
        "trained again (repeatable), e.g. new variants against an earlier study's runs of the "
        "preset; the report shows it",
    )
    p.add_argument(
        "--interleave",
        action="store_true",
        help="run seed by seed (seed S of every setting, then S+1, ...) instead of setting by "
        "setting: a machine whose speed drifts then slows every setting alike, as comparing "
        "times needs",
    )


def _add_placement_options(p: argparse.ArgumentParser) -> None:
    """How the runs go: a dry run, devices, retries and the launcher."""
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the fastres train commands, one per line, and run nothing",
    )
    p.add_argument(
        "--devices",
        metavar="0,1,...",
        help="GPU indices: runs go side by side, each pinned to one of "
        "these GPUs (one per GPU at a time, see --runs-per-device)",
    )
    p.add_argument(
        "--runs-per-device",
        type=int,
        default=1,
        metavar="K",
        help="runs at a time on each device (default 1): on a GPU, K runs share it (a CIFAR ResNet "
        "leaves a large GPU mostly idle); on the CPU, K runs share the cores (--threads "
        "cores/K each)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        metavar="N",
        help="resume a run the GPU failed under (a CUDA error: exit status 71) up to N times from "
        "its last checkpoint (default 1; 0: report it as failed; the local launcher)",
    )
    p.add_argument(
        "--launcher",
        choices=list(LAUNCHERS),
        default="local",
        help="; ".join(launcher.help for launcher in LAUNCHERS.values()),
    )


def _add_scheduler_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scheduler options (with --launcher slurm or submitit-local)")
    g.add_argument(
        "--time-limit",
        metavar="TIME",
        help="each task's time limit, as Slurm writes it (90, 4:00:00, "
        "1-12:00:00); a task reaching it is requeued and resumes",
    )
    g.add_argument("--partition", help="Slurm partition")
    g.add_argument(
        "--gpus-per-run",
        type=int,
        metavar="N",
        help="GPUs per run (default 1; 0 for a CPU partition)",
    )
    g.add_argument(
        "--cpus-per-run", type=int, metavar="N", help="CPU cores per run (default: the cluster's)"
    )
    g.add_argument("--account", help="Slurm account to charge")
    g.add_argument("--qos", help="Slurm quality of service")
    g.add_argument(
        "--max-parallel",
        type=int,
        metavar="N",
        help="runs at a time (Slurm's array throttle %%N; submitit-local: default 1)",
    )
    g.add_argument(
        "--max-requeues",
        type=int,
        metavar="N",
        help="how often a task that reaches its time limit is "
        "requeued (default 3; preemptions always requeue)",
    )
    g.add_argument(
        "--slurm",
        action="append",
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. --slurm mem=32G --slurm constraint=a100 (repeatable)",
    )


class _VariantParser(Parser):
    def error(self, message: str) -> typing.NoReturn:
        raise FastresError(f"{self.prog}: {message}")


def parse_variants(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["ema:--ema 0.99", ...]`` -> {"ema": {"ema": 0.99}, ...}, read as fastres train reads
    options."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    variants: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, text = item.partition(":")
        if not sep or not name.strip():
            raise FastresError(
                f'--variant takes NAME:"OPTIONS", e.g. --variant ema:"--ema 0.99", got {item!r}'
            )
        name = name.strip()
        if name in variants:
            raise FastresError(f"--variant {name} is given twice: give each variant its own name")
        parser = _VariantParser(prog=f"--variant {name}", add_help=False)
        add_config_options(parser)
        try:
            parsed = parser.parse_args(shlex.split(text))
        except ValueError as exc:  # unbalanced quotes
            raise FastresError(f"--variant {name}: {exc} in {text!r}") from None
        variants[name] = {k: v for k, v in vars(parsed).items() if k in names}
    return variants


def study_request(args: argparse.Namespace) -> StudyRequest:
    """The study the command line asks for; its variants' options are read here."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names and k != "preset"}
    seed = overrides.pop("seed", None)
    if args.base is not None and args.variant:
        # --base refuses variants (run_study says so in one line): no need to read them first.
        variants: dict[str, dict[str, Any]] = {item: {} for item in args.variant}
    else:
        variants = parse_variants(args.variant or [])
    return StudyRequest(
        presets=list(args.config or []),
        all=args.all,
        base=args.base,
        variants=variants,
        seeds=args.seeds,
        seed=seed,
        overrides=overrides,
        out=args.out,
        reuse=args.reuse or (),
        interleave=args.interleave,
        devices=args.devices,
        runs_per_device=args.runs_per_device,
        retries=args.retries,
        launcher=args.launcher,
        dry_run=args.dry_run,
        scheduler={k: getattr(args, k) for k in SCHEDULER_OPTIONS if getattr(args, k) is not None},
        times_from=args.times_from or (),
    )


def cmd_ablate(args: argparse.Namespace) -> int:
    if args.base is None and (args.list or args.status):
        print(preset_listing() if args.list else "\n".join(status_lines(args.status)))
        return 0
    request = study_request(args)
    if args.list:
        print(listing(request))
        return 0
    if args.status:
        check_base(request)  # a bad --base is refused whatever else is asked
        print("\n".join(status_lines(args.status)))
        return 0
    result = run_study(request, log=log, on_start=stop_cleanly_on_signals)
    if result.dry_run is not None:
        for line in result.dry_run.notes:
            print(line, file=sys.stderr)
        for line in result.dry_run.commands:
            print(line)
        return 0
    for line in result.outcome.problems:
        print(line, file=sys.stderr, flush=True)
    result.raise_for_failure()
    if result.outcome.summary:
        log(result.outcome.summary)
    return 0
