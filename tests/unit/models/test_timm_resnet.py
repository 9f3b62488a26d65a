"""The timm family is timm's: same parameter names, shapes, counts and outputs; its weights table
carries timm's preprocessing.

The references (tests/fixtures/timm_reference.json, resserve/data/timm_pretrained.json) were
produced by the real timm 1.0.31 with tests/fixtures/make_timm_reference.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resserve.contract import imagenet_contract
from resserve.errors import WeightsError
from resserve.models.fold import fold_batchnorms
from resserve.models.registry import ARCH_NAMES, build_model
from resserve.models.resnet import ResNet
from resserve.models.timm_resnet import TIMM_ARCHS, TimmResNet, build_timm_resnet
from resserve.models.timm_weights import parse_timm_name, timm_weight_names
from resserve.models.weights import load_model, parse_torchvision_name
from tests.reference_weights import reference_input, seeded_state_dict

REFERENCE = json.loads((Path(__file__).parents[2] / "fixtures" / "timm_reference.json").read_text())

# timm's own counts (timm.create_model(...).parameters()), independent of the fixture.
EXPECTED_PARAMS = {
    "resnet50": 25_557_032,
    "resnet26d": 16_014_408,
    "resnet50d": 25_576_264,
    "seresnet50": 28_088_024,
    "seresnext50_32x4d": 27_559_896,
    "resnetrs50": 35_691_912,
    "resnetrs101": 63_618_696,
}
# One architecture per feature: ResNet-B basic and bottleneck, ResNet-D deep stem and avg-pool
# shortcut with both blocks, SE, grouped SE, ResNet-RS stem pool conv.
LOGIT_ARCHS = ("resnet18", "resnet50", "resnet18d", "resnet26d", "seresnet50", "seresnext50_32x4d", "resnetrs50")


def meta_model(arch: str, num_classes: int = 1000) -> TimmResNet:
    with torch.device("meta"):
        return build_timm_resnet(arch, num_classes)


def test_the_reference_covers_every_architecture() -> None:
    assert sorted(REFERENCE["archs"]) == sorted(TIMM_ARCHS)


@pytest.mark.parametrize("arch", sorted(EXPECTED_PARAMS))
def test_parameter_count_equals_timm(arch: str) -> None:
    count = sum(p.numel() for p in meta_model(arch).parameters())
    assert count == EXPECTED_PARAMS[arch] == REFERENCE["archs"][arch]["num_params"]


@pytest.mark.parametrize("arch", sorted(TIMM_ARCHS))
def test_state_dict_keys_and_shapes_equal_timm(arch: str) -> None:
    model = meta_model(arch)
    assert sum(p.numel() for p in model.parameters()) == REFERENCE["archs"][arch]["num_params"]
    # Lists, not dicts: the key order is what the seeded recipe below depends on.
    assert list({k: list(v.shape) for k, v in model.state_dict().items()}.items()) == list(
        REFERENCE["archs"][arch]["state_dict"].items())


@pytest.mark.parametrize("arch", LOGIT_ARCHS)
def test_logits_equal_timm_for_the_same_weights(arch: str) -> None:
    model = build_timm_resnet(arch, num_classes=10)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(seeded_state_dict(shapes, seed=0), strict=True)
    with torch.no_grad():
        ours = model.eval()(reference_input())
    reference = torch.tensor(REFERENCE["logits"][arch])
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet152"])
def test_shared_names_are_the_torchvision_layout(arch: str) -> None:
    """timm's ResNet-B is torchvision's network: one checkpoint fits both classes."""
    with torch.device("meta"):
        torchvision_keys = {k: v.shape for k, v in build_model(arch).state_dict().items()}
    assert torchvision_keys == {k: v.shape for k, v in meta_model(arch).state_dict().items()}


def test_registry_picks_the_family() -> None:
    assert isinstance(build_model("resnet18", 4), ResNet)
    assert isinstance(build_model("resnet18", 4, timm=True), TimmResNet)
    assert isinstance(build_model("resnet26d", 4), TimmResNet)
    assert ARCH_NAMES.count("resnet50") == 1 and "resnetrs101" in ARCH_NAMES
    with pytest.raises(ValueError, match="unknown architecture 'resnet51d'"):
        build_model("resnet51d")


@pytest.mark.parametrize("arch", ["resnet26d", "seresnet50", "resnetrs50"])
def test_every_batchnorm_folds_with_parity(arch: str) -> None:
    model = build_timm_resnet(arch, num_classes=10)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(seeded_state_dict(shapes, seed=2), strict=True)
    model.eval()
    folded, count = fold_batchnorms(model)
    expected = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert count == expected > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


def test_rsb_weights_carry_timms_eval_preprocessing() -> None:
    entry = parse_timm_name("timm:resnet50.a1_in1k")
    assert entry.arch == "resnet50" and entry.hf_hub_id == "timm/resnet50.a1_in1k"
    # timm evaluates a1 at its test size 288 with test_crop_pct 1.0, bicubic.
    contract = entry.contract
    assert (contract.resize_size, contract.crop_size, contract.interpolation) == (288, 288, "bicubic")
    assert entry.hub_url == "https://huggingface.co/timm/resnet50.a1_in1k/resolve/main/model.safetensors"


def test_crop_pct_sets_the_resize() -> None:
    # resnet50d.ra2: test size 288, test_crop_pct 0.95 -> shorter side floor(288 / 0.95) = 303.
    contract = parse_timm_name("timm:resnet50d.ra2_in1k").contract
    assert (contract.resize_size, contract.crop_size, contract.interpolation) == (303, 288, "bicubic")
    # ResNet-RS has no test crop pct: crop_pct 0.91 applies to its test size 224.
    assert parse_timm_name("timm:resnetrs50.tf_in1k").contract.resize_size == 246


def test_timms_copy_of_torchvision_v2_weights_preprocesses_as_torchvision() -> None:
    timm_contract = parse_timm_name("timm:resnet50.tv2_in1k").contract
    assert timm_contract == parse_torchvision_name("torchvision:ResNet50_Weights.IMAGENET1K_V2").contract


def test_a_bare_model_name_is_timms_default_tag() -> None:
    assert parse_timm_name("timm:resnet50").name == "resnet50.a1_in1k"
    assert parse_timm_name("timm:resnetrs101").name == "resnetrs101.tf_in1k"


def test_the_table_holds_classifiers_of_known_architectures() -> None:
    names = timm_weight_names()
    assert len(names) == 70
    for name in names:
        entry = parse_timm_name(name)
        assert entry.arch in TIMM_ARCHS and entry.num_classes == 1000, name
    assert parse_timm_name("timm:resnet50.gluon_in1k").contract.interpolation == "bicubic"
    assert imagenet_contract().interpolation == "bilinear"


def test_unknown_weights_name_the_known_tags() -> None:
    with pytest.raises(WeightsError, match="unknown timm weights 'timm:resnet50d.b9_in1k'.*resnet50d.ra2_in1k"):
        parse_timm_name("timm:resnet50d.b9_in1k")
    with pytest.raises(WeightsError, match="architectures: resnet18"):
        parse_timm_name("timm:vit_base_patch16_224.augreg_in1k")


def test_a_timm_checkpoint_file_loads_strict(tmp_path: Path) -> None:
    source = build_timm_resnet("resnet26d", num_classes=7)
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = load_model("resnet26d", path)
    assert isinstance(loaded.model, TimmResNet) and loaded.num_classes == 7 and loaded.source.kind == "file"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), source.eval()(x))


def test_a_checkpoint_of_another_architecture_is_named(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(build_timm_resnet("resnet50").state_dict(), str(path))
    with pytest.raises(WeightsError, match=r"does not fit.*missing .*conv1\.0\.weight"):
        load_model("resnet50d", path)


def test_weights_for_another_arch_are_refused() -> None:
    with pytest.raises(WeightsError, match="timm:resnet50.a1_in1k are weights for resnet50, not resnet50d"):
        load_model("resnet50d", "timm:resnet50.a1_in1k")


def test_the_docs_list_every_architecture_with_its_parameter_count() -> None:
    readme = (Path(__file__).parents[3] / "docs" / "models-and-export.md").read_text()
    for arch in ARCH_NAMES:
        with torch.device("meta"):
            params = sum(p.numel() for p in build_model(arch).parameters()) / 1e6
        assert f"| `{arch}` |" in readme and f"| {params:.1f} |" in readme.split(f"| `{arch}` |")[1].split("\n")[0]
