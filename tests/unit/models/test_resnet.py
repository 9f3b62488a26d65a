"""The ResNet family is torchvision's: same parameter names, shapes, counts and outputs.

The reference (tests/fixtures/torchvision_reference.json) was produced by the real torchvision
0.28 with tests/fixtures/make_torchvision_reference.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resserve.models.resnet import ARCHS, build_resnet
from tests.reference_weights import reference_input, seeded_state_dict

REFERENCE = json.loads((Path(__file__).parents[2] / "fixtures" / "torchvision_reference.json").read_text())

# The counts the issue states, independent of the fixture.
EXPECTED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
}


def meta_model(arch: str, num_classes: int = 1000) -> torch.nn.Module:
    """Shapes without memory or init cost: counting 127M parameters takes no time."""
    with torch.device("meta"):
        return build_resnet(arch, num_classes)


@pytest.mark.parametrize("arch", sorted(EXPECTED_PARAMS))
def test_parameter_count_equals_torchvision(arch: str) -> None:
    count = sum(p.numel() for p in meta_model(arch).parameters())
    assert count == EXPECTED_PARAMS[arch] == REFERENCE["archs"][arch]["num_params"]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_state_dict_keys_and_shapes_equal_torchvision(arch: str) -> None:
    ours = {k: list(v.shape) for k, v in meta_model(arch).state_dict().items()}
    assert ours == REFERENCE["archs"][arch]["state_dict"]


def test_torchvision_layout_state_dict_loads_strict() -> None:
    model = build_resnet("resnet50")
    state = seeded_state_dict(REFERENCE["archs"]["resnet50"]["state_dict"], seed=3)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("arch", sorted(REFERENCE["logits"]))
def test_logits_equal_torchvision_for_the_same_weights(arch: str) -> None:
    classes = len(REFERENCE["logits"][arch][0])
    model = build_resnet(arch, num_classes=classes)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(seeded_state_dict(shapes, seed=0), strict=True)
    model.eval()
    x = reference_input()
    with torch.no_grad():
        ours = model(x)
    reference = torch.tensor(REFERENCE["logits"][arch])
    # Same ops in the same order: only float summation order may differ between builds.
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


def test_num_classes_sets_the_head() -> None:
    model = meta_model("resnet18", num_classes=37)
    assert model.fc.out_features == 37
    assert model.fc.in_features == 512


def test_unknown_architecture_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet19'.*resnet18"):
        build_resnet("resnet19")
