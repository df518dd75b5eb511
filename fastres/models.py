"""ResNet-18/34/50 (CIFAR variant of the ImageNet models) and the paper's CIFAR
ResNet-20/32/44/56/110.

ResNet-18/34/50: the CIFAR variant differs from the ImageNet one only in the stem: a 3x3 convolution
with stride 1 and no max pool, because 32x32 inputs cannot afford the 4x downsampling
of the 7x7/stride-2 stem. Blocks, stage layout and projection shortcuts follow
torchvision's ``resnet.py`` (He et al., 2016), with an injectable norm layer.

``norm="none"`` is the BatchNorm ablation: every BatchNorm becomes an identity and the
convolutions that fed it get a bias instead, so the layer keeps an affine offset.
ResNet-18/34/50 keep PyTorch's default initialisation, as the original CIFAR study's scripts did.

ResNet-20/32/44/56/110 are the networks of He et al.'s CIFAR-10 depth experiments (section
4.2): a 3x3 stem, three stages of n BasicBlocks each at w, 2w and 4w channels (w = 16 in the
paper) on 32, 16 and 8 pixels, global pool and a linear head; depth 6n + 2. Their shortcuts
are identities, "option A": where a stage halves the size and doubles the channels, the
shortcut takes every second pixel and pads the new channels with zeros, so it has no
parameters. Convolutions use the paper's initialisation (He et al., 2015: kaiming normal,
fan_out, for ReLU, as torchvision does), BatchNorm starts at weight 1 and bias 0, and the
linear head keeps PyTorch's default.

``width`` is the first stage's channel count in both families, doubled at every later stage:
64 is the standard ResNet-18/34/50 and 16 the paper's CIFAR ResNets (``standard_width``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
import torch.nn.functional as F
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
        self.stem = nn.Sequential(
            _conv(3, width, 3, 1, bias), norm_layer(width), nn.ReLU(inplace=True)
        )
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


class PadShortcut(nn.Module):
    """The paper's option-A shortcut: every second pixel, and the extra channels as zeros split
    evenly on both sides (as the reference implementations pad); no parameters."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, (cout - cin) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))


class CifarBlock(nn.Module):
    """Two 3x3 convolutions with an option-A identity shortcut (ResNet-20 to ResNet-110)."""

    def __init__(self, cin: int, cout: int, stride: int, norm_layer, bias: bool) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, stride, bias)
        self.bn1 = norm_layer(cout)
        self.conv2 = _conv(cout, cout, 3, 1, bias)
        self.bn2 = norm_layer(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Identity() if stride == 1 and cin == cout else PadShortcut(cin, cout, stride)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet of depth 6n + 2: 3x3 stem, three stages of n blocks at width
    w, 2w, 4w, global pool, linear head."""

    def __init__(
        self, n: int, *, num_classes: int = 10, norm: str = "batch", width: int = 16
    ) -> None:
        super().__init__()
        norm_layer = _norm_factory(norm)
        bias = norm == "none"
        self.stem = nn.Sequential(
            _conv(3, width, 3, 1, bias), norm_layer(width), nn.ReLU(inplace=True)
        )
        stages = []
        cin = width
        for i in range(3):
            cout = width * 2**i
            stages.append(
                nn.Sequential(
                    *(
                        CifarBlock(
                            cin if b == 0 else cout,
                            cout,
                            2 if i and b == 0 else 1,
                            norm_layer,
                            bias,
                        )
                        for b in range(n)
                    )
                )
            )
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# The registry build_model and the CLI list. ImageNet-style: name -> (block, blocks per stage);
# the paper's CIFAR ResNets: name -> n, the blocks per stage of depth 6n + 2.
IMAGENET_MODELS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
CIFAR_MODELS: dict[str, int] = {
    "resnet20": 3,
    "resnet32": 5,
    "resnet44": 7,
    "resnet56": 9,
    "resnet110": 18,
}
MODELS: tuple[str, ...] = (*IMAGENET_MODELS, *CIFAR_MODELS)


def model_names() -> list[str]:
    return list(MODELS)


def family(name: str) -> str:
    """``imagenet`` (ResNet-18/34/50, four stages) or ``cifar`` (the paper's, three stages)."""
    return "cifar" if check_model_name(name) in CIFAR_MODELS else "imagenet"


def standard_width(name: str) -> int:
    """The first stage's channels of the published model: 64 (ResNet-18/34/50) or 16 (ResNet-20
    to 110)."""
    return 16 if family(name) == "cifar" else 64


def check_model_name(name: str) -> str:
    """``name`` if the registry has it; otherwise an error listing the models there are
    (and the closest one, for a typo)."""
    if name not in MODELS:
        close = difflib.get_close_matches(str(name).lower(), MODELS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise FastresError(f"unknown model {name!r}: {hint}choose one of {', '.join(MODELS)}")
    return name


def check_width(name: str, width: int) -> int:
    """``width`` if model ``name`` can take it; otherwise an error saying what fits."""
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise FastresError(
            f"width must be a positive integer, got {width!r}: pass --width N with N >= 1"
        )
    if family(name) == "cifar" and width % 2:
        raise FastresError(
            f"width {width} does not fit {name}: its option-A shortcuts pad the doubled channels "
            "with zeros split "
            "evenly on both sides, so the width must be even (16 is the paper's): pass e.g. "
            f"--width {width + 1}"
        )
    return width


def build_model(
    name: str, *, num_classes: int = 10, norm: str = "batch", width: int | None = None
) -> ResNet | CifarResNet:
    """Build a ResNet by name; ``width`` is the first stage's channel count (None: the
    published model's, ``standard_width``)."""
    width = check_width(name, standard_width(name) if width is None else width)
    if name in CIFAR_MODELS:
        return CifarResNet(CIFAR_MODELS[name], num_classes=num_classes, norm=norm, width=width)
    block, layers = IMAGENET_MODELS[name]
    return ResNet(block, layers, num_classes=num_classes, norm=norm, width=width)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
