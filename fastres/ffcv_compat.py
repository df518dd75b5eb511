"""Importing ffcv safely: it is optional (fastres trains without it) and, on import and on
every epoch, it sets torch's thread count to its own worker count."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Undo whatever ffcv does to torch's thread count inside the block."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ffcv_available() -> bool:
    """Whether ffcv imports (not merely whether it is installed: broken builds are common)."""
    try:
        with keep_torch_threads():
            import ffcv.loader  # noqa: F401
    except ImportError:
        return False
    return True
