"""Fold every BatchNorm into the convolution before it, in torch, with a numerical check.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution
with ``W' = W * g / sqrt(v + e)`` and ``b' = beta + (b - mu) * g / sqrt(v + e)``. The folded
graph is the same on every engine (TensorRT INT8 calibration and third-party runtimes see no
BatchNorm), and the check proves the rewrite did not change the function. It lives with the
models because both the ONNX export (:mod:`resserve.builder.export`) and the torch engine fold.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from resserve.errors import ExportError


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution computing ``bn(conv(x))`` in eval mode (float64 arithmetic)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        folded.weight.copy_((w * scale.reshape(-1, 1, 1, 1)).to(conv.weight.dtype))
        folded.bias.copy_((beta + (b - bn.running_mean.double()) * scale).to(conv.weight.dtype))
    return folded


def fold_batchnorms(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with each ``Conv2d`` directly followed by a ``BatchNorm2d`` folded.

    "Directly followed" means registration order inside one parent module (``conv1``/``bn1``,
    ``downsample.0``/``downsample.1``), which is how torchvision's and timm's ResNets (and most
    CNNs) are written, a ``Sequential`` ending in a ``Conv2d`` counting as that conv; the BatchNorm becomes ``nn.Identity``. Returns the copy and the number of folds.
    The model must be in eval mode: folding a training-mode BatchNorm would change the function.
    """
    if model.training:
        raise ExportError("fold_batchnorms needs an eval-mode model: call model.eval() first")
    folded = copy.deepcopy(model)
    count = 0
    for parent in folded.modules():
        names = list(parent._modules)
        for first, second in itertools.pairwise(names):
            owner, name = _last_conv(parent, first)
            bn = parent._modules[second]
            if owner is not None and isinstance(bn, nn.BatchNorm2d):
                owner._modules[name] = fold_conv_bn(owner._modules[name], bn)  # type: ignore[arg-type]
                parent._modules[second] = nn.Identity()
                count += 1
    remaining = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    if remaining:
        raise ExportError(f"{remaining} BatchNorm layers do not directly follow a Conv2d and were not folded")
    return folded, count


def _last_conv(parent: nn.Module, name: str) -> tuple[nn.Module | None, str]:
    """The module holding the ``Conv2d`` that ``parent.<name>`` ends in, and its name there.

    Either the child itself, or the last module of a ``Sequential`` child, recursively: timm's
    deep stem is ``conv1 = Sequential(..., Conv2d)`` followed by ``bn1`` on the parent.
    """
    child = parent._modules[name]
    while isinstance(child, nn.Sequential) and len(child):
        parent, name = child, list(child._modules)[-1]
        child = parent._modules[name]
    return (parent, name) if isinstance(child, nn.Conv2d) else (None, name)

