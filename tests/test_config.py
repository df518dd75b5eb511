import json

import pytest

from fastres import PRESETS, ConfigError, TrainConfig, get_preset
from fastres.config import load_config_file
from fastres.config_options import parse_numbers
from fastres.presets import preset_differences


def test_baseline_is_the_studys_recipe():
    b = get_preset("baseline")
    assert (b.model, b.lr, b.momentum, b.weight_decay, b.batch_size, b.epochs, b.seed) == (
        "resnet18",
        0.1,
        0.9,
        5e-4,
        128,
        200,
        42,
    )
    assert b.lr_schedule == "multistep" and b.milestone_epochs() == [100, 150]


@pytest.mark.parametrize(
    "name,change",
    [
        ("cosine", {"lr_schedule": ("multistep", "cosine")}),
        ("no_schedule", {"lr_schedule": ("multistep", "none")}),
        ("resnet34", {"model": ("resnet18", "resnet34")}),
        ("resnet50", {"model": ("resnet18", "resnet50")}),
        ("no_batchnorm", {"norm": ("batch", "none"), "lr": (0.1, 0.01)}),
        ("small_batch", {"batch_size": (128, 32)}),
    ],
)
def test_each_ablation_preset_is_baseline_plus_exactly_its_change(name, change):
    assert preset_differences(name) == change


def test_alias_and_quick_preset():
    assert get_preset("cosine_schedule") == PRESETS["cosine"]
    quick = get_preset("quick")
    assert quick.width < 64 and quick.epochs <= 10


def test_progressive_resizing_schedule_keeps_its_shape_and_ends_at_full_size():
    quick = get_preset("quick")
    assert [quick.resolution(e) for e in range(6)] == [16, 16, 16, 24, 28, 32]
    assert [quick.replace(epochs=5).resolution(e) for e in range(5)] == [16, 16, 20, 24, 32]
    longer = quick.replace(epochs=10)
    sizes = [longer.resolution(e) for e in range(10)]
    assert sizes[:3] == [16, 16, 16] and sizes[-2:] == [32, 32] and sizes == sorted(sizes)
    assert all(s % 4 == 0 for s in sizes)
    # However short the run, the last epoch trains at the size the model is tested at.
    assert [quick.replace(epochs=2).resolution(e) for e in range(2)] == [16, 32]
    assert [quick.replace(res_ramp=(0, 0.75), epochs=4).resolution(e) for e in range(4)] == [
        16,
        20,
        24,
        32,
    ]
    assert {TrainConfig().resolution(e) for e in range(200)} == {32}


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ConfigError, match="baseline.*cosine.*small_batch"):
        get_preset("cosin")


def test_fraction_milestones_follow_an_epochs_override():
    assert get_preset("baseline").replace(epochs=100).milestone_epochs() == [50, 75]
    assert TrainConfig(epochs=10, milestones=(3, 6)).milestone_epochs() == [3, 6]


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"batch_size": -1}, "batch_size must be a positive integer"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"lr": float("nan")}, "lr must be positive"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of cosine, linear, multistep, none"),
        ({"milestones": (0.75, 0.5)}, "strictly increasing"),
        ({"milestones": (0.5, 150)}, "mix fractions and epochs"),
        ({"milestones": (100, 250)}, "not inside the 200-epoch run"),
        ({"model": "vgg"}, "unknown model 'vgg': choose one of"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"warmup_epochs": 500.0}, "warmup_epochs"),
        ({"min_res": 30, "res_ramp": (0, 0.5)}, "min_res must be a multiple of 4 from 8 to 32"),
        ({"min_res": 40}, "min_res must be a multiple of 4"),
        ({"min_res": 16}, "needs a ramp that ends inside the run"),
        ({"min_res": 16, "res_ramp": (0.5, 0.2)}, "is not a part of the run"),
        ({"min_res": 16, "res_ramp": (0, 1.5)}, "is not a part of the run"),
        ({"res_ramp": (0.5,)}, "needs two fractions"),
        ({"crop_padding": -1}, "crop_padding must be >= 0"),
    ],
)
def test_invalid_configs_are_refused_with_a_clear_message(changes, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig().replace(**changes)


def test_number_lists_parse_commas_or_spaces_and_refuse_words():
    assert parse_numbers("0.5,0.75", "milestones") == (0.5, 0.75)
    assert parse_numbers("100 150", "milestones") == (100.0, 150.0)
    with pytest.raises(ConfigError, match="malformed milestones"):
        parse_numbers("half,end", "milestones")


def test_config_round_trips_through_json(tmp_path):
    cfg = get_preset("cosine").replace(width=16, epochs=3)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config_file(tmp_path) == cfg
    with pytest.raises(ConfigError, match="unknown config field"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_a_model_of_the_other_family_takes_its_standard_width_unless_one_is_given():
    assert get_preset("baseline").replace(model="resnet56").width == 16
    assert get_preset("quick").replace(model="resnet20").width == 16
    assert get_preset("quick").replace(model="resnet20", width=32).width == 32
    assert get_preset("quick").replace(model="resnet34").width == 16, (
        "same family: the preset's width stays"
    )
    assert get_preset("quick").replace(model="resnet20").replace(model="resnet110").width == 16
    assert get_preset("quick").replace(model="resnet20").replace(model="resnet18").width == 64


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"model": "resnet56", "width": 9}, "width 9 does not fit resnet56.*even"),
        ({"model": "resnet_34"}, "did you mean resnet34"),
        ({"val_split": -1}, "val_split must be >= 0"),
        (
            {"train_subset": 5000, "val_split": 5000},
            "leaves none of the 5000 images of --train-subset",
        ),
    ],
)
def test_models_widths_and_splits_that_cannot_apply_are_refused(changes, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**changes)


def test_the_validation_split_is_part_of_the_recipe():
    base = get_preset("quick")
    assert "val_split" in base.recipe() and base.val_split == 0, "off in every preset"
    assert all(cfg.val_split == 0 for cfg in PRESETS.values())
    assert base.replace(val_split=5000).recipe() != base.recipe()
