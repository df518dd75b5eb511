"""What the time-to-accuracy options build around the model: BatchNorm momentum, the
optimizer's parameter groups (no weight decay on BatchNorm parameters and biases, a
learning-rate multiplier for BatchNorm biases), patch-whitening of the stem, the exponential
moving average of the weights that training evaluates, the views of multi-view
test-time augmentation, and the optimizer (SGD, or Muon for the filters and SGD for the rest).

Every option is off by default: with the defaults these functions build exactly what
fastres built before they existed (one parameter group, PyTorch's BatchNorm momentum, no
average, flip-only or no TTA).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .config import TrainConfig
from .muon import FilterMuon

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """PyTorch's BatchNorm ``momentum`` (the weight of each batch in the running statistics;
    0.1 by default, airbench uses 0.4 for short runs) on every BatchNorm layer."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups. The first holds the filters (and everything, when no
    option asks for more groups), so its ``lr`` is the run's learning rate."""
    filters, norm_weights, norm_biases, other_biases = [], [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, _NORMS):
                (norm_biases if name == "bias" else norm_weights).append(p)
            elif name == "bias":
                other_biases.append(p)
            else:
                filters.append(p)
    no_decay = not config.decay_norm_bias
    if not no_decay and config.bn_bias_lr == 1.0:
        return [{"params": list(model.parameters())}]
    groups = [
        {"params": filters},
        {
            "params": norm_weights + other_biases,
            "weight_decay": 0.0 if no_decay else config.weight_decay,
        },
        {
            "params": norm_biases,
            "lr": config.lr * config.bn_bias_lr,
            "weight_decay": 0.0 if no_decay else config.weight_decay,
        },
    ]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def whitening_filters(x: torch.Tensor, kernel: int, count: int, eps: float = 5e-4) -> torch.Tensor:
    """Patch-whitening filters for a stem convolution, from a batch ``x`` of normalised NCHW
    training images: the eigenvectors of the covariance of its ``kernel`` x ``kernel`` patches,
    largest eigenvalues first, each scaled by 1/sqrt(eigenvalue + eps) so its output has unit
    variance, followed by their negatives (the ReLU after the stem would otherwise drop half of
    each direction); ``count`` filters in all, shaped like the convolution's weight."""
    channels = x.shape[1]
    patches = (
        F.unfold(x.float(), kernel).transpose(1, 2).reshape(-1, channels * kernel * kernel).double()
    )
    patches = patches - patches.mean(0)
    covariance = patches.T @ patches / patches.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    k = min(count // 2, eigenvalues.numel())
    top = (eigenvectors[:, -k:] / torch.sqrt(eigenvalues[-k:] + eps)).T.flip(0)
    filters = torch.cat([top, -top]).float()
    return filters.reshape(2 * k, channels, kernel, kernel)


def whiten_stem(conv: nn.Conv2d, x: torch.Tensor) -> None:
    """Initialise ``conv`` (the stem) with patch-whitening filters from images ``x``, as airbench
    does; filters beyond twice the patch dimension keep their random initialisation."""
    filters = whitening_filters(x, conv.kernel_size[0], conv.out_channels)
    with torch.no_grad():
        conv.weight[: filters.shape[0]] = filters.to(conv.weight.dtype)
        if conv.bias is not None:
            conv.bias.zero_()


def build_optimizer(
    model: nn.Module, config: TrainConfig, *, compile_backend: str = "inductor"
) -> torch.optim.Optimizer:
    """SGD over :func:`param_groups`; with ``optimizer="muon"``, Muon for the filters (every
    parameter of two or more dimensions: convolutions and the classifier) at ``muon_lr`` and SGD
    for the rest, as one optimizer whose first group is SGD's (the run's ``lr``). Muon runs
    Newton-Schulz in ``muon_newton_schulz``'s form, compiled with ``compile_backend``."""
    groups = param_groups(model, config)
    sgd_options = {
        "lr": config.lr,
        "momentum": config.momentum,
        "nesterov": config.nesterov,
        "weight_decay": config.weight_decay,
    }
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, **sgd_options)
    filters = [p for p in model.parameters() if p.ndim >= 2]
    is_filter = {id(p) for p in filters}
    rest = [{**g, "params": [p for p in g["params"] if id(p) not in is_filter]} for g in groups]
    rest = [g for g in rest if g["params"]]
    muon = FilterMuon(
        filters,
        lr=config.muon_lr,
        momentum=config.muon_momentum,
        weight_decay=config.weight_decay,
        newton_schulz=config.muon_newton_schulz,
        compile_backend=compile_backend,
    )
    return Combined(torch.optim.SGD(rest, **sgd_options), muon)


class Combined(torch.optim.Optimizer):
    """Two optimizers stepped as one, so the learning-rate scheduler, the checkpoint and the
    training step keep dealing with a single optimizer: ``param_groups`` are both optimizers'
    own group dicts (a scheduler's lr changes reach them), ``state_dict`` holds both."""

    def __init__(self, first: torch.optim.Optimizer, second: torch.optim.Optimizer) -> None:
        # Deliberately not Optimizer.__init__: the parts own their parameters and state.
        self.parts = (first, second)
        self.defaults = dict(first.defaults)
        self.state = {}
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}
        self._optimizer_state_dict_post_hooks = {}
        self._optimizer_load_state_dict_pre_hooks = {}
        self._optimizer_load_state_dict_post_hooks = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        # Read through each time: loading a state dict gives the parts new group dicts.
        return [group for part in self.parts for group in part.param_groups]

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for part, state in zip(self.parts, state_dict["parts"], strict=True):
            part.load_state_dict(state)


def build_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s parameters and buffers (BatchNorm running
    statistics included), updated after every optimizer step; None when ``decay`` is 0."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def tta_views(x: torch.Tensor, translate: int, flip: bool) -> list[tuple[float, torch.Tensor]]:
    """(weight, view) pairs whose weighted logits make a test prediction: the image (and its
    mirror with ``flip``), and with ``translate`` > 0 the image shifted by that many pixels up
    and left and down and right (reflected at the border), each with its mirror; the
    untranslated pair weighs as much as the two translated ones together."""
    base = [x, x.flip(3)] if flip or translate else [x]
    if not translate:
        return [(1.0 / len(base), v) for v in base]
    t = translate
    padded = F.pad(x, (t, t, t, t), mode="reflect")
    h, w = x.shape[-2:]
    shifted = [padded[..., :h, :w], padded[..., 2 * t :, 2 * t :]]
    views = [(0.25, v) for v in base]
    views += [(0.125, v) for s in shifted for v in (s, s.flip(3))]
    return views
