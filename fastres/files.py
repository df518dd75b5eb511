"""Files and folders, for every writer in fastres: atomic replacement, writable-path checks,
and the exclusive lock a process holds on a folder while it changes it.

Every file fastres writes (config, metrics rewrite, summary, checkpoints, betons, manifest,
reports, plots, benchmark results) appears under its final name only when complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import FastresError

TMP_INFIX = ".tmp-"  # temporary files are ".<name>.tmp-<pid>": hidden, and findable after a kill


class WriteError(FastresError):
    """A file could not be written (full disk, file-size limit, I/O error); whatever was on
    disk before is intact. Callers add what to do next (e.g. the resume command)."""

    exit_code = 1


def write_failure(path: Path | str, exc: BaseException) -> WriteError:
    """The one-line error for a failed write of ``path``, with the cause the OS gave."""
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0, "")
        cause = f"{exc.strerror or exc}{f' ({name})' if name else ''}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            cause += ": the disk or quota is full"
        elif exc.errno == errno.EFBIG:
            cause += ": a file-size limit (ulimit -f) was reached"
    else:
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return WriteError(f"cannot write {path}: {cause}")


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn an OS error inside the block into a one-line ``WriteError`` naming ``path``."""
    try:
        yield
    except OSError as exc:
        raise write_failure(path, exc) from None


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_INFIX}{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; on success it is synced and
    renamed over ``path``, on failure removed. A kill or a full disk at any moment keeps the
    old file whole; an OS error becomes a ``WriteError`` naming ``path``."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with writing(path):
            yield tmp
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


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
        raise FastresError(
            f"cannot write the {what} {path} ({problem}): pass {flag} with a folder you can write"
        )
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
        raise FastresError(
            f"cannot write {flag} {p}: {ancestor} is a file, not a folder; pass a path in a folder"
        )
    problem = _folder_problem(p.parent)
    if problem is None and p.exists() and not os.access(p, os.W_OK):
        problem = "permission denied"
    if problem:
        raise FastresError(f"cannot write {flag} {p}: {problem}; pass a path you can write")
    return p


class FileLock:
    """An exclusive OS lock on the file ``path``, held until ``release`` or until the process
    ends: the kernel drops it when its holder dies, so a killed process never leaves a stale
    lock. A POSIX record lock (lockf, not flock) belongs to this process alone: children it
    forks meanwhile (FFCV's writer processes) do not inherit it. The file itself stays: removing
    it would let two processes lock two different files of the same name.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self, *, wait: bool = True) -> bool:
        """Take the lock (waiting for its holder, or not); False if another process holds it."""
        f = open(self.path, "a")  # noqa: SIM115 - held open for as long as the lock is
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            f.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise FastresError(
                f"cannot lock {self.path}: its file system does not support locks "
                f"({exc.strerror}); "
                "use a folder on a local file system"
            ) from None
        self._file = f
        return True

    def holder_pid(self) -> int | None:
        """The PID of the process that holds the lock now, or None when nobody does (asked
        without taking the lock, so a probe never makes a starting holder fail)."""
        try:
            return self._holder_pid()
        except OSError:  # unreadable, or a file system without locks: nobody can hold it
            return None

    def _holder_pid(self) -> int | None:
        if not self.path.exists():
            return None
        with open(self.path) as f:
            if sys.platform != "linux":  # struct flock's layout below is Linux's
                try:
                    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return -1  # held, by a process we cannot name
                return None
            query = struct.pack("@hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            l_type, _, _, _, pid = struct.unpack("@hhqqi", fcntl.fcntl(f, fcntl.F_GETLK, query))
        return None if l_type == fcntl.F_UNLCK else pid

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the lock
            self._file = None

    def __enter__(self) -> FileLock:
        self.acquire()  # ``with FileLock(path):`` waits for any holder
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
