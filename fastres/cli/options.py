"""What every ``fastres`` subcommand's parser shares: one-line argparse errors, the training
options generated from ``TrainConfig``, the preset table, and printing."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable

from ..config import TrainConfig, load_config_file
from ..config_options import NUMBER_LISTS, field_type, parse_numbers
from ..errors import FastresError
from ..formatting import option_flag
from ..presets import ALIASES, DESCRIPTIONS, PRESETS, get_preset
from ..rundir import RunDir


class Parser(argparse.ArgumentParser):
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
            "--val-split takes a number of training images to hold out, N >= 1 (e.g. 5000), got "
            f"{text!r}: leave it out to hold none out"
        )
    return n


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field; defaults are SUPPRESSed so only given ones override."""
    group = parser.add_argument_group(
        "training options (override the preset; every TrainConfig field)"
    )
    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":  # set by --preset, which picks the base config
            continue
        flag = option_flag(f.name)
        help_ = f"{f.metadata.get('help', '')} (default: {f.default})"
        kind = field_type(f.name)
        if kind is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_
            )
        elif f.name in NUMBER_LISTS:
            group.add_argument(
                flag,
                type=_numbers(f.name),
                default=argparse.SUPPRESS,
                metavar=f.metadata["metavar"],
                help=help_,
            )
        elif (
            f.name == "val_split"
        ):  # its default 0 means off; asked for, it must hold something out
            group.add_argument(
                flag, type=_held_out_images, default=argparse.SUPPRESS, metavar="N", help=help_
            )
        else:
            metavar = {int: "N", float: "X"}.get(kind, f.name.upper())
            group.add_argument(
                flag, type=kind, default=argparse.SUPPRESS, metavar=metavar, help=help_
            )
    group.add_argument(
        "--no-normalize",
        dest="norm",
        action="store_const",
        const="none",
        default=argparse.SUPPRESS,
        help="train without BatchNorm, as in the original scripts (same as --norm none)",
    )


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
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


def presets_table() -> str:
    rows = [f"  {name:<13} {DESCRIPTIONS[name]}" for name in PRESETS]
    rows += [f"  {alias:<13} alias of {target}" for alias, target in ALIASES.items()]
    return "presets:\n" + "\n".join(rows)
