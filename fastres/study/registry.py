"""The launchers a study can use, by ``--launcher`` name. A new launcher is a module with a
``Launcher`` subclass and one line here (or a ``register`` call from outside the package)."""

from __future__ import annotations

from ..errors import FastresError
from .launcher import Launcher
from .local import LocalLauncher
from .slurm import SlurmLauncher, SubmititLocalLauncher

LAUNCHERS: dict[str, Launcher] = {
    "local": LocalLauncher(),
    "slurm": SlurmLauncher(),
    "submitit-local": SubmititLocalLauncher(),
}


def register(launcher: Launcher) -> Launcher:
    """Add a launcher (or replace the one of its name); returns it."""
    if not launcher.name:
        raise ValueError(f"{type(launcher).__name__} has no name: set its class attribute `name`")
    LAUNCHERS[launcher.name] = launcher
    return launcher


def get_launcher(name: str) -> Launcher:
    try:
        return LAUNCHERS[name]
    except KeyError:
        raise FastresError(
            f"unknown launcher {name!r}: choose one of {', '.join(LAUNCHERS)}"
        ) from None
