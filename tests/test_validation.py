"""--val-split: a held-out part of the training set chooses the best epoch; the test set gives
only the final number."""

import importlib
import json

import numpy as np
import pytest
import torch

from fastres import FastresError, TrainConfig, train
from fastres.data import open_data
from fastres.rundir import VAL_SPLIT, RunDir
from fastres.split import digest, held_out, kept

from .conftest import run_main
from .test_distributed import TINY, rank_hashes, torchrun

train_module = importlib.import_module("fastres.train")  # the package attribute is the function


def test_held_out_images_are_class_balanced_fixed_and_nested():
    labels = np.random.default_rng(3).integers(0, 10, size=5000)
    held = held_out(labels, 500)
    assert len(held) == len(set(held.tolist())) == 500
    counts = np.bincount(labels[held], minlength=10)
    expected = 500 * np.bincount(labels, minlength=10) / 5000
    assert np.all(np.abs(counts - expected) <= 1), "each class gives its share"
    assert np.array_equal(held, held_out(labels, 500)), "no seed: the same images every time"
    assert set(held_out(labels, 200).tolist()) <= set(held.tolist()), (
        "a smaller split is part of a larger one"
    )
    rest = kept(5000, held)
    assert len(rest) == 4500 and not set(rest.tolist()) & set(held.tolist())


def _batches_images(batches):
    return torch.cat([images.clone() for images, _ in batches])


@pytest.mark.parametrize("seed", [0, 7])
def test_both_loaders_hold_out_the_same_images_and_never_train_on_them(
    synthetic_source, synthetic_data, seed
):
    common = {
        "data_dir": synthetic_data,
        "batch_size": 100,
        "device": torch.device("cpu"),
        "seed": seed,
        "train_subset": 1500,
        "val_split": 300,
        "source": synthetic_source,
        "log": lambda m: None,
    }
    ffcv = open_data(loader="ffcv", **common)
    memory = open_data(loader="memory", **common)
    assert np.array_equal(ffcv.val_indices, memory.val_indices)
    assert np.array_equal(
        ffcv.val_indices, open_data(loader="memory", **common | {"seed": 99}).val_indices
    )
    assert ffcv.val_indices.max() < 1500, "drawn from the --train-subset images"
    assert torch.equal(_batches_images(ffcv.val), _batches_images(memory.val))
    for data in (ffcv, memory):
        trained = set(data.train.epoch_order(0).tolist()) | set(data.train.epoch_order(1).tolist())
        assert not trained & set(data.val_indices.tolist())
        assert len(data.train) == 1200 // 100
    assert torch.equal(ffcv.train.epoch_order(1), memory.train.epoch_order(1)), (
        "the same order from both loaders"
    )


def _config(data_dir, run_dir, **changes):
    recipe = {
        "width": 8,
        "batch_size": 100,
        "epochs": 3,
        "lr": 0.05,
        "lr_schedule": "cosine",
        "val_split": 400,
    }
    return TrainConfig(
        **recipe | changes, data_dir=str(data_dir), run_dir=str(run_dir), loader="ffcv"
    )


def test_best_epoch_is_chosen_on_the_held_out_split_and_the_test_set_is_evaluated_once(
    synthetic_data, tmp_path
):
    summary = train(_config(synthetic_data, tmp_path / "run"), log=lambda m: None)
    run = RunDir(tmp_path / "run")
    rows = run.read_metrics()
    assert [r["val_acc"] is None for r in rows] == [True, True, False], (
        "test set only after the last epoch"
    )
    assert all(r["val_split_images"] == 400 and r["val_split_acc"] is not None for r in rows)
    best = max(rows, key=lambda r: r["val_split_acc"])
    assert summary["best_on"] == "val_split" and summary["best_epoch"] == best["epoch"]
    assert summary["best_val_split_acc"] == best["val_split_acc"]
    assert summary["val_split_acc"] == rows[-1]["val_split_acc"]
    assert summary["final_val_acc"] == rows[-1]["val_acc"], "final_val_acc stays the test accuracy"
    assert torch.load(run.best_checkpoint, weights_only=False)["epoch"] == best["epoch"]
    recorded = json.loads((run.path / VAL_SPLIT).read_text())
    assert recorded["images"] == 400 and recorded["digest"] == summary["val_split_digest"]
    assert recorded["digest"] == digest(np.array(recorded["indices"]))


def test_without_a_split_nothing_changes(synthetic_data, tmp_path):
    summary = train(
        _config(synthetic_data, tmp_path / "run", val_split=0, epochs=2), log=lambda m: None
    )
    rows = RunDir(tmp_path / "run").read_metrics()
    assert all(r["val_acc"] is not None and "val_split_acc" not in r for r in rows)
    assert summary["best_on"] == "test" and "val_split_acc" not in summary
    assert not (tmp_path / "run" / VAL_SPLIT).exists()


def test_an_interrupted_run_resumes_with_its_split_and_refuses_another(
    synthetic_data, tmp_path, monkeypatch
):
    config = _config(synthetic_data, tmp_path / "run")
    real = train_module.Trainer.run_epoch

    def stop_after_one(self, show):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real(self, show)

    monkeypatch.setattr(train_module.Trainer, "run_epoch", stop_after_one)
    with pytest.raises(train_module.Interrupted):
        train(config, log=lambda m: None)
    monkeypatch.setattr(train_module.Trainer, "run_epoch", real)
    split_file = tmp_path / "run" / VAL_SPLIT
    good = split_file.read_text()
    split_file.write_text(good.replace(json.loads(good)["digest"], "0123456789abcdef"))
    with pytest.raises(FastresError, match="held-out images .* differ"):
        train(config, log=lambda m: None, resume=True)
    split_file.write_text(good)
    summary = train(config, log=lambda m: None, resume=True)
    rows = RunDir(tmp_path / "run").read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(
        r["val_split_images"] == 400 for r in rows
    )
    assert summary["status"] == "completed" and summary["best_on"] == "val_split"


def test_every_process_holds_out_the_same_images(synthetic_data, tmp_path):
    res = torchrun(
        "train",
        *TINY,
        "--epochs",
        "1",
        "--val-split",
        "400",
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(tmp_path / "ddp"),
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    hashes = rank_hashes(out)
    assert set(hashes) == {"0", "1"} and len(set(hashes.values())) == 1, out
    rows = RunDir(tmp_path / "ddp").read_metrics()
    assert rows[0]["val_split_images"] == 400 and rows[0]["val_images"] == 300


@pytest.mark.parametrize(
    "args,message",
    [
        (["--val-split", "0"], "--val-split takes a number of training images to hold out, N >= 1"),
        (
            ["--val-split", "2000"],
            "--val-split 2000 leaves none of the 2000 training images to train on",
        ),
        (
            ["--train-subset", "500", "--val-split", "600"],
            "val_split 600 leaves none of the 500 images of --train-subset",
        ),
        (["--val-split", "1950"], "batch size 100 is larger than the 50 training images"),
    ],
)
def test_a_split_that_leaves_nothing_to_train_on_is_one_line_and_writes_nothing(
    synthetic_data, tmp_path, capsys, args, message
):
    run_dir = tmp_path / "run"
    res = run_main(
        capsys, "train", *TINY, *args, "--data-dir", str(synthetic_data), "--run-dir", str(run_dir)
    )
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not run_dir.exists()
