import pytest
import torch
from torch import nn

from fastres import FastresError, build_model, model_names
from fastres.models import count_parameters


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_forward_backward_every_model(name, norm):
    torch.manual_seed(0)
    model = build_model(name, width=8, norm=norm).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out = model(x)
    assert out.shape == (4, 10)
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    "name,millions", [("resnet18", 11.2), ("resnet34", 21.3), ("resnet50", 23.5)]
)
def test_full_width_parameter_counts_match_published(name, millions):
    assert round(count_parameters(build_model(name)) / 1e6, 1) == millions


def test_cifar_stem_keeps_resolution_and_no_maxpool():
    model = build_model("resnet18", width=8)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    stem_conv = model.stem[0]
    assert stem_conv.kernel_size == (3, 3) and stem_conv.stride == (1, 1)
    feats = model.layer1(model.stem(torch.randn(1, 3, 32, 32)))
    assert feats.shape[-2:] == (32, 32)


def test_projection_shortcut_is_1x1_conv_without_bias_plus_batchnorm():
    block = build_model("resnet18").layer2[0]
    conv, bn = block.shortcut
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and conv.bias is None
    assert isinstance(bn, nn.BatchNorm2d)
    assert isinstance(build_model("resnet18").layer1[0].shortcut, nn.Identity)


def test_bottleneck_expands_by_four():
    model = build_model("resnet50")
    assert model.fc.in_features == 2048


def test_no_batchnorm_removes_every_batchnorm_and_adds_conv_bias():
    model = build_model("resnet50", norm="none", width=8)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_width_scales_all_stages():
    model = build_model("resnet18", width=16)
    assert [model.layer1[0].conv1.out_channels, model.layer4[0].conv1.out_channels] == [16, 128]
    assert count_parameters(model) < count_parameters(build_model("resnet18")) / 10


def test_unknown_model_lists_valid_names():
    with pytest.raises(FastresError, match="resnet18, resnet34, resnet50"):
        build_model("resnet101")


@pytest.mark.parametrize(
    "typo,meant", [("resnet65", "resnet56"), ("ResNet20", "resnet20"), ("resnet111", "resnet110")]
)
def test_a_model_name_close_to_a_known_one_names_it(typo, meant):
    with pytest.raises(FastresError, match=f"did you mean {meant}\\?"):
        build_model(typo)


@pytest.mark.parametrize(
    "name,n,millions",
    [
        ("resnet20", 3, 0.27),
        ("resnet32", 5, 0.46),
        ("resnet44", 7, 0.66),
        ("resnet56", 9, 0.85),
        ("resnet110", 18, 1.7),
    ],
)
def test_cifar_resnets_have_the_papers_parameter_counts(name, n, millions):
    params = count_parameters(build_model(name))
    assert params == 97_216 * n - 21_926  # depth 6n + 2, 10 classes, option-A shortcuts
    assert round(params / 1e6, 2 if millions < 1 else 1) == millions


def test_cifar_resnet_layout_three_stages_of_16_32_64_on_32_16_8_pixels():
    model = build_model("resnet56")
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [9, 9, 9]
    x = model.stem(torch.randn(1, 3, 32, 32))
    shapes = []
    for stage in (model.layer1, model.layer2, model.layer3):
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert model.fc.in_features == 64
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 56  # every weighted layer: the convolutions and the head


def test_option_a_shortcut_subsamples_and_zero_pads_without_parameters():
    block = build_model("resnet20").layer2[0]
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0
    x = torch.randn(2, 16, 32, 32)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 16, 16)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()
    assert isinstance(build_model("resnet20").layer1[0].shortcut, nn.Identity)


def test_cifar_resnets_use_he_initialisation():
    torch.manual_seed(0)
    conv = build_model("resnet110").layer3[5].conv1  # 64 -> 64, 3x3: fan_out = 576
    assert abs(conv.weight.std().item() - (2 / 576) ** 0.5) < 0.003
    assert (
        abs(build_model("resnet18").layer4[0].conv2.weight.std().item() - (2 / 4608) ** 0.5) > 0.005
    )


def test_width_is_the_first_stage_in_both_families_with_each_familys_standard():
    assert build_model("resnet20").layer1[0].conv1.out_channels == 16
    assert build_model("resnet18", width=16).layer1[0].conv1.out_channels == 16
    wide = build_model("resnet20", width=32)
    assert [wide.layer1[0].conv1.out_channels, wide.layer3[0].conv1.out_channels] == [32, 128]
    with pytest.raises(FastresError, match="width 15 does not fit resnet20.*even"):
        build_model("resnet20", width=15)
    assert build_model("resnet18", width=15).layer1[0].conv1.out_channels == 15
