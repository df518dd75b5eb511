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
    src = _copy_with(
        synthetic_source, tmp_path, "data_batch_1", lambda b: b.update(data=_CreatesAFile(marker))
    )
    res = run_main(
        capsys,
        "prepare-data",
        "--allow-small",
        "--source",
        str(src),
        "--data-dir",
        str(tmp_path / "data"),
    )
    assert_clean_error(res, f"{src}/data_batch_1", "global io.open", "official archive")
    assert not marker.exists(), "unpickling the source ran code"
    assert not (tmp_path / "data").exists(), "nothing is left of a refused prepare-data"


def test_the_memory_loader_reads_the_source_through_the_same_check(
    synthetic_source, tmp_path, capsys
):
    marker = tmp_path / "pwned"
    src = _copy_with(
        synthetic_source, tmp_path, "test_batch", lambda b: b.update(labels=_CreatesAFile(marker))
    )
    with pytest.raises(cifar.UnsafePickle, match="test_batch names the Python global"):
        cifar.load_source(src, expect_full=False)
    assert not marker.exists()


@pytest.mark.realdata
def test_the_official_batches_pass_the_restricted_unpickler(real_source):
    data = cifar.load_source(real_source)
    assert data.train.labels.dtype == np.int64 and len(data.test) == 10_000


@pytest.mark.parametrize(
    "labels,needle",
    [
        (lambda n: [float("nan")] * n, "labels of type float64"),
        (lambda n: [3.7] * n, "labels of type float64"),
        (lambda n: ["cat"] * n, "labels of type <U3"),
        (lambda n: [True] * n, "labels of type bool"),
    ],
    ids=["nan", "fraction", "string", "bool"],
)
def test_labels_that_are_no_class_index_are_refused_before_anything_is_written(
    synthetic_source, tmp_path, capsys, labels, needle
):
    src = _copy_with(
        synthetic_source,
        tmp_path,
        "data_batch_2",
        lambda b: b.update(labels=labels(len(b["labels"]))),
    )
    data = tmp_path / "data"
    res = run_main(
        capsys, "prepare-data", "--allow-small", "--source", str(src), "--data-dir", str(data)
    )
    assert_clean_error(res, f"{src}/data_batch_2", needle, "expected integers 0..9")
    assert not data.exists(), "no beton, lock file or empty folder is left behind"


def test_a_refused_prepare_data_keeps_a_folder_that_existed(synthetic_source, tmp_path, capsys):
    src = _copy_with(
        synthetic_source,
        tmp_path,
        "data_batch_2",
        lambda b: b.update(labels=[1.5] * len(b["labels"])),
    )
    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.txt").write_text("keep")
    res = run_main(
        capsys,
        "prepare-data",
        "--allow-small",
        "--source",
        str(src),
        "--data-dir",
        str(data / "a" / "b"),
    )
    assert res.returncode == 2
    assert sorted(p.name for p in data.iterdir()) == ["mine.txt"]


# -- a stop signal at chosen points of prepare-data ---------------------------------------


def _signal_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


def _hold_while_reading(monkeypatch, signum):
    from fastres import prepare

    load = cifar.load_source
    monkeypatch.setattr(
        prepare.cifar, "load_source", lambda *a, **k: (_signal_self(signum), load(*a, **k))[1]
    )


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


