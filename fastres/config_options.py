"""The command line's spelling of a TrainConfig: each field's type as an option parses it, the
fields given as lists of numbers, and ``option_args``, the ``fastres train`` options that set
given fields (the inverse of the options ``fastres.cli`` generates from the same fields). A
field's option name itself is ``fastres.formatting.option_flag``: the checks below
``TrainConfig`` name options too.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from .config import TrainConfig
from .errors import ConfigError
from .formatting import option_flag

# Fields given on the command line as a list of numbers, with an example of each.
NUMBER_LISTS = {"milestones": "0.5,0.75 or 100,150", "res_ramp": "0,0.75"}

_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)


def parse_numbers(text: str, name: str) -> tuple[float, ...]:
    """Parse ``"0.5,0.75"`` or ``"100 150"`` for the field ``name``; raises ConfigError on
    anything else."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"malformed {name} {text!r}: pass comma-separated numbers, e.g. "
            f"{option_flag(name)} {NUMBER_LISTS[name]}"
        ) from None


def field_type(name: str) -> Any:
    """The type a field's option parses to (bool fields are on/off switches)."""
    return _FIELD_TYPES[name]


def option_args(values: Mapping[str, Any]) -> list[str]:
    """The ``fastres train`` options that set each TrainConfig field in ``values`` to exactly
    that value: the inverse of the options the CLI generates from the same fields."""
    args: list[str] = []
    for name, value in values.items():
        flag = option_flag(name)
        kind = field_type(name)
        if kind is bool:
            args.append(flag if value else "--no-" + flag[2:])
        elif name in NUMBER_LISTS:
            # repr keeps floats exact (1e-05, 0.1), so the parser gets back the very same value.
            args += [flag, ",".join(repr(float(v)) for v in value)]
        elif kind is float:
            args += [flag, repr(float(value))]
        else:
            args += [flag, str(value)]
    return args
