"""What the commands print, and what happens when no one reads it any more."""

from __future__ import annotations

import _thread
import os
import sys
import threading

_reader_gone = threading.Event()


def log(message: str) -> None:
    """Print one line. When the reader has gone (`fastres ablate ... | head`), the command
    stops as Ctrl-C stops it (a run keeps its checkpoint, a study stops its runs cleanly) and
    exits with 141, a shell's status for SIGPIPE: a study must not go on unseen, nor hang on
    a child whose output no thread drains any more."""
    try:
        print(message, flush=True)
    except BrokenPipeError:
        if _reader_gone.is_set():
            return
        _reader_gone.set()
        # Whatever is printed while stopping (and the interpreter's last flush) goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt from None
        _thread.interrupt_main()  # from a study's thread that relays a run's lines


def reader_gone() -> bool:
    """Whether a line could not be printed because the reader had gone."""
    return _reader_gone.is_set()
