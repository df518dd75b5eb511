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


@pytest.mark.parametrize("name,millions", [("resnet18", 11.2), ("resnet34", 21.3), ("resnet50", 23.5)])
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
