"""contention: how long a process's threads waited for a CPU, from Linux's scheduler statistics."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from fastres import contention

needs_schedstat = pytest.mark.skipif(
    contention.thread_waits() is None, reason="this kernel gives no per-thread scheduler statistics"
)


def spin(seconds: float) -> float:
    """One thread computing for ``seconds``: the average number of our threads kept waiting."""
    clock = contention.CpuWait()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(1000))
    return clock.lap()


@needs_schedstat
def test_a_thread_among_cpu_bound_processes_is_seen_waiting():
    alone = spin(1.0)
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(2 * (os.cpu_count() or 1))
    ]
    try:
        time.sleep(0.3)  # let them start
        crowded = spin(1.5)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    # Two busy processes per core leave our one thread about a third of a core.
    assert crowded > alone + 0.3 and crowded > contention.SHARED, (alone, crowded)


def test_a_runs_value_weighs_its_epochs_by_their_time_and_flags_sharing():
    rows = [
        {"cpu_wait": 0.0, "epoch_time_s": 30.0},
        {"cpu_wait": 0.9, "epoch_time_s": 10.0},
        {"cpu_wait": None, "epoch_time_s": 5.0},
    ]
    assert contention.run_average(rows) == pytest.approx(0.9 * 10 / 40)
    assert contention.run_average([{"epoch_time_s": 3.0}]) is None, (
        "runs from before this was measured"
    )
    assert contention.shared_note(0.1) is None and contention.shared_note(None) is None
    assert "0.74 of this run's threads waited for a CPU" in contention.shared_note(0.74)


def test_an_ablations_line_for_a_run_says_when_it_shared_its_cpu():
    from fastres.study.pool import finished_message

    assert finished_message({"final_val_acc": 0.8612, "cpu_wait": 0.01}) == "final val acc 86.12%"
    assert finished_message({"final_val_acc": 0.8612}) == "final val acc 86.12%", (
        "runs from before cpu_wait"
    )
    assert finished_message({"final_val_acc": 0.8612, "cpu_wait": 0.74}) == (
        "final val acc 86.12% (shared its CPU: 0.74 threads kept waiting; its time is not a "
        "measurement)"
    )