@pytest.mark.parametrize(
    "hold,signum",
    [
        (_hold_while_reading, signal.SIGINT),
        (_hold_in_ffcvs_progress_loop, signal.SIGTERM),
        (_hold_where_ffcv_swallows_exceptions, signal.SIGINT),
        (_hold_where_ffcv_swallows_exceptions, signal.SIGTERM),
        (_hold_between_the_betons, signal.SIGTERM),
        (_hold_before_the_manifest, signal.SIGINT),
    ],
    ids=[
        "reading",
        "ffcv-progress",
        "ffcv-bare-except-int",
        "ffcv-bare-except-term",
        "between-betons",
        "before-manifest",
    ],
)
def test_a_stop_signal_anywhere_in_prepare_data_stops_it_and_leaves_nothing_usable(
    synthetic_source, tmp_path, capsys, monkeypatch, hold, signum
):
    data = tmp_path / "data"
    hold(monkeypatch, signum)
    before = {
        signal.SIGINT: signal.getsignal(signal.SIGINT),
        signal.SIGTERM: signal.getsignal(signal.SIGTERM),
    }
    t0 = time.monotonic()
    res = run_main(
        capsys,
        "prepare-data",
        "--allow-small",
        "--source",
        str(synthetic_source),
        "--data-dir",
        str(data),
    )
    assert time.monotonic() - t0 < 30
    assert res.returncode == 128 + signum, res.stderr
    assert_clean_error(
        res, f"stopped by {signal.Signals(signum).name}", "run the same command again"
    )
    assert not (data / MANIFEST).exists()
    if data.exists():
        assert not [p for p in data.iterdir() if ".tmp-" in p.name], "temporary files are removed"
        with pytest.raises(FastresError, match="no prepared CIFAR-10"):
            verify_betons(data)
    assert {s: signal.getsignal(s) for s in before} == before, "the handlers are given back"
    monkeypatch.undo()
    res = run_main(
        capsys,
        "prepare-data",
        "--allow-small",
        "--source",
        str(synthetic_source),
        "--data-dir",
        str(data),
    )
    assert res.returncode == 0, res.stderr
    verify_betons(data)
    assert (data / LOCK).exists()


# -- the run directory is one truth ------------------------------------------------------------

TINY = (
    "--width",
    "8",
    "--batch-size",
    "100",
    "--epochs",
    "2",
    "--lr",
    "0.1",
    "--train-subset",
    "400",
    "--test-subset",
    "100",
    "--precision",
    "fp32",
    "--compile",
    "off",
    "--lr-schedule",
    "linear",
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_data):
    """A finished two-epoch run (copy before changing it)."""
    from fastres.cli import main

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *TINY, "--data-dir", str(synthetic_data), "--run-dir", str(run_dir)]) == 0
    return run_dir


def _edited_copy(run_dir: Path, tmp_path: Path, **changes) -> Path:
    import json

    copy = shutil.copytree(run_dir, tmp_path / "run")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(
        json.dumps({**config, **changes, "run_dir": str(copy)}, indent=2)
    )
    return copy


def test_a_run_gets_a_recipe_digest_when_it_starts(finished_run):
    from fastres.config import load_config_file
    from fastres.rundir import RunDir

    assert RunDir(finished_run).recorded_digest() == load_config_file(finished_run).recipe_digest()


def test_resume_of_a_hand_edited_run_names_each_edited_field(finished_run, tmp_path, capsys):
    run = _edited_copy(finished_run, tmp_path, lr=0.5, epochs=3)
    metrics = (run / "metrics.jsonl").read_text()
    res = run_main(capsys, "train", "--resume", str(run))
    assert_clean_error(
        res,
        "differs from the recipe",
        "lr (0.1 in last.pt, 0.5 in config.json)",
        "epochs (2 in last.pt, 3 in config.json)",
        "a finished run is not extended",
        "--epochs N --run-dir NEW_DIR",
    )
    assert (run / "metrics.jsonl").read_text() == metrics, "nothing of the run is changed"


def test_resume_after_editing_the_model_is_one_line_not_a_state_dict_traceback(
    finished_run, tmp_path, capsys
):
    run = _edited_copy(finished_run, tmp_path, model="resnet34")
    res = run_main(capsys, "train", "--resume", str(run))
    assert_clean_error(res, "model ('resnet18' in last.pt, 'resnet34' in config.json)")


def test_an_edit_before_the_first_checkpoint_is_named_by_the_digest(finished_run, tmp_path, capsys):
    run = _edited_copy(finished_run, tmp_path, lr=0.5)
    shutil.rmtree(run / "checkpoints")
    (run / "summary.json").unlink()
    res = run_main(capsys, "train", "--resume", str(run))
    assert_clean_error(res, "config.json was edited after the run started", "--run-dir NEW_DIR")


