"""Bad input: one line naming the problem and the fix, a non-zero exit, no traceback, nothing
lost."""

import pickle
import shutil

import pytest

from fastres import cifar
from fastres.prepare import BETONS

from .conftest import run_cli, run_main


def test_a_real_process_exits_non_zero_without_traceback(tmp_path):
    res = run_cli("train", "--preset", "cosin", "--run-dir", str(tmp_path / "run"))
    assert_clean_error(res, "unknown preset 'cosin'")
    assert res.returncode == 2


def assert_clean_error(res, *needles):
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--preset", "cosin"], ["unknown preset 'cosin'", "cosine", "small_batch"]),
        (["--model", "resnet101"], ["unknown model 'resnet101'", "resnet50"]),
        (["--model", "resnet65"], ["did you mean resnet56?", "resnet110"]),
        (
            ["--model", "resnet20", "--width", "15"],
            ["width 15 does not fit resnet20", "--width 16"],
        ),
        (["--epochs", "0"], ["epochs must be a positive integer", "--epochs"]),
        (["--batch-size", "-4"], ["batch_size must be a positive integer"]),
        (["--lr", "0"], ["lr must be positive", "--lr"]),
        (["--lr-schedule", "step"], ["lr_schedule must be one of cosine, linear, multistep, none"]),
        (["--milestones", "half,end"], ["malformed milestones"]),
        (["--milestones", "0.75,0.5"], ["strictly increasing"]),
        (["--epochs", "ten"], ["invalid int value: 'ten'"]),
        (["--res-ramp", "start,end"], ["malformed res_ramp", "--res-ramp 0,0.75"]),
        (["--min-res", "30"], ["min_res must be a multiple of 4", "--min-res 16"]),
        (["--optimizer", "adam"], ["optimizer must be one of sgd, muon"]),
        (["--optimizer", "muon", "--muon-lr", "0"], ["muon_lr must be positive", "--muon-lr"]),
        (["--eval-every", "-1"], ["eval_every must be >= 0"]),
    ],
)
def test_bad_training_options(args, needles, tmp_path, capsys):
    res = run_main(capsys, "train", *args, "--run-dir", str(tmp_path / "run"))
    assert_clean_error(res, *needles)
    assert not (tmp_path / "run").exists(), "nothing is written for a refused command"


def test_muon_with_fp16_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import importlib

    import torch

    from fastres.runtime import Runtime

    train = importlib.import_module(
        "fastres.train"
    )  # the module (fastres.train is also a function)
    # fp16 autocast exists on CUDA only: stand in a runtime that resolved to it.
    monkeypatch.setattr(
        train,
        "resolve_runtime",
        lambda config, local_rank=None: Runtime(torch.device("cpu"), "GPU", "fp16", False, True),
    )
    res = run_main(capsys, "train", "--optimizer", "muon", "--run-dir", str(tmp_path / "run"))
    assert_clean_error(res, "--optimizer muon does not work with fp16", "--precision bf16")
    assert not (tmp_path / "run").exists()


