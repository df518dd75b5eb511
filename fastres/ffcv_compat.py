"""Working around ffcv: it is optional (fastres trains without it); on import and on every
epoch it sets torch's thread count to its own worker count; its import spends seconds
compiling numba's typed dictionary for two constants; its dataset writer waits forever for
worker processes that died or whose parent did."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .files import write_failure
from .processes import die_with_parent


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Undo whatever ffcv does to torch's thread count inside the block."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _plain_image_modes() -> Iterator[None]:
    """ffcv.fields.rgb_image builds ``IMAGE_MODES = numba.typed.Dict()`` at import ({'jpg': 0,
    'raw': 1}), which JIT-compiles numba's dictionary machinery: about half of what its import
    costs in every process, a training run's included (BENCHMARKS.md, "End to end", the start
    of a run). The dictionary is only ever read from Python (when a pipeline's code is
    generated, and by the writer), never inside compiled code, so a plain dict serves it the
    same. Only ffcv's own import sees it."""
    import numba.typed

    if "ffcv.fields.rgb_image" in sys.modules:  # imported already: nothing left to save
        yield
        return
    typed_dict = numba.typed.Dict
    numba.typed.Dict = dict  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        numba.typed.Dict = typed_dict  # type: ignore[misc]


def ffcv_available() -> bool:
    """Whether ffcv imports (not merely whether it is installed: broken builds are common).
    Every use of ffcv in fastres asks this first, so ffcv is imported here."""
    try:
        with keep_torch_threads(), _plain_image_modes():
            import ffcv.loader  # noqa: F401
    except ImportError:
        return False
    return True


class _WorkerFailed(Exception):
    """Raised in the main thread when one of FFCV's writer processes has died."""


@contextlib.contextmanager
def guarded_dataset_writer(path: Path) -> Iterator[None]:
    """Run FFCV's ``DatasetWriter`` inside the block with its worker processes kept honest.

    FFCV waits for its workers without checking that they are alive, so a worker that dies
    (a full disk, a file-size limit) would leave it waiting forever, and workers whose parent
    is killed wait forever too. Here every worker dies with its parent, reports its error
    instead of printing a traceback, and a failed worker ends the block with a one-line
    ``WriteError`` naming ``path``; FFCV's progress bar shows on a terminal only. The failure
    reaches the main thread as a signal, so the block must run there (elsewhere a failed
    worker is only detected once FFCV returns).
    """
    import ffcv.writer

    guard = _WriterGuard()
    original = ffcv.writer.Process, ffcv.writer.Queue, ffcv.writer.tqdm
    previous_handler = signal.signal(signal.SIGUSR1, guard.on_failure) if guard.in_main else None
    ffcv.writer.Process, ffcv.writer.Queue, ffcv.writer.tqdm = (
        guard.worker_class(),
        _work_queue,
        guard.progress_bar(ffcv.writer.tqdm),
    )
    watcher = threading.Thread(target=guard.watch, name="fastres-ffcv-writer-watch", daemon=True)
    watcher.start()
    try:
        yield
        if guard.failed.is_set():
            raise _WorkerFailed()
    except _WorkerFailed:
        raise write_failure(path, guard.cause()) from None
    finally:
        guard.stop.set()
        watcher.join()
        ffcv.writer.Process, ffcv.writer.Queue, ffcv.writer.tqdm = original
        for bar in guard.bars:
            bar.close()
        if guard.in_main:
            signal.signal(signal.SIGUSR1, previous_handler)
        guard.end_workers()


class _WriterGuard:
    """What ``guarded_dataset_writer`` puts in FFCV's writer for one block: its worker
    processes (each reports its error here), a thread watching them, and its progress bars."""

    def __init__(self) -> None:
        self.errors: Any = multiprocessing.SimpleQueue()
        self.workers: list[multiprocessing.Process] = []
        self.bars: list[Any] = []
        self.in_main = threading.current_thread() is threading.main_thread()
        self.stop = threading.Event()
        self.failed = threading.Event()

    def worker_class(self) -> type[multiprocessing.Process]:
        """FFCV's worker process, which dies with this one and reports its error."""
        errors, workers, parent = self.errors, self.workers, os.getpid()

        class Worker(multiprocessing.Process):
            def start(self) -> None:
                workers.append(self)
                super().start()

            def run(self) -> None:
                # A killed converter leaves no writer behind waiting forever on its queue.
                die_with_parent(signal.SIGKILL, parent)
                try:
                    super().run()
                except OSError as exc:
                    errors.put((exc.errno, exc.strerror or str(exc)))
                    sys.exit(1)
                except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
                    errors.put((None, f"{type(exc).__name__}: {exc}"))
                    sys.exit(1)

        return Worker

    def watch(self) -> None:
        """Until ``stop``: on a worker's failure, set ``failed`` and signal the main thread."""
        while not self.stop.wait(0.1):
            if any(w.exitcode not in (None, 0) for w in list(self.workers)):
                self.failed.set()
                if self.in_main:
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
                return

    def on_failure(self, signum: int, frame: Any) -> None:
        if self.failed.is_set():
            raise _WorkerFailed()

    def progress_bar(self, ffcv_tqdm: Any) -> Callable[..., Any]:
        def progress_bar(*args: Any, **kwargs: Any) -> Any:
            # A bar on a terminal only (a log gets prepare-data's own lines), gone once closed,
            # so that an error message never lands on the end of a half-drawn bar.
            bar = ffcv_tqdm(*args, **kwargs, leave=False, disable=not sys.stderr.isatty())
            self.bars.append(bar)
            return bar

        return progress_bar

    def cause(self) -> Exception:
        """What the failed worker reported, else its exit status."""
        code, message = self.errors.get() if not self.errors.empty() else (None, "")
        exit_codes = sorted({w.exitcode for w in self.workers if w.exitcode})
        if code is not None:
            return OSError(code, message)
        return RuntimeError(message or f"an FFCV writer process exited with status {exit_codes}")

    def end_workers(self) -> None:
        for w in self.workers:
            if w.is_alive():
                w.terminate()
            w.join(timeout=10)


def _work_queue(*args: Any, **kwargs: Any) -> Any:
    # Work that dead workers never took would otherwise keep this process from exiting:
    # a queue's feeder thread is joined at exit, blocked on a pipe nobody reads.
    queue = multiprocessing.Queue(*args, **kwargs)
    queue.cancel_join_thread()
    return queue