def test_an_old_run_without_a_digest_still_resumes_and_reports(finished_run, tmp_path, capsys):
    run = shutil.copytree(finished_run, tmp_path / "old" / "run")
    (run / "recipe.sha256").unlink()
    (run / "summary.json").unlink()  # as if stopped: resume has something to do
    res = run_main(capsys, "train", "--resume", str(run))
    assert res.returncode == 0, res.stderr
    res = run_main(capsys, "report", str(tmp_path / "old"), "--json")
    assert res.returncode == 0, res.stderr
    assert '"skipped": []' in res.stdout


def test_eval_refuses_a_checkpoint_that_does_not_match_its_config(finished_run, tmp_path, capsys):
    run = _edited_copy(finished_run, tmp_path, width=16)
    res = run_main(capsys, "eval", str(run))
    assert_clean_error(res, "cannot evaluate", "width (8 in last.pt, 16 in config.json)")


def test_eval_refuses_weights_of_another_model_copied_in(finished_run, tmp_path, capsys):
    import torch

    from fastres import checkpoint

    run = shutil.copytree(finished_run, tmp_path / "run")
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    state["model"] = {k: torch.zeros(1) for k in state["model"]}  # same config, other tensors
    checkpoint.save(
        {k: v for k, v in state.items() if k not in ("format", "version")},
        run / "checkpoints" / "last.pt",
    )
    res = run_main(capsys, "eval", str(run))
    assert_clean_error(res, "does not hold weights of the model", "resnet18")


@pytest.mark.parametrize("translate", ["99", "-1"])
def test_eval_tta_translate_outside_what_train_allows(finished_run, capsys, translate):
    res = run_main(capsys, "eval", str(finished_run), "--tta-translate", translate)
    assert_clean_error(res, "--tta-translate must be 0 to 4 pixels")