def test_batch_larger_than_the_data_set(synthetic_data, tmp_path, capsys):
    res = run_main(
        capsys,
        "train",
        "--width",
        "8",
        "--batch-size",
        "5000",
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert_clean_error(
        res, "batch size 5000 is larger than the 2000 training images", "--batch-size"
    )
    assert not (tmp_path / "run").exists()


def test_missing_betons_point_to_prepare_data(tmp_path, capsys):
    res = run_main(
        capsys,
        "train",
        "--width",
        "8",
        "--data-dir",
        str(tmp_path / "empty"),
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert_clean_error(res, "no prepared CIFAR-10", "fastres prepare-data")


def test_damaged_beton_is_refused(synthetic_data, tmp_path, capsys):
    data = shutil.copytree(synthetic_data, tmp_path / "data")
    beton = data / BETONS["train"]
    beton.write_bytes(beton.read_bytes()[:-100])
    res = run_main(
        capsys, "train", "--width", "8", "--data-dir", str(data), "--run-dir", str(tmp_path / "run")
    )
    assert_clean_error(res, "truncated or replaced", "prepare-data")


def broken_copy(src, dst, name, mutate):
    dst = shutil.copytree(src, dst / cifar.FOLDER)
    if mutate is None:
        (dst / name).unlink()
    elif mutate == "truncate":
        (dst / name).write_bytes((dst / name).read_bytes()[:5000])
    else:
        batch = pickle.loads((dst / name).read_bytes(), encoding="latin1")
        mutate(batch)
        (dst / name).write_bytes(pickle.dumps(batch, protocol=2))
    return dst


def _bad_labels(batch):
    batch["labels"][3] = 12


def _bad_shape(batch):
    batch["data"] = batch["data"][:, :1024]


@pytest.mark.parametrize(
    "name,mutate,needle",
    [
        ("data_batch_3", None, "missing data_batch_3"),
        ("data_batch_2", "truncate", "data_batch_2 is truncated or not a CIFAR-10 batch"),
        ("test_batch", _bad_labels, "labels outside 0..9"),
        ("data_batch_1", _bad_shape, "expected (N, 3072) uint8"),
    ],
)
def test_broken_source_is_refused(synthetic_source, tmp_path, name, mutate, needle, capsys):
    src = broken_copy(synthetic_source, tmp_path, name, mutate)
    res = run_main(
        capsys,
        "prepare-data",
        "--allow-small",
        "--source",
        str(src),
        "--data-dir",
        str(tmp_path / "data"),
    )
    assert_clean_error(res, needle)
    assert not any((tmp_path / "data").glob("*.beton")), "no beton is written from a broken source"


def test_no_source_and_no_network_says_where_it_looked(tmp_path):
    res = run_cli(
        "prepare-data",
        "--data-dir",
        str(tmp_path / "data"),
        env={
            "FASTRES_CIFAR10": "",
            "https_proxy": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
        },
        timeout=120,
    )
    assert_clean_error(
        res, "no CIFAR-10 found", "FASTRES_CIFAR10", "--source", "cifar-10-batches-py"
    )
    assert not (tmp_path / "data" / cifar.ARCHIVE).exists()


def test_source_path_that_does_not_exist(tmp_path, capsys):
    res = run_main(
        capsys,
        "prepare-data",
        "--source",
        str(tmp_path / "nope"),
        "--data-dir",
        str(tmp_path / "data"),
    )
    assert_clean_error(res, "does not exist", "cifar-10-batches-py")


def test_unwritable_data_and_run_directories(synthetic_source, synthetic_data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = run_main(
        capsys,
        "prepare-data",
        "--allow-small",
        "--source",
        str(synthetic_source),
        "--data-dir",
        str(blocker / "data"),
    )
    assert_clean_error(res, "cannot write the data directory", "--data-dir")
    res = run_main(
        capsys,
        "train",
        "--width",
        "8",
        "--batch-size",
        "100",
        "--epochs",
        "1",
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(blocker / "run"),
    )
    assert_clean_error(res, "cannot write the run directory", "--run-dir")


def test_resume_of_a_folder_without_a_run(tmp_path, capsys):
    res = run_main(capsys, "train", "--resume", str(tmp_path))
    assert_clean_error(res, "no fastres run there", "--run-dir")


def test_eval_of_a_folder_without_a_run(tmp_path, capsys):
    res = run_main(capsys, "eval", str(tmp_path))
    assert_clean_error(res, "holds no fastres run")


def test_a_line_break_in_a_path_does_not_split_the_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a\x85b", "a\u2028b", "a\rb"):
        res = run_main(capsys, "report", name)
        assert res.returncode != 0 and len(res.stderr.splitlines()) == 1, repr(res.stderr)
        assert repr(name)[1:-1] in res.stderr, "the name is shown, escaped"
