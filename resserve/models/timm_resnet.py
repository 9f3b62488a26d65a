"""The timm ResNet family with timm's exact module and parameter names.

timm's checkpoints (``model.safetensors`` on the Hub, or its ``.pth`` releases) load into these
modules with ``strict=True`` and compute the same function in eval mode: ResNet-B (timm's
default, the torchvision layout), ResNet-D (deep 3x3 stem, average-pool downsample), squeeze-
excitation (SE-ResNet, SE-ResNeXt) and ResNet-RS (ResNet-D plus a strided conv in place of the
stem max pool, wider SE). Training-only parts (drop path, DropBlock, anti-aliasing options
resserve does not ship weights for) are left out: they hold no parameters and are the identity
in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """timm's channel rounding for SE widths (``round_limit=0``: never bumped up)."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class SEModule(nn.Module):
    """Squeeze-excitation: channel gates from the spatial mean, timm's ``SEModule``."""

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16) -> None:
        super().__init__()
        rd_channels = make_divisible(channels * rd_ratio)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=True)
        self.bn = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        x_se = self.fc2(self.act(self.bn(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * self.gate(x_se)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions, optional SE before the residual add."""

    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 cardinality: int = 1, base_width: int = 64, se_ratio: float | None = None) -> None:
        super().__init__()
        if cardinality != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports cardinality=1 and base_width=64")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SEModule(planes, se_ratio) if se_ratio else None
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.se is not None:
            out = self.se(out)
        return self.act2(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt, strided), 1x1 expand, optional SE."""

    expansion: int = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 cardinality: int = 1, base_width: int = 64, se_ratio: float | None = None) -> None:
        super().__init__()
        width = int(math.floor(planes * (base_width / 64)) * cardinality)
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, outplanes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.se = SEModule(outplanes, se_ratio) if se_ratio else None
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.act3(out + shortcut)


Block = type[BasicBlock] | type[Bottleneck]


def downsample_conv(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """ResNet-B shortcut: a strided 1x1 convolution."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


def downsample_avg(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """ResNet-D shortcut: 2x2 average pool, then a 1x1 convolution (no pixels skipped)."""
    pool: nn.Module = (nn.Identity() if stride == 1
                       else nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False))
    return nn.Sequential(pool, nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


class GlobalPool(nn.Module):
    """Average over space and flatten: timm's ``SelectAdaptivePool2d(pool_type='avg', flatten=True)``."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.flatten(self.pool(x))


@dataclass(frozen=True)
class TimmArchSpec:
    """How timm builds one architecture (the arguments of its ``resnet.py`` factories)."""

    block: Block
    layers: tuple[int, int, int, int]
    cardinality: int = 1
    base_width: int = 64
    deep_stem: bool = False  # three 3x3 convs of stem_width instead of one 7x7
    stem_width: int = 64
    avg_down: bool = False  # average-pool shortcut (ResNet-D)
    replace_stem_pool: bool = False  # a strided 3x3 conv + BN + ReLU instead of the max pool (ResNet-RS)
    se_ratio: float | None = None  # squeeze-excitation reduction ratio


class TimmResNet(nn.Module):
    """Stem, four stages, global pool, fully connected head; named as timm's ``ResNet``."""

    def __init__(self, spec: TimmArchSpec, num_classes: int = 1000) -> None:
        super().__init__()
        inplanes = spec.stem_width * 2 if spec.deep_stem else 64
        if spec.deep_stem:
            w = spec.stem_width
            self.conv1: nn.Module = nn.Sequential(
                nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                nn.Conv2d(w, inplanes, 3, padding=1, bias=False))
        else:
            self.conv1 = nn.Conv2d(3, inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.act1 = nn.ReLU(inplace=True)
        if spec.replace_stem_pool:
            self.maxpool: nn.Module = nn.Sequential(
                nn.Conv2d(inplanes, inplanes, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(inplanes), nn.ReLU(inplace=True))
        else:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        make_shortcut = downsample_avg if spec.avg_down else downsample_conv
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), spec.layers, strict=True)):
            stride = 1 if index == 0 else 2
            outplanes = planes * spec.block.expansion
            shortcut = make_shortcut(inplanes, outplanes, stride) if stride != 1 or inplanes != outplanes else None
            stage = [spec.block(inplanes, planes, stride, shortcut, spec.cardinality, spec.base_width, spec.se_ratio)]
            stage += [spec.block(outplanes, planes, 1, None, spec.cardinality, spec.base_width, spec.se_ratio)
                      for _ in range(1, blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
            inplanes = outplanes
        self.global_pool = GlobalPool()
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.global_pool(x))


_RS_SE = 0.25
_SE = 1.0 / 16
_D = {"deep_stem": True, "stem_width": 32, "avg_down": True}

TIMM_ARCHS: dict[str, TimmArchSpec] = {
    "resnet18": TimmArchSpec(BasicBlock, (2, 2, 2, 2)),
    "resnet34": TimmArchSpec(BasicBlock, (3, 4, 6, 3)),
    "resnet50": TimmArchSpec(Bottleneck, (3, 4, 6, 3)),
    "resnet101": TimmArchSpec(Bottleneck, (3, 4, 23, 3)),
    "resnet152": TimmArchSpec(Bottleneck, (3, 8, 36, 3)),
    "resnet18d": TimmArchSpec(BasicBlock, (2, 2, 2, 2), **_D),
    "resnet34d": TimmArchSpec(BasicBlock, (3, 4, 6, 3), **_D),
    "resnet26d": TimmArchSpec(Bottleneck, (2, 2, 2, 2), **_D),
    "resnet50d": TimmArchSpec(Bottleneck, (3, 4, 6, 3), **_D),
    "resnet101d": TimmArchSpec(Bottleneck, (3, 4, 23, 3), **_D),
    "resnet152d": TimmArchSpec(Bottleneck, (3, 8, 36, 3), **_D),
    "seresnet50": TimmArchSpec(Bottleneck, (3, 4, 6, 3), se_ratio=_SE),
    "seresnext50_32x4d": TimmArchSpec(Bottleneck, (3, 4, 6, 3), cardinality=32, base_width=4, se_ratio=_SE),
    "seresnext101_32x4d": TimmArchSpec(Bottleneck, (3, 4, 23, 3), cardinality=32, base_width=4, se_ratio=_SE),
    "resnetrs50": TimmArchSpec(Bottleneck, (3, 4, 6, 3), **_D, replace_stem_pool=True, se_ratio=_RS_SE),
    "resnetrs101": TimmArchSpec(Bottleneck, (3, 4, 23, 3), **_D, replace_stem_pool=True, se_ratio=_RS_SE),
    "resnetrs152": TimmArchSpec(Bottleneck, (3, 8, 36, 3), **_D, replace_stem_pool=True, se_ratio=_RS_SE),
}


def build_timm_resnet(arch: str, num_classes: int = 1000) -> TimmResNet:
    """Build an architecture by its timm name, randomly initialised."""
    try:
        spec = TIMM_ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown timm architecture {arch!r}; choose one of {', '.join(TIMM_ARCHS)}") from None
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return TimmResNet(spec, num_classes)