def test_report_names_an_edited_run_and_leaves_it_out(finished_run, tmp_path, capsys):
    import json

    study = tmp_path / "study"
    shutil.copytree(finished_run, study / "baseline" / "seed1")
    edited = _edited_copy(finished_run, tmp_path, lr=0.5)
    shutil.move(edited, study / "baseline" / "seed2")
    res = run_main(capsys, "report", str(study), "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout[res.stdout.index("{") :])
    assert [s["n"] for s in data["settings"]] == [1]
    assert data["skipped"][0]["run"] == "baseline/seed2"
    assert "was edited after the run started" in data["skipped"][0]["reason"]


def test_report_of_folders_whose_configs_are_garbage_says_why(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_bytes(b"\xff\xfe garbage")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text("[1, 2]")
    res = run_main(capsys, "report", str(tmp_path))
    assert_clean_error(
        res, "holds no fastres run this fastres can count", "a: the config file", "(and 1 more)"
    )


def test_ablate_reuse_names_an_edited_run_and_trains_it_again_instead(
    finished_run, tmp_path, capsys
):
    from fastres.config import TrainConfig
    from fastres.study import plan

    earlier = tmp_path / "earlier"
    config = TrainConfig.from_dict(
        {**__import__("json").loads((finished_run / "config.json").read_text())}
    )
    run = _edited_copy(finished_run, tmp_path, weight_decay=0.01)
    (earlier / "baseline").mkdir(parents=True)
    shutil.move(run, earlier / "baseline" / f"seed{config.seed}")
    overrides = {k: v for k, v in config.recipe().items() if v != getattr(TrainConfig(), k)}
    overrides["weight_decay"] = 0.01
    runs = plan(
        ["baseline"], seed=config.seed, overrides=overrides, out=tmp_path / "new", reuse=[earlier]
    )
    assert [r.action for r in runs] == ["train"]
    assert "was edited after the run started" in runs[0].note


def test_ablate_out_inside_a_run_directory_is_refused(finished_run, tmp_path, capsys):
    for out in (
        finished_run,
        finished_run / "study",
        finished_run / "study" / "baseline" / "seed1",
    ):
        res = run_main(capsys, "ablate", "--config", "baseline", "--epochs", "1", "--out", str(out))
        assert_clean_error(res, f"--out {out}", str(finished_run), "pass a folder outside any run")
    assert not (finished_run / "study").exists() and not (finished_run / "study.json").exists()


def test_a_variant_that_sets_the_seed_is_refused_in_the_cli_s_words(tmp_path, capsys):
    res = run_main(
        capsys,
        "ablate",
        "--config",
        "quick",
        "--variant",
        "x:--seed 7",
        "--out",
        str(tmp_path / "s"),
    )
    assert_clean_error(res, "--variant x cannot set --seed", "pass --seed to fastres ablate itself")


# -- each traceback of the list is one line now -----------------------------------------


@pytest.mark.parametrize(
    "content,needle",
    [
        (
            b'{"milestones": "abc"}',
            "milestones must be a list of at most 64 finite numbers, got 'abc'",
        ),
        (b'{"seed": 1e20}', "seed must be an integer, got 1e+20"),
        (b'{"lr": "0.1"}', "lr must be a number, got '0.1'"),
        (b"[1, 2]", "must hold a JSON object"),
        (b'\xff\xfe{"lr": 0.1}', "cannot read config file"),
    ],
    ids=["milestones-text", "seed-float", "lr-text", "not-an-object", "not-utf8"],
)
def test_config_files_with_values_of_the_wrong_kind(tmp_path, capsys, content, needle):
    (tmp_path / "c.json").write_bytes(content)
    res = run_main(
        capsys, "train", "--config", str(tmp_path / "c.json"), "--run-dir", str(tmp_path / "run")
    )
    assert_clean_error(res, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--lr", "1e308"], "lr must be at most 1000"),
        (["--seed", "-1"], "seed must be from 0 to 2_147_483_647"),
        (["--seed", "99999999999999999999"], "seed must be from 0 to 2_147_483_647"),
        (["--crop-padding", "40"], "crop_padding must be at most 16"),
        (["--width", str(10**12)], "width must be at most 1_024"),
        (["--lr-gamma", "1e300"], "lr_gamma must be at most 1"),
    ],
    ids=["lr-huge", "seed-negative", "seed-huge", "crop-padding", "width-huge", "gamma-huge"],
)
def test_option_values_outside_what_training_can_compute(
    synthetic_data, tmp_path, capsys, args, needle
):
    res = run_main(
        capsys,
        "train",
        "--width",
        "8",
        "--epochs",
        "2",
        *args,
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert_clean_error(res, needle)
    assert not (tmp_path / "run").exists()


def test_a_run_dir_name_too_long_for_the_file_system(synthetic_data, tmp_path, capsys):
    run = tmp_path / ("x" * 300)
    res = run_main(
        capsys, "train", "--width", "8", "--data-dir", str(synthetic_data), "--run-dir", str(run)
    )
    assert_clean_error(res, "cannot write the run directory", "File name too long", "--run-dir")


def test_out_of_memory_while_the_model_is_built_is_one_line(
    synthetic_data, tmp_path, capsys, monkeypatch
):
    import importlib

    run_parts = importlib.import_module("fastres.run_parts")  # where the run's model is built

    def no_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 274877906944 bytes"
        )

    monkeypatch.setattr(run_parts, "build_model", no_memory)
    res = run_main(
        capsys,
        "train",
        "--width",
        "8",
        "--batch-size",
        "100",
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert_clean_error(
        res, "out of memory setting up resnet18 (width 8, batch size 100)", "smaller --width"
    )
    assert res.returncode == 1
    assert not (tmp_path / "run").exists()


def test_resume_with_more_epochs_says_how_to_train_longer(finished_run, capsys):
    res = run_main(capsys, "train", "--resume", str(finished_run), "--epochs", "4")
    assert_clean_error(
        res, "epochs (2 recorded, 4 given)", "a run is not extended", "--epochs N --run-dir NEW_DIR"
    )
