"""Where a local study's runs go: GPU indices (``--devices``), runs per device, and the CPU
cores that runs side by side share."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import FastresError


def parse_devices(text: str) -> list[str]:
    """``"0,1,3"`` -> ``["0", "1", "3"]``: GPU indices as CUDA_VISIBLE_DEVICES takes them."""
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise FastresError(f"--devices takes distinct GPU indices such as 0,1,2,3, got {text!r}")
    return parts


def expand_slots(devices: Sequence[str] | None, runs_per_device: int) -> list[str | None]:
    """Where the runs that go at the same time run: each device ``runs_per_device`` times,
    interleaved so consecutive runs land on different GPUs; ``None`` is the default device."""
    if (
        isinstance(runs_per_device, bool)
        or not isinstance(runs_per_device, int)
        or runs_per_device < 1
    ):
        raise FastresError(
            f"--runs-per-device must be a whole number >= 1, got {runs_per_device!r}"
        )
    return [d for _ in range(runs_per_device) for d in (devices or [None])]


def share_cores(
    overrides: Mapping[str, Any],
    runs_per_device: int,
    cores: int | None = None,
    flag: str = "--runs-per-device",
) -> dict[str, Any]:
    """The overrides for ``runs_per_device`` runs side by side on the CPU: each gets its share
    of the cores as ``threads`` (a machine field, so it never stands in the way of a resume),
    unless ``threads`` was given."""
    cores = cores or len(os.sched_getaffinity(0))
    if runs_per_device > cores:
        raise FastresError(
            f"{flag} {runs_per_device} on {cores} CPU core(s): each run needs a core of its "
            f"own, pass at most {flag} {cores}"
        )
    if "threads" in overrides or runs_per_device == 1:
        return dict(overrides)
    return {**overrides, "threads": cores // runs_per_device}


def check_devices(devices: Sequence[str], overrides: Mapping[str, Any]) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value for each requested GPU index; refuse ones not there.

    Indices count the GPUs this process sees, so they are mapped through an inherited
    CUDA_VISIBLE_DEVICES (``--devices 0`` under ``CUDA_VISIBLE_DEVICES=2,3`` pins GPU 2).
    """
    import torch

    if overrides.get("device") == "cpu":
        raise FastresError(
            "--devices pins runs to GPUs, but --device cpu was given: drop one of them"
        )
    count = torch.cuda.device_count()
    if count == 0:
        raise FastresError(
            "--devices needs CUDA GPUs, and none is visible: drop --devices to run on the CPU"
        )
    bad = [d for d in devices if int(d) >= count]
    if bad:
        raise FastresError(
            f"--devices {','.join(bad)}: only {count} GPU(s) visible (indices 0..{count - 1})"
        )
    inherited = [
        v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()
    ]
    return [inherited[int(d)] if len(inherited) > int(d) else d for d in devices]


def on_cpu(devices: Sequence[str] | None, overrides: Mapping[str, Any]) -> bool:
    """Whether the runs train on this machine's CPU; asks torch (seconds to import) only when
    the answer depends on it."""
    return not devices and (overrides.get("device") == "cpu" or not cuda_available())


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
