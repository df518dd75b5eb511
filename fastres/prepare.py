"""`fastres prepare-data`: CIFAR-10 source -> FFCV ``.beton`` files + manifest, once.

The manifest records where the betons came from and what they must look like (sizes and
hashes), so that training can refuse a truncated or swapped file and a second
``prepare-data`` can be a no-op. Every file is written under a temporary name and renamed
only when complete, so an interrupted conversion never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np

from . import cifar
from .errors import FastresError
from .ffcv_compat import ffcv_available, guarded_dataset_writer, keep_torch_threads
from .files import TMP_INFIX, FileLock, atomic_path, atomic_write_text, ensure_writable_dir
from .provenance import versions

MANIFEST = "cifar10_manifest.json"
BETONS = {"train": "cifar10_train.beton", "test": "cifar10_test.beton"}
MANIFEST_VERSION = 1
LOCK = ".cifar10_prepare.lock"


def beton_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / BETONS[split]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def manifest_hash(manifest: dict[str, Any]) -> str:
    """A short identity of the prepared data (recorded in every run's summary)."""
    ident = {s: manifest["files"][s]["sha256"] for s in BETONS}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(data_dir: str | Path) -> dict[str, Any] | None:
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        manifest["files"]["train"]["sha256"]  # noqa: B018 - shape check
    except (OSError, ValueError, KeyError, TypeError):
        raise FastresError(
            f"{path} is damaged: run 'fastres prepare-data --force --data-dir {data_dir}' to "
            "rebuild the data"
        ) from None
    return manifest


def verify_betons(data_dir: str | Path, *, check_hash: bool = True) -> dict[str, Any]:
    """Check that both betons exist and match the manifest; return the manifest.

    Raises a FastresError naming the bad file and the command that repairs it.
    """
    data_dir = Path(data_dir)
    fix = f"run 'fastres prepare-data --data-dir {data_dir}' to (re)build it"
    manifest = read_manifest(data_dir)
    if manifest is None:
        raise FastresError(f"no prepared CIFAR-10 in {data_dir} (no {MANIFEST}): {fix}")
    for split, name in BETONS.items():
        path = data_dir / name
        expected = manifest["files"][split]
        if not path.exists():
            raise FastresError(f"{path} is missing: {fix}")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise FastresError(
                f"{path} has {size} bytes, the manifest says {expected['bytes']} (truncated or "
                f"replaced): {fix}"
            )
        if check_hash and file_sha256(path) != expected["sha256"]:
            raise FastresError(
                f"{path} does not match the SHA-256 in {MANIFEST} (corrupted or replaced): {fix}"
            )
    return manifest


class _IndexedSplit:
    """The indexed-dataset protocol FFCV's writer consumes: (HWC uint8 image, int label)."""

    def __init__(self, split: cifar.Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.split.images[i], int(self.split.labels[i])


def write_beton(split: cifar.Split, path: Path, num_workers: int = 1) -> None:
    """Write one split as a beton: raw (lossless) RGB images and integer labels."""
    with keep_torch_threads():
        from ffcv.fields import IntField, RGBImageField
        from ffcv.writer import DatasetWriter

    with atomic_path(path) as tmp, guarded_dataset_writer(path):
        writer = DatasetWriter(
            str(tmp),
            {"image": RGBImageField(write_mode="raw"), "label": IntField()},
            num_workers=num_workers,
        )
        try:
            writer.from_indexed_dataset(_IndexedSplit(split), chunksize=1000)
        except BaseException:
            # FFCV frees its shared-memory index only when it finishes.
            shared = getattr(writer, "metadata_sm", None)
            if isinstance(shared, SharedMemory):
                shared.close()
                shared.unlink()
            raise


class PrepareInterrupted(FastresError):
    """Ctrl-C or SIGTERM stopped the conversion; nothing it left counts as prepared data."""


class StopRequest:
    """The first stop signal that arrived during a conversion, if any."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def error(self) -> PrepareInterrupted:
        signum = self.signum or signal.SIGINT
        return PrepareInterrupted(
            f"prepare-data stopped by {signal.Signals(signum).name}; nothing it wrote counts as "
            "prepared data: run the same command again",
            exit_code=128 + signum,
        )

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is None:  # a second signal must not cut short the cleanup of the first
            self.signum = signum
            raise self.error()

    def check(self) -> None:
        if self.signum is not None:
            raise self.error()


@contextlib.contextmanager
def stop_signals(request: StopRequest) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM stop the block with ``PrepareInterrupted`` (exit status
    128 + signal), also when the shell started it with SIGINT ignored (a background job)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, request.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def prepare_data(
    data_dir: str | Path = "data",
    source: str | Path | None = None,
    *,
    force: bool = False,
    allow_small: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Convert CIFAR-10 into ``<data_dir>/cifar10_{train,test}.beton`` and return the manifest.

    A no-op when the manifest says the betons were built from the same source and they still
    match it, unless ``force``. ``allow_small`` accepts a source with fewer images than CIFAR-10.
    """
    if not ffcv_available():
        raise FastresError(
            "prepare-data needs ffcv, which is not installed (or does not import): run 'bash "
            "scripts/setup.sh' "
            "(or pip install 'fastres[ffcv]'), or train with --loader memory, which needs no betons"
        )
    data_dir = Path(data_dir)
    created = _missing_folders(data_dir)
    ensure_writable_dir(data_dir, "data directory", "--data-dir")
    lock = data_dir / LOCK
    stopped = StopRequest()
    try:
        # One conversion per data dir at a time; the lock dies with its holder, so a killed
        # conversion never blocks the next one, which then clears the temporary files it left.
        with stop_signals(stopped), FileLock(lock):
            for stale in data_dir.glob(f".cifar10_*{TMP_INFIX}*"):
                stale.unlink(missing_ok=True)
            return _prepare_locked(
                data_dir, source, force=force, allow_small=allow_small, log=log, stopped=stopped
            )
    except BaseException as exc:
        # A refusal leaves no trace: the folders this call made go again, if nothing else is in
        # them.
        if created and not any(p.name != LOCK for p in data_dir.iterdir()):
            lock.unlink(missing_ok=True)
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        if stopped.signum is not None and not isinstance(exc, PrepareInterrupted):
            # What the stop set off (a writer's error) is not the news.
            raise stopped.error() from None
        raise


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _prepare_locked(
    data_dir: Path,
    source: str | Path | None,
    *,
    force: bool,
    allow_small: bool,
    log: Callable[[str], None],
    stopped: StopRequest,
) -> dict[str, Any]:
    src = cifar.locate_source(source, data_dir) or cifar.download(data_dir, log=log)
    checksum = cifar.source_checksum(src)

    if not force:
        try:
            old = read_manifest(data_dir)
        except FastresError:
            old = None
        if old is not None and old.get("source", {}).get("sha256") == checksum:
            try:
                verify_betons(data_dir)
                log(
                    f"{data_dir} already holds CIFAR-10 from {src} (unchanged); nothing to do "
                    "(--force rebuilds)"
                )
                return old
            except FastresError as exc:
                log(f"rebuilding: {exc}")
        elif old is not None:
            log(f"the source changed since the last conversion ({src}); rebuilding")

    t0 = time.perf_counter()
    log(f"reading CIFAR-10 from {src}")
    data = cifar.load_source(src, expect_full=not allow_small)
    # The manifest goes first: betons renamed into place without a matching manifest are
    # rejected by verify_betons, so a kill between the renames cannot pass for complete data.
    (data_dir / MANIFEST).unlink(missing_ok=True)
    files: dict[str, Any] = {}
    for split_name, split in (("train", data.train), ("test", data.test)):
        path = data_dir / BETONS[split_name]
        log(f"writing {path} ({len(split)} images)")
        write_beton(split, path, num_workers=min(4, os.cpu_count() or 1))
        stopped.check()
        files[split_name] = {
            "name": path.name,
            "count": len(split),
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
            "label_counts": np.bincount(split.labels, minlength=len(cifar.CLASSES)).tolist(),
        }
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "dataset": "CIFAR-10",
        "classes": list(cifar.CLASSES),
        "source": {"path": str(src.resolve()), "sha256": checksum},
        "files": files,
        "image": {
            "height": 32,
            "width": 32,
            "channels": 3,
            "dtype": "uint8",
            "layout": "HWC",
            "encoding": "raw",
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
    }
    # A stop signal that landed where FFCV swallows exceptions (its writer catches everything
    # in places) still stops the conversion here, before the manifest makes the betons count.
    stopped.check()
    atomic_write_text(data_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    log(
        f"done in {time.perf_counter() - t0:.1f}s: {data_dir / BETONS['train']}, "
        f"{data_dir / BETONS['test']}, {data_dir / MANIFEST}"
    )
    return manifest
