"""Stop signals: SIGTERM (kill, schedulers) and SIGUSR1/SIGUSR2 (what Slurm sends before it
ends or preempts a job) stop a run or a study as cleanly as Ctrl-C does."""

from __future__ import annotations

import signal
from typing import Any


class Stopped(KeyboardInterrupt):
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
    raise Stopped(signum)


def stop_cleanly_on_signals() -> None:
    """SIGTERM and SIGUSR1/SIGUSR2 (with Slurm's --signal) stop as cleanly as Ctrl-C:
    checkpoint kept, summary written."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _raise_stopped)
