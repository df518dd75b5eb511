"""``fastres bench``: training and inference throughput, baseline against fastres."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from ..errors import FastresError
from ..files import ensure_writable_file
from ..models import IMAGENET_MODELS, check_model_name, check_width, model_names, standard_width
from .output import log


def add_parser(sub: Any) -> None:
    from ..bench import DEFAULT_BATCH_SIZES, QUICK_BATCH_SIZES, QUICK_WIDTH

    p = sub.add_parser(
        "bench",
        help="measure training/inference throughput: baseline vs fastres",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Images/s of the train step (forward, loss, backward, SGD step) and of inference, "
            "for each\n"
            "model and batch size, in two configurations measured back to back in this process:\n"
            "  baseline  fp32, NCHW, eager: what a plain PyTorch script does\n"
            "  fastres   the trainer's default fast path (bf16 where supported, channels_last, "
            "compile on CUDA)\n"
            "Same threads, same input already in memory: the ratio measures the step alone.\n"
            "Timing: the first step alone (compile time), warm-up steps, then the median of "
            "--repeats\n"
            "repeats of at least --min-time seconds each (synchronised on a GPU)."
        ),
        epilog="examples:\n  fastres bench --quick\n"
        "  fastres bench --models resnet18 --batch-sizes 32 64 128 256 512 --mode train "
        "--json bench.json --plot bench.png\n"
        "  fastres bench --models resnet18,resnet34,resnet50 --batch-sizes 128 --csv bench.csv",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="MODEL",
        help=f"models to measure (space or comma separated; default: {', '.join(IMAGENET_MODELS)}; "
        f"also {', '.join(n for n in model_names() if n not in IMAGENET_MODELS)} when named)",
    )
    p.add_argument(
        "--batch-sizes",
        nargs="+",
        default=None,
        metavar="N",
        help=f"batch sizes (default: {' '.join(map(str, DEFAULT_BATCH_SIZES))}; "
        f"--quick: {' '.join(map(str, QUICK_BATCH_SIZES))})",
    )
    p.add_argument(
        "--mode",
        choices=("train", "infer", "both"),
        default="both",
        help="train step, inference, or both (default: both)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: width-{QUICK_WIDTH} models, tiny batches, one step per repeat (numbers "
        "are not meaningful)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        metavar="N",
        help=f"first-stage channels (default: each model's published width, 64 for resnet18-50 and "
        f"16 for resnet20-110; --quick: {QUICK_WIDTH})",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto (CUDA when present, else CPU), cuda or cpu",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads for both configurations (default: torch's default; --quick: 1)",
    )
    _add_timing_and_output_options(p)


def _add_timing_and_output_options(p: argparse.ArgumentParser) -> None:
    from ..bench import FULL_TIMING

    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        metavar="N",
        help=f"untimed steps after the first (default {FULL_TIMING.warmup})",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        metavar="N",
        help=f"timed repeats; the median counts (default {FULL_TIMING.repeats})",
    )
    p.add_argument(
        "--min-time",
        type=float,
        default=None,
        metavar="S",
        help=f"least seconds per timed repeat (default {FULL_TIMING.min_repeat_s:g})",
    )
    p.add_argument(
        "--mem-limit",
        type=float,
        default=None,
        metavar="GB",
        help="on CPU, skip configurations estimated to need more than this (default: the memory "
        "free now)",
    )
    p.add_argument("--json", metavar="PATH", help="write machine info and every record as JSON")
    p.add_argument("--csv", metavar="PATH", help="write one CSV row per record")
    p.add_argument(
        "--plot", metavar="PATH", help="write a PNG of images/s against batch size per model"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: a bar on a terminal, a line per configuration otherwise)",
    )


def _words(values: Sequence[str]) -> list[str]:
    return [w for v in values for w in v.replace(",", " ").split()]


def _bench_models(values: Sequence[str] | None) -> list[str]:
    if (
        values is None
    ):  # the paper's CIFAR ResNets only when named: the sweep's results stay comparable
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
            raise FastresError(
                f"batch size {word!r} is not an integer: pass e.g. --batch-sizes 32 64 128"
            ) from None
        if size < 1:
            raise FastresError(
                f"batch sizes must be positive, got {size}: pass e.g. --batch-sizes 32 64 128"
            )
        sizes.append(size)
    if not sizes:
        raise FastresError("--batch-sizes needs at least one size")
    return list(dict.fromkeys(sizes))


def cmd_bench(args: argparse.Namespace) -> int:
    """Validate everything first, sweep, print the table, write the files."""
    import torch

    from .. import bench
    from ..runtime import resolve_device

    models = _bench_models(args.models)
    batch_sizes = (
        _bench_batch_sizes(args.batch_sizes)
        if args.batch_sizes
        else list(bench.QUICK_BATCH_SIZES if args.quick else bench.DEFAULT_BATCH_SIZES)
    )
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
    timing = _timing(args)
    outputs = {
        flag: ensure_writable_file(path, flag)
        for flag, path in (("--json", args.json), ("--csv", args.csv), ("--plot", args.plot))
        if path
    }

    device = resolve_device(args.device)
    # --quick defaults to one thread: its tiny steps are mostly OpenMP barriers, which stall
    # for whole scheduler slices when the cores are shared; it is a smoke test, not a measurement.
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    machine = bench.machine_info(device)
    fast = bench.fastres_runtime(device)
    n = machine["threads"]
    log(
        f"fastres bench on {machine['gpu'] or machine['cpu']} ({device.type}, {n} "
        f"thread{'s' * (n != 1)}, torch {machine['torch']}); width "
        f"{_bench_width(models, width)}{' (quick: not a measurement)' if args.quick else ''}"
    )
    log(
        f"baseline: fp32, NCHW, eager   fastres: {fast.precision}, "
        f"{'channels_last' if fast.channels_last else 'NCHW'}, compile "
        f"{'on' if fast.compile else 'off'}"
    )
    mem_limit = int(args.mem_limit * 1e9) if args.mem_limit is not None else None
    records = bench.sweep(
        models,
        batch_sizes,
        modes,
        device=device,
        width=width,
        timing=timing,
        mem_limit_bytes=mem_limit,
        progress=args.progress,
    )
    log(bench.format_table(records))
    settings = {
        "models": models,
        "batch_sizes": batch_sizes,
        "modes": modes,
        "width": width,
        "quick": bool(args.quick),
        "warmup": timing.warmup,
        "repeats": timing.repeats,
        "min_repeat_s": timing.min_repeat_s,
        "threads": torch.get_num_threads(),
        "mem_limit_gb": args.mem_limit,
    }
    _write_outputs(outputs, machine, records, settings)
    return 0


def _timing(args: argparse.Namespace) -> Any:
    """The timing protocol: --quick's or the full one, with the options given."""
    from .. import bench

    base = bench.QUICK_TIMING if args.quick else bench.FULL_TIMING
    return bench.Timing(
        warmup=base.warmup if args.warmup is None else args.warmup,
        repeats=base.repeats if args.repeats is None else args.repeats,
        min_repeat_s=base.min_repeat_s if args.min_time is None else args.min_time,
        max_steps=base.max_steps if args.min_time is None else bench.FULL_TIMING.max_steps,
    )


def _write_outputs(
    outputs: dict[str, Any], machine: dict[str, Any], records: Any, settings: dict[str, Any]
) -> None:
    from .. import bench

    if "--json" in outputs:
        bench.write_json(outputs["--json"], machine, records, settings)
    if "--csv" in outputs:
        bench.write_csv(outputs["--csv"], records)
    if "--plot" in outputs:
        bench.write_plot(
            outputs["--plot"],
            records,
            title=f"{machine['gpu'] or machine['cpu']}, torch {machine['torch']}",
        )
    if outputs:
        print()
    for flag, path in outputs.items():
        log(f"wrote {flag[2:]}: {path}")
