"""Child processes that never outlive their parent, and waiting on one without reaping it."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int, parent: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent (PID ``parent``) dies
    (Linux only), so a killed launcher leaves nothing running; call it first thing in the child.
    A parent that died before the request took effect ends the child at once."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
        if sig != signal.SIGKILL:  # a handled signal ends the child through its handler, else:
            os._exit(1)


def wait_exited(pid: int, timeout: float, poll_s: float = 0.1) -> bool:
    """Whether child ``pid`` exits within ``timeout`` seconds. It is not reaped (its Popen
    still sees its status), so this is safe inside a signal handler that interrupted a
    Popen.poll of the same child."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # already reaped
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
