"""Property test of every input a user can type or edit (issue 24): config files and option
values drawn by hypothesis are either accepted or refused in one line with a non-zero exit,
never another exception. Derandomized: each run of the suite draws the same cases."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastres.config import TrainConfig
from fastres.config_options import field_type
from fastres.formatting import option_flag

from .conftest import run_main

# How many cases each test draws (docs/faults.md names these numbers).
CONFIG_FILES = 150
OPTION_VALUES = 150
OTHER_COMMANDS = 60
TRAININGS = 12  # most are refused by validation at once; the others train 200 images

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
MACHINE_PATHS = ("run_dir", "data_dir")  # the tests choose these: a drawn path is another draw's

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.5, 1e308, -1e308, 2**63, 2**64]),
)
odd_strings = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="\x00\n\t /\\\"'$;*?~.é", max_size=20),
    st.sampled_from(
        ["", "nan", "inf", "-inf", "1e999", "0x10", "1_000", "true", "None", "resnet18", "cosine"]
    ),
    st.integers(min_value=200, max_value=5000).map(lambda n: "x" * n),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, odd_strings),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def _field_value(name: str):
    """A value for ``name``: mostly of the field's own type, often of another."""
    kind = field_type(name)
    own = {bool: st.booleans(), int: numbers, float: numbers, str: odd_strings}.get(
        kind, st.lists(numbers, max_size=5)
    )
    return st.one_of(own, own, json_values)


config_docs = st.one_of(
    st.fixed_dictionaries(
        {}, optional={name: _field_value(name) for name in FIELDS if name not in MACHINE_PATHS}
    ),
    st.dictionaries(st.sampled_from([*FIELDS, "unknown", ""]), json_values, max_size=4),
    json_values,
)


