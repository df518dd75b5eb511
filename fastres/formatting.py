"""How numbers and config fields read in fastres' tables, messages and commands."""

from __future__ import annotations

from typing import Any


def duration(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``2h07m``; ``-`` for no value."""
    if seconds is None:
        return "-"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def compact(value: Any) -> str:
    """A config value as short text: ``0.5,0.75`` for a list, ``5e-05`` for a float."""
    if isinstance(value, list | tuple):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def option_flag(name: str) -> str:
    """The ``fastres train`` option of a TrainConfig field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")
