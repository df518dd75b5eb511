"""Shared fixtures: a small synthetic CIFAR-10 source, its betons, and the real data set.

The real CIFAR-10 comes from $FASTRES_CIFAR10 (set by .ci/run). In CI a missing copy
fails the run; elsewhere the tests that need it are skipped with the reason shown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastres import cifar
from fastres.prepare import prepare_data

# A suite started as a background job (`cmd &` in a script) inherits SIGINT ignored, and so
# would every fastres process it starts: the tests that stop one with Ctrl-C's signal would
# see it ignored. A handler here is not inherited across exec, so the children get the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent


def make_split(n: int, seed: int) -> cifar.Split:
    """Images whose class sets a colour tint, plus noise: learnable, but not trivially."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    # Tints on a coarse grid so no two classes are close.
    tints = np.array([[r, g, b] for r in (50, 200) for g in (50, 200) for b in (50, 125, 200)][:10])
    noise = rng.integers(-30, 31, size=(n, 32, 32, 3))
    images = np.clip(tints[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return cifar.Split(images, labels.astype(np.int64))


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / cifar.FOLDER
    return cifar.write_source(root, make_split(2000, 0), make_split(300, 1))


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory, synthetic_source) -> Path:
    """A data dir with betons of the synthetic source (shared, treat as read-only)."""
    data_dir = tmp_path_factory.mktemp("synthetic-data")
    prepare_data(data_dir, synthetic_source, allow_small=True, log=lambda m: None)
    return data_dir


# The runs of a test under `memory_source` (with the in-memory loader the sharding under torchrun
# is exercised too).
IN_MEMORY = ["--loader", "memory"]


@pytest.fixture
def memory_source(synthetic_source, monkeypatch) -> Path:
    """The synthetic source for `--loader memory` (through FASTRES_CIFAR10), in this process and
    the runs it starts: for tests whose subject is not the loader, each run then skips ffcv's
    seconds-long import."""
    monkeypatch.setenv("FASTRES_CIFAR10", str(synthetic_source))
    return synthetic_source


@pytest.fixture(scope="session")
def real_source() -> Path:
    value = os.environ.get(cifar.ENV_VAR)
    path = Path(value) if value else None
    if path is None or not (path / cifar.TEST_BATCH).exists():
        reason = (
            f"real CIFAR-10 not found: set {cifar.ENV_VAR} to a cifar-10-batches-py folder "
            f"(got {value!r})"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def real_data(tmp_path_factory, real_source) -> Path:
    """A data dir with betons of the real CIFAR-10 (shared, treat as read-only)."""
    data_dir = tmp_path_factory.mktemp("real-data")
    prepare_data(data_dir, real_source, log=lambda m: None)
    return data_dir


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: dict | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run ``python -m fastres ARGS`` as a user would, capturing its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fastres", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """Run the CLI in this process (no interpreter start-up): for the many bad-input checks."""
    from fastres.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse exits on bad options
        code = exc.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["fastres", *args], code, out, err)
