"""Every architecture resserve builds, by name: torchvision's family and timm's.

A name both families use (``resnet50``) is the same network with the same parameter names, so
torchvision's class builds it unless timm's module names are asked for (timm weights).
"""

from __future__ import annotations

from torch import nn

from resserve.models.resnet import ARCHS, build_resnet
from resserve.models.timm_resnet import TIMM_ARCHS, build_timm_resnet

ARCH_NAMES: tuple[str, ...] = (*ARCHS, *(name for name in TIMM_ARCHS if name not in ARCHS))


def build_model(arch: str, num_classes: int = 1000, *, timm: bool = False) -> nn.Module:
    """Build ``arch`` randomly initialised; ``timm`` picks timm's modules for a shared name."""
    if arch not in ARCH_NAMES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCH_NAMES)}")
    if timm or arch not in ARCHS:
        return build_timm_resnet(arch, num_classes)
    return build_resnet(arch, num_classes)
