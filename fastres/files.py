"""File-system helpers shared by every writer: atomic replacement and writable folders."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import FastresError


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file, fsync and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_writable_dir(path: Path, what: str, flag: str) -> None:
    """Create ``path`` if needed and prove it writable, or fail naming ``flag`` as the fix."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise FastresError(
            f"cannot write the {what} {path} ({exc.strerror}): pass {flag} with a folder you can write"
        ) from None
