"""Untrusted and hand-edited input (issue 24): a data source cannot run code, bad labels and
edited run records are refused in one line, and a stopped conversion leaves nothing usable."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from fastres import cifar
from fastres.errors import FastresError
from fastres.prepare import BETONS, LOCK, MANIFEST, verify_betons

from .conftest import run_main
from .test_cli_errors import assert_clean_error


class _CreatesAFile:
    """A pickled object whose loading opens (creates) ``path``: code run by unpickling."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def _copy_with(synthetic_source: Path, tmp_path: Path, name: str, change) -> Path:
    dst = shutil.copytree(synthetic_source, tmp_path / "src")
    with open(synthetic_source / name, "rb") as f:
        batch = pickle.load(f, encoding="latin1")  # our own fixture: trusted
    change(batch)
    (dst / name).write_bytes(pickle.dumps(batch, protocol=2))
    return dst


def test_a_source_whose_pickle_would_run_code_is_refused_unrun(synthetic_source, tmp_path, capsys):
    marker = tmp_path / "pwned"
    src = _copy_with(synthetic_source, tmp_path, "data_batch_1",
                     lambda b: b.update(data=_CreatesAFile(marker)))
    res = run_main(capsys, "prepare-data", "--allow-small", "--source", str(src), "--data-dir", str(tmp_path / "data"))
    assert_clean_error(res, f"{src}/data_batch_1", "global io.open", "official archive")
    assert not marker.exists(), "unpickling the source ran code"
    assert not (tmp_path / "data").exists(), "nothing is left of a refused prepare-data"


def test_the_memory_loader_reads_the_source_through_the_same_check(synthetic_source, tmp_path, capsys):
    marker = tmp_path / "pwned"
    src = _copy_with(synthetic_source, tmp_path, "test_batch", lambda b: b.update(labels=_CreatesAFile(marker)))
    with pytest.raises(cifar.UnsafePickle, match="test_batch names the Python global"):
        cifar.load_source(src, expect_full=False)
    assert not marker.exists()


@pytest.mark.realdata
def test_the_official_batches_pass_the_restricted_unpickler(real_source):
    data = cifar.load_source(real_source)
    assert data.train.labels.dtype == np.int64 and len(data.test) == 10_000


@pytest.mark.parametrize("labels,needle", [
    (lambda n: [float("nan")] * n, "labels of type float64"),
    (lambda n: [3.7] * n, "labels of type float64"),
    (lambda n: ["cat"] * n, "labels of type <U3"),
    (lambda n: [True] * n, "labels of type bool"),
], ids=["nan", "fraction", "string", "bool"])
def test_labels_that_are_no_class_index_are_refused_before_anything_is_written(
        synthetic_source, tmp_path, capsys, labels, needle):
    src = _copy_with(synthetic_source, tmp_path, "data_batch_2", lambda b: b.update(labels=labels(len(b["labels"]))))
    data = tmp_path / "data"
    res = run_main(capsys, "prepare-data", "--allow-small", "--source", str(src), "--data-dir", str(data))
    assert_clean_error(res, f"{src}/data_batch_2", needle, "expected integers 0..9")
    assert not data.exists(), "no beton, lock file or empty folder is left behind"


def test_a_refused_prepare_data_keeps_a_folder_that_existed(synthetic_source, tmp_path, capsys):
    src = _copy_with(synthetic_source, tmp_path, "data_batch_2", lambda b: b.update(labels=[1.5] * len(b["labels"])))
    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.txt").write_text("keep")
    res = run_main(capsys, "prepare-data", "--allow-small", "--source", str(src), "--data-dir", str(data / "a" / "b"))
    assert res.returncode == 2
    assert sorted(p.name for p in data.iterdir()) == ["mine.txt"]


# -- a stop signal at chosen points of prepare-data ---------------------------------------

def _signal_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


def _hold_while_reading(monkeypatch, signum):
    from fastres import prepare

    load = cifar.load_source
    monkeypatch.setattr(prepare.cifar, "load_source", lambda *a, **k: (_signal_self(signum), load(*a, **k))[1])


def _hold_in_ffcvs_progress_loop(monkeypatch, signum):
    import ffcv.writer

    sleep = ffcv.writer.sleep
    calls = []

    def once(seconds):
        calls.append(seconds)
        if len(calls) == 1:
            _signal_self(signum)
        sleep(seconds)

    monkeypatch.setattr(ffcv.writer, "sleep", once)


def _hold_where_ffcv_swallows_exceptions(monkeypatch, signum):
    # FFCV's finalize has a bare `except:`: a signal landing there was lost (exit 0, all written).
    import ffcv.writer

    finalize = ffcv.writer.DatasetWriter.finalize

    def swallowing(self, allocations):
        with contextlib.suppress(BaseException):  # as FFCV's bare `except:` does
            _signal_self(signum)
        return finalize(self, allocations)

    monkeypatch.setattr(ffcv.writer.DatasetWriter, "finalize", swallowing)


def _hold_between_the_betons(monkeypatch, signum):
    from fastres import prepare

    write = prepare.write_beton

    def then_stop(split, path, num_workers=1):
        write(split, path, num_workers)
        if path.name == BETONS["train"]:
            _signal_self(signum)

    monkeypatch.setattr(prepare, "write_beton", then_stop)


def _hold_before_the_manifest(monkeypatch, signum):
    from fastres import prepare

    digest = prepare.file_sha256

    def then_stop(path):
        result = digest(path)
        if path.name == BETONS["test"]:
            _signal_self(signum)
        return result

    monkeypatch.setattr(prepare, "file_sha256", then_stop)


@pytest.mark.parametrize("hold,signum", [
    (_hold_while_reading, signal.SIGINT),
    (_hold_in_ffcvs_progress_loop, signal.SIGTERM),
    (_hold_where_ffcv_swallows_exceptions, signal.SIGINT),
    (_hold_where_ffcv_swallows_exceptions, signal.SIGTERM),
    (_hold_between_the_betons, signal.SIGTERM),
    (_hold_before_the_manifest, signal.SIGINT),
], ids=["reading", "ffcv-progress", "ffcv-bare-except-int", "ffcv-bare-except-term", "between-betons",
        "before-manifest"])
def test_a_stop_signal_anywhere_in_prepare_data_stops_it_and_leaves_nothing_usable(
        synthetic_source, tmp_path, capsys, monkeypatch, hold, signum):
    data = tmp_path / "data"
    hold(monkeypatch, signum)
    before = {signal.SIGINT: signal.getsignal(signal.SIGINT), signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
    t0 = time.monotonic()
    res = run_main(capsys, "prepare-data", "--allow-small", "--source", str(synthetic_source), "--data-dir", str(data))
    assert time.monotonic() - t0 < 30
    assert res.returncode == 128 + signum, res.stderr
    assert_clean_error(res, f"stopped by {signal.Signals(signum).name}", "run the same command again")
    assert not (data / MANIFEST).exists()
    if data.exists():
        assert not [p for p in data.iterdir() if ".tmp-" in p.name], "temporary files are removed"
        with pytest.raises(FastresError, match="no prepared CIFAR-10"):
            verify_betons(data)
    assert {s: signal.getsignal(s) for s in before} == before, "the handlers are given back"
    monkeypatch.undo()
    res = run_main(capsys, "prepare-data", "--allow-small", "--source", str(synthetic_source), "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    verify_betons(data)
    assert (data / LOCK).exists()
