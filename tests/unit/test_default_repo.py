"""The shipped model repository is valid and serves what the README promises."""

from __future__ import annotations

from pathlib import Path

from resserve.config import load_model_config

REPO = Path(__file__).parents[2] / "model_repo"


def test_every_shipped_config_loads() -> None:
    names = sorted(p.parent.name for p in REPO.glob("*/config.yaml"))
    assert {"resnet50", "resnet18", "resnet101"} <= set(names)
    for arch in ("resnet50", "resnet18"):
        assert {arch, f"{arch}-bf16", f"{arch}-int8"} <= set(names)
    for name in names:
        config = load_model_config(REPO / name / "config.yaml")
        assert config.name == name
        # Variants are named <arch>-<precision>[-<engine>]; fp32 ones after the architecture alone.
        arch, *rest = name.split("-")
        assert config.source.arch == arch
        assert config.precision == (rest[0] if rest else "fp32")
        if len(rest) > 1:
            assert config.engine == rest[1]


def test_default_model_uses_official_weights_with_an_announced_fallback() -> None:
    config = load_model_config(REPO / "resnet50" / "config.yaml")
    assert config.source.weights == "torchvision:ResNet50_Weights.IMAGENET1K_V2"
    assert config.source.fallback_random and config.engine == "onnxruntime" and config.precision == "fp32"


def test_timm_example_names_timm_weights_and_their_preprocessing() -> None:
    config = load_model_config(REPO / "resnet50d" / "config.yaml")
    assert config.source.arch == "resnet50d" and config.source.weights == "timm:resnet50d.ra2_in1k"
    assert config.source.fallback_random and config.preprocess is None  # the weights' own contract
