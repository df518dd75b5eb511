"""Files and folders, for every writer in fastres: atomic replacement, writable-path checks,
and the exclusive lock a process holds on a folder while it changes it.

Every file fastres writes (config, metrics rewrite, summary, checkpoints, betons, manifest,
reports, plots, benchmark results) appears under its final name only when complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import FastresError

TMP_INFIX = ".tmp-"  # temporary files are ".<name>.tmp-<pid>": hidden, and findable after a kill


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_INFIX}{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; on success it is synced and
    renamed over ``path``, on failure removed. A kill at any moment keeps the old file whole."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (created if missing), or None if they can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def ensure_writable_dir(path: str | Path, what: str, flag: str) -> Path:
    """Create ``path`` if needed and prove it writable, or fail naming ``flag`` as the fix."""
    path = Path(path)
    problem = _folder_problem(path)
    if problem:
        raise FastresError(f"cannot write the {what} {path} ({problem}): pass {flag} with a folder you can write")
    return path


def ensure_writable_file(path: str | Path, flag: str) -> Path:
    """Fail now, not after a long computation, when the output file ``path`` cannot be written."""
    p = Path(path)
    if p.is_dir():
        raise FastresError(f"cannot write {flag} {p}: it is a directory; pass a file path")
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FastresError(f"cannot write {flag} {p}: {ancestor} is a file, not a folder; pass a path in a folder")
    problem = _folder_problem(p.parent)
    if problem is None and p.exists() and not os.access(p, os.W_OK):
        problem = "permission denied"
    if problem:
        raise FastresError(f"cannot write {flag} {p}: {problem}; pass a path you can write")
    return p


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive OS lock on the file ``path`` for the block, waiting for any holder.

    The kernel releases it when the holder dies, so a killed process never leaves a stale
    lock. A POSIX record lock (lockf, not flock) belongs to this process alone: children it
    forks meanwhile (FFCV's writer processes) do not inherit it.
    """
    with open(path, "w") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        yield
