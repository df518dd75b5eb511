"""ResNet-18/34/50, CIFAR variant.

The CIFAR variant differs from the ImageNet one only in the stem: a 3x3 convolution
with stride 1 and no max pool, because 32x32 inputs cannot afford the 4x downsampling
of the 7x7/stride-2 stem. Blocks, stage layout and projection shortcuts follow
torchvision's ``resnet.py`` (He et al., 2016), with an injectable norm layer.

``norm="none"`` is the BatchNorm ablation: every BatchNorm becomes an identity and the
convolutions that fed it get a bias instead, so the layer keeps an affine offset.
Weights use PyTorch's default initialisation, as the original CIFAR study's scripts did.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .errors import FastresError

NORMS = ("batch", "none")


def _norm_factory(norm: str) -> Callable[[int], nn.Module]:
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "none":
        return lambda channels: nn.Identity()
    raise FastresError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")


def _conv(cin: int, cout: int, kernel: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)


def _shortcut(cin: int, cout: int, stride: int, norm_layer, bias: bool) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(_conv(cin, cout, 1, stride, bias), norm_layer(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, norm_layer, bias: bool) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv(cin, planes, 3, stride, bias)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv(planes, cout, 3, 1, bias)
        self.bn2 = norm_layer(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride, norm_layer, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand by 4 (ResNet-50); stride on the 3x3 as in torchvision."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, norm_layer, bias: bool) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv(cin, planes, 1, 1, bias)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv(planes, planes, 3, stride, bias)
        self.bn2 = norm_layer(planes)
        self.conv3 = _conv(planes, cout, 1, 1, bias)
        self.bn3 = norm_layer(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride, norm_layer, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, four stages at width w, 2w, 4w, 8w, global pool, linear head."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        *,
        num_classes: int = 10,
        norm: str = "batch",
        width: int = 64,
    ) -> None:
        super().__init__()
        norm_layer = _norm_factory(norm)
        bias = norm == "none"
        self.stem = nn.Sequential(_conv(3, width, 3, 1, bias), norm_layer(width), nn.ReLU(inplace=True))
        stages = []
        cin = width
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            stage = []
            for b in range(blocks):
                stage.append(block(cin, planes, stride if b == 0 else 1, norm_layer, bias))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# name -> (block, blocks per stage); the registry is what build_model and the CLI list.
MODELS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def model_names() -> list[str]:
    return list(MODELS)


def check_model_name(name: str) -> str:
    """``name`` if the registry has it; otherwise an error listing the models there are."""
    if name not in MODELS:
        raise FastresError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return name


def build_model(name: str, *, num_classes: int = 10, norm: str = "batch", width: int = 64) -> ResNet:
    """Build a CIFAR ResNet by name; ``width`` is the first stage's channel count (64 = full size)."""
    check_model_name(name)
    if width < 1:
        raise FastresError(f"width must be a positive integer, got {width}")
    block, layers = MODELS[name]
    return ResNet(block, layers, num_classes=num_classes, norm=norm, width=width)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
