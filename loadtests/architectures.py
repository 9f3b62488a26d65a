"""The architecture table in docs/models-and-export.md: parameters and multiply-accumulates of every ResNet resserve builds.

Counted by torch's own ``FlopCounterMode`` at batch 1 (FLOPs / 2 =
multiply-accumulates, the "GFLOPS" column of torchvision's and timm's tables), at 224x224 and at
the evaluation size of the architecture's default weights.

    .venv/bin/python loadtests/architectures.py > /tmp/table.md
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from resserve.models.registry import ARCH_NAMES, build_model
from resserve.models.resnet import ARCHS
from resserve.models.timm_resnet import TIMM_ARCHS
from resserve.models.timm_weights import parse_timm_name
from resserve.models.weights import TORCHVISION_WEIGHTS


def gmacs(model: torch.nn.Module, size: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 2e9


def default_weights(arch: str) -> tuple[str, int]:
    """The weights name a user would start from, and the input size it is evaluated at."""
    if arch in TORCHVISION_WEIGHTS:
        member = max(TORCHVISION_WEIGHTS[arch])
        entry = TORCHVISION_WEIGHTS[arch][member]
        return f"torchvision {member}", entry.crop_size
    entry = parse_timm_name(f"timm:{arch}")
    return f"timm:{entry.name}", entry.input_size


def main() -> None:
    print("| architecture | family | params (M) | GMACs at 224 | default weights | eval size | GMACs there |")
    print("|---|---|---|---|---|---|---|")
    for arch in ARCH_NAMES:
        model = build_model(arch).eval()
        family = "torchvision, timm" if arch in ARCHS and arch in TIMM_ARCHS else (
            "torchvision" if arch in ARCHS else "timm")
        params = sum(p.numel() for p in model.parameters()) / 1e6
        name, size = default_weights(arch)
        at_224 = gmacs(model, 224)
        there = at_224 if size == 224 else gmacs(model, size)
        print(f"| `{arch}` | {family} | {params:.1f} | {at_224:.2f} | `{name}` | {size} | {there:.2f} |")


if __name__ == "__main__":
    main()
