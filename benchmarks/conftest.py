"""Shared set-up of the benchmark suites (pytest-benchmark).

Two modes:

* quick (default, what ``scripts/test.sh`` runs): width-8 models, one tiny batch size, one
  step per repeat, a small synthetic data set. A smoke test of every suite: it checks that
  each code path runs and reports, never how fast.
* full (``FASTRES_BENCH_FULL=1``): the real models and batch sizes and real CIFAR-10, from
  ``FASTRES_CIFAR10`` (the python source) and ``FASTRES_BENCH_DATA`` (a folder of betons
  from ``fastres prepare-data``; prepared into a temporary folder when unset).

Images/s go into each benchmark's ``extra_info``; a table of them (baseline vs fastres side
by side, data loading, end to end) is printed at the end of the session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastres import bench, cifar
from fastres.prepare import prepare_data, verify_betons

RESULTS = pytest.StashKey[dict[str, list]]()


@dataclass(frozen=True)
class Settings:
    full: bool
    width: int
    timing: bench.Timing
    data_batch: int
    data_subset: int  # images per data-loading epoch (0: all 50,000)
    data_repeats: int
    e2e_cases: tuple[tuple[int, int, int], ...]  # (width, batch, training images per epoch)
    e2e_repeats: int  # whole measurements per case (step rate and run), for the spread of `kept`
    e2e_epochs: int
    e2e_test_subset: int
    e2e_block: int  # steps per block when the step inside the loop alternates with the step alone
    e2e_sizes: tuple[
        int, ...
    ]  # input sizes at which the step inside the loop is measured (16: resizing's small epochs)
    threads: int | None  # torch threads for every suite; None: torch's default


# The full-width model, and quick's width 16 at its batch 256, where per-step host work and the
# loader weigh most against a step that is ~16x cheaper.
FULL = Settings(
    full=True,
    threads=None,
    width=64,
    timing=bench.FULL_TIMING,
    data_batch=128,
    data_subset=0,
    data_repeats=3,
    e2e_cases=((64, 128, 128 * 40), (16, 256, 256 * 80)),
    e2e_repeats=3,
    e2e_epochs=2,
    e2e_test_subset=500,
    e2e_block=10,
    e2e_sizes=(32, 16),
)
# One thread in quick mode: the smoke test's tiny steps are mostly synchronisation, and with
# the cores shared (parallel jobs, a training next door) OpenMP barriers then stall for
# whole scheduler slices, turning milliseconds into seconds.
QUICK = Settings(
    full=False,
    threads=1,
    width=bench.QUICK_WIDTH,
    timing=bench.QUICK_TIMING,
    data_batch=64,
    data_subset=512,
    data_repeats=2,
    e2e_cases=((bench.QUICK_WIDTH, 32, 256),),
    e2e_repeats=1,
    e2e_epochs=2,
    e2e_test_subset=100,
    e2e_block=4,
    e2e_sizes=(32,),
)


def pytest_generate_tests(metafunc) -> None:
    if "e2e_case" in metafunc.fixturenames:  # the end-to-end cases of this mode, one test each
        cases = (FULL if bench.full_mode() else QUICK).e2e_cases
        metafunc.parametrize("e2e_case", cases, ids=[f"w{w}-b{b}" for w, b, _ in cases])


@pytest.fixture(scope="session")
def settings() -> Settings:
    import torch

    chosen = FULL if bench.full_mode() else QUICK
    before = torch.get_num_threads()
    if chosen.threads:
        torch.set_num_threads(chosen.threads)
    yield chosen
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def results(request) -> dict[str, list]:
    """Records of this session, for the summary table."""
    return request.config.stash.setdefault(RESULTS, {"step": [], "data": [], "e2e": []})


@dataclass(frozen=True)
class Data:
    betons: Path  # folder with cifar10_{train,test}.beton
    source: Path  # cifar-10-batches-py


def _synthetic(n: int, seed: int) -> cifar.Split:
    rng = np.random.default_rng(seed)
    return cifar.Split(rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 10)


@pytest.fixture(scope="session")
def data(settings: Settings, tmp_path_factory) -> Data:
    if not settings.full:
        source = cifar.write_source(
            tmp_path_factory.mktemp("bench-source") / cifar.FOLDER,
            _synthetic(1024, 0),
            _synthetic(256, 1),
        )
        betons = tmp_path_factory.mktemp("bench-betons")
        prepare_data(betons, source, allow_small=True, log=lambda m: None)
        return Data(betons, source)
    value = os.environ.get(cifar.ENV_VAR)
    if not value or not (Path(value) / cifar.TEST_BATCH).exists():
        pytest.skip(
            f"full data benchmarks need the real CIFAR-10: set {cifar.ENV_VAR} to a "
            "cifar-10-batches-py folder"
        )
    betons = os.environ.get("FASTRES_BENCH_DATA")
    if betons:
        verify_betons(betons)
        return Data(Path(betons), Path(value))
    out = tmp_path_factory.mktemp("bench-betons")
    prepare_data(out, value, log=lambda m: None)
    return Data(out, Path(value))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    res: dict[str, list[dict[str, Any]]] | None = config.stash.get(RESULTS, None)
    if not res or not any(res.values()):
        return
    tr = terminalreporter
    mode = (
        "full"
        if bench.full_mode()
        else f"quick: smoke test, not a measurement ({bench.FULL_ENV}=1 for numbers)"
    )
    tr.section(f"fastres throughput, images/s ({mode})")
    if res["step"]:
        tr.write_line(bench.format_table(res["step"]))
    for d in res["data"]:
        tr.write_line(
            f"data loading, batch {d['fastres']['batch_size']}, {d['fastres']['images_per_epoch']} "
            "images/epoch: "
            f"fastres FFCV + device augmentation {d['fastres']['images_per_s']:,.0f}, "
            f"torchvision DataLoader ({d['torchvision']['workers']} workers) "
            f"{d['torchvision']['images_per_s']:,.0f}: "
            f"{d['speedup']:.1f}x"
        )
    for e in res["e2e"]:
        kept = ", ".join(f"{100 * k:.1f}" for k in e["kept_all"])
        tr.write_line(
            f"end to end, {e['model']} width {e['width']} batch {e['batch_size']}: epoch "
            f"{e['epoch_images_per_s']:,.1f} vs train step {e['step_images_per_s']:,.1f} images/s: "
            f"the loop keeps {100 * e['kept']:.1f}% (median of {len(e['kept_all'])}: {kept}; "
            f"spread {100 * e['kept_spread']:.1f} points)"
        )
        if "loop_shares_median" in e:
            shares = ", ".join(
                f"{part} {100 * v:.1f}%" for part, v in e["loop_shares_median"].items()
            )
            steps = ", ".join(f"{100 * v:.1f}" for v in e["step_share_all"])
            tr.write_line(
                f"  inside the epoch (median of {len(e['step_share_all'])}): {shares}; step share "
                f"per repeat: {steps}"
            )
        for size, kept_at in e.get("step_kept", {}).items():
            each = ", ".join(f"{100 * v:.1f}" for v in e["step_kept_all"][size])
            tr.write_line(
                f"  at {size} px the step inside the loop runs at {100 * kept_at:.1f}% of its "
                "speed alone "
                f"(alternating blocks in one epoch; median of {len(e['step_kept_all'][size])}: "
                f"{each})"
            )