@pytest.fixture
def restore_torch():
    """A drawn config that gets as far as the runtime sets torch's thread count and
    determinism for this process; put them back for the next case and the next test."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield lambda: (
        torch.set_num_threads(threads),
        torch.use_deterministic_algorithms(deterministic),
    )
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def assert_accepted_or_one_line(res, accepted=(0,)) -> None:
    if res.returncode in accepted:
        return
    assert res.returncode not in (0, None), res
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fastres"), res.stderr


FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@settings(FUZZ, max_examples=CONFIG_FILES)
@given(doc=config_docs, raw=st.one_of(st.none(), st.binary(max_size=30)))
def test_any_config_file_is_accepted_or_refused_in_one_line(
    doc, raw, tmp_path, capsys, restore_torch
):
    path = tmp_path / "config.json"
    path.write_bytes(raw if raw is not None else json.dumps(doc).encode())
    # Past validation, a config meets an empty data folder: "no prepared CIFAR-10", one line.
    res = run_main(
        capsys,
        "train",
        "--config",
        str(path),
        "--run-dir",
        str(tmp_path / "run"),
        "--data-dir",
        str(tmp_path / "no-data"),
        "--loader",
        "ffcv",
        "--device",
        "cpu",
    )
    restore_torch()
    assert_accepted_or_one_line(res)
    assert not (tmp_path / "run").exists(), "a refused run leaves no folder"


option_values = st.one_of(
    odd_strings,
    numbers.map(str),
    numbers.map(lambda v: repr(v)),
    st.lists(numbers, max_size=4).map(lambda v: ",".join(map(str, v))),
)


@settings(FUZZ, max_examples=OPTION_VALUES)
@given(
    name=st.sampled_from([n for n in FIELDS if n not in ("preset", *MACHINE_PATHS)]),
    value=option_values,
    second=st.one_of(st.none(), st.tuples(st.sampled_from(FIELDS[:12]), option_values)),
)
def test_any_training_option_value_is_accepted_or_refused_in_one_line(
    name, value, second, tmp_path, capsys, restore_torch
):
    flag = option_flag(name)
    args = [flag] if field_type(name) is bool else [f"{flag}={value}"]
    if (
        second is not None
        and second[0] not in ("preset", *MACHINE_PATHS)
        and field_type(second[0]) is not bool
    ):
        args.append(f"{option_flag(second[0])}={second[1]}")
    res = run_main(
        capsys,
        "train",
        *args,
        "--run-dir",
        str(tmp_path / "run"),
        "--data-dir",
        str(tmp_path / "none"),
        "--loader",
        "ffcv",
        "--device",
        "cpu",
    )
    restore_torch()
    assert_accepted_or_one_line(res)
    assert not (tmp_path / "run").exists()


paths = st.one_of(
    odd_strings, st.integers(min_value=1, max_value=40).map(lambda n: "/".join(["d" * 250] * n))
)


@settings(FUZZ, max_examples=OTHER_COMMANDS)
@given(
    command=st.sampled_from(["eval", "report", "ablate", "prepare-data", "train-dir", "resume"]),
    path=paths,
    value=option_values,
)
def test_paths_and_values_of_the_other_commands_are_accepted_or_refused_in_one_line(
    command, path, value, tmp_path, capsys, restore_torch, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # relative drawn paths land here
    monkeypatch.setenv("FASTRES_CIFAR10", str(tmp_path / "no-source"))  # never a download
    args = {
        "eval": ["eval", path, "--tta-translate", value],
        "report": ["report", path, "--out", str(tmp_path / "out")],
        "ablate": ["ablate", "--config", "quick", "--dry-run", "--out", path, f"--seeds={value}"],
        "prepare-data": ["prepare-data", "--data-dir", path, "--allow-small"],
        "train-dir": [
            "train",
            "--width",
            "8",
            "--run-dir",
            path,
            "--data-dir",
            str(tmp_path / "none"),
        ],
        "resume": ["train", "--resume", path],
    }[command]
    res = run_main(capsys, *args)
    restore_torch()
    assert_accepted_or_one_line(res)


def _edges(valid, *edges):
    """Mostly valid values, and the edges around what validation allows (which it must either
    refuse or the training must survive)."""
    return st.one_of(valid, st.sampled_from(edges))


@settings(FUZZ, max_examples=TRAININGS)
@given(
    lr=_edges(st.floats(1e-4, 10), 1e3, 1e3 + 1, 1e308, 1e-300),
    seed=_edges(st.integers(0, 2**31 - 1), -1, 0, 2**31 - 1, 2**32, 10**20),
    crop_padding=_edges(st.integers(0, 16), 16, 17, 40),
    label_smoothing=st.floats(0, 0.99),
    width=st.integers(1, 8),
    schedule=st.sampled_from(["cosine", "linear", "multistep", "none"]),
    ema=st.sampled_from([0.0, 0.9]),
)
def test_a_few_drawn_recipes_train_for_real_or_stop_in_one_line(
    lr,
    seed,
    crop_padding,
    label_smoothing,
    width,
    schedule,
    ema,
    synthetic_data,
    tmp_path,
    capsys,
    restore_torch,
):
    run = tmp_path / f"run-{seed}-{lr}"
    res = run_main(
        capsys,
        "train",
        "--width",
        str(width),
        "--epochs",
        "1",
        "--batch-size",
        "100",
        "--train-subset",
        "200",
        "--test-subset",
        "100",
        "--lr",
        repr(lr),
        "--seed",
        str(seed),
        "--crop-padding",
        str(crop_padding),
        "--label-smoothing",
        repr(label_smoothing),
        "--lr-schedule",
        schedule,
        "--ema",
        str(ema),
        "--compile",
        "off",
        "--precision",
        "fp32",
        "--data-dir",
        str(synthetic_data),
        "--run-dir",
        str(run),
        "--threads",
        "1",
    )
    restore_torch()
    assert_accepted_or_one_line(res, accepted=(0, 3))  # 3: diverged, a result for a huge lr
    if res.returncode in (0, 3):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] in ("completed", "diverged")
    else:
        assert not run.exists()


def test_the_drawn_case_counts_are_what_the_fault_docs_say():
    text = (Path(__file__).resolve().parent.parent / "docs" / "faults.md").read_text()
    total = CONFIG_FILES + OPTION_VALUES + OTHER_COMMANDS + TRAININGS
    assert f"{total} drawn cases" in text
    for n in (CONFIG_FILES, OPTION_VALUES, OTHER_COMMANDS, TRAININGS):
        assert f"{n} " in text
