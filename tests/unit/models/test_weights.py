"""Weights sources: files (never unpickling code), torchvision names with verified download, random init."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resserve.errors import WeightsError
from resserve.models.resnet import build_resnet
from resserve.models.weights import (
    TorchvisionWeights,
    cached_torchvision_weights,
    fetch_torchvision_weights,
    load_model,
    load_model_or_fallback,
    parse_torchvision_name,
    read_state_dict,
)
from resserve.synthetic import synthetic_batch
from tests.server_harness import static_file_server


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESSERVE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving a folder: the download path, minus the internet."""
    root = tmp_path / "served"
    root.mkdir()
    with static_file_server(root) as url:
        yield url, root


def small_checkpoint(path: Path) -> str:
    """A resnet18 state dict with a 10-class head; returns its sha256."""
    torch.manual_seed(0)
    torch.save(build_resnet("resnet18", num_classes=10).state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_torchvision_names_resolve_to_official_files() -> None:
    entry = parse_torchvision_name("torchvision:ResNet50_Weights.IMAGENET1K_V2")
    assert entry.file_name == "resnet50-11ad3fa6.pth"
    assert entry.sha256_prefix == "11ad3fa6"
    assert entry.url == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    assert entry.contract.resize_size == 232 and entry.contract.crop_size == 224
    assert parse_torchvision_name("ResNet18_Weights.DEFAULT").name == "IMAGENET1K_V1"
    assert parse_torchvision_name("ResNeXt101_64X4D_Weights.IMAGENET1K_V1").contract.resize_size == 232


@pytest.mark.parametrize(
    ("name", "message"),
    [("torchvision:ResNet99_Weights.IMAGENET1K_V1", "unknown torchvision weights enum"),
     ("torchvision:ResNet18_Weights.IMAGENET1K_V2", "has no member 'IMAGENET1K_V2'")],
)
def test_bad_torchvision_names(name: str, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        parse_torchvision_name(name)


def test_offline_download_error_says_which_file_to_place_where(monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 9 on loopback: nothing listens, so the connection is refused at once, as offline.
    monkeypatch.setenv("RESSERVE_WEIGHTS_BASE_URL", "http://127.0.0.1:9/models")
    with pytest.raises(WeightsError) as info:
        load_model("resnet50", "torchvision:ResNet50_Weights.IMAGENET1K_V2")
    text = str(info.value)
    assert "resnet50-11ad3fa6.pth" in text and "11ad3fa6" in text
    assert "cache" in text and "weights" in text  # the target folder is named
    assert not list(Path(text.split(" at ")[1].split(",")[0]).parent.glob("*.part"))


def test_download_verifies_the_sha256_prefix(file_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    base, root = file_server
    monkeypatch.setenv("RESSERVE_WEIGHTS_BASE_URL", base)
    digest = small_checkpoint(root / "good.pth")
    (root / f"resnet18-{digest[:8]}.pth").write_bytes((root / "good.pth").read_bytes())
    good = TorchvisionWeights("resnet18", "TEST", f"resnet18-{digest[:8]}.pth", 256)
    path = fetch_torchvision_weights(good)
    assert path.read_bytes() == (root / "good.pth").read_bytes()
    assert fetch_torchvision_weights(good) == path  # second call: the cache, no download

    (root / "resnet18-00000000.pth").write_bytes(b"not the official bytes")
    bad = TorchvisionWeights("resnet18", "TEST", "resnet18-00000000.pth", 256)
    with pytest.raises(WeightsError, match="expected a prefix of 00000000"):
        fetch_torchvision_weights(bad, directory=tmp_path / "dl")
    assert list((tmp_path / "dl").iterdir()) == []  # nothing unverified is kept


def test_downloaded_weights_are_looked_for_in_resserves_cache_then_torch_hubs(tmp_path: Path) -> None:
    entry = parse_torchvision_name("torchvision:ResNet18_Weights.IMAGENET1K_V1")
    assert cached_torchvision_weights(entry) is None
    hub_copy = tmp_path / "hub" / "checkpoints" / entry.file_name
    hub_copy.parent.mkdir(parents=True)
    hub_copy.write_bytes(b"placeholder")
    assert cached_torchvision_weights(entry) == hub_copy
    ours = tmp_path / "cache" / "weights" / entry.file_name
    ours.parent.mkdir(parents=True)
    ours.write_bytes(b"placeholder")
    assert cached_torchvision_weights(entry) == ours
    assert cached_torchvision_weights(entry, directory=tmp_path / "elsewhere") == hub_copy


def test_fallback_to_random_weights_only_when_asked_and_announced(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    absent = tmp_path / "absent.pth"
    with pytest.raises(WeightsError, match="does not exist"):
        load_model_or_fallback("resnet18", absent, seed=2)
    with caplog.at_level(logging.WARNING):
        loaded, fell_back = load_model_or_fallback("resnet18", absent, seed=2, fallback_random=True, what="model m")
    assert fell_back and loaded.source.is_random and loaded.source.seed == 2
    assert f"model m: cannot use weights {absent}" in caplog.text and "RANDOM weights" in caplog.text
    small_checkpoint(tmp_path / "ok.pth")
    loaded, fell_back = load_model_or_fallback("resnet18", tmp_path / "ok.pth", fallback_random=True)
    assert not fell_back and loaded.source.kind == "file" and loaded.num_classes == 10


def test_pth_file_with_fine_tuned_head(tmp_path: Path) -> None:
    digest = small_checkpoint(tmp_path / "ft.pth")
    loaded = load_model("resnet18", tmp_path / "ft.pth")
    assert loaded.num_classes == 10
    assert loaded.source.kind == "file" and loaded.source.sha256 == digest
    assert not loaded.model.training


def test_safetensors_and_wrapped_checkpoints(tmp_path: Path) -> None:
    state = build_resnet("resnet18", num_classes=4).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "m.safetensors"))
    assert load_model("resnet18", tmp_path / "m.safetensors").num_classes == 4
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "w.pth")
    assert set(read_state_dict(tmp_path / "w.pth")) == set(state)


class NotATensor:
    """Anything a pickle could smuggle in."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"x": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="never unpickles"):
        read_state_dict(tmp_path / "evil.pth")


def test_wrong_architecture_names_missing_keys(tmp_path: Path) -> None:
    torch.save(build_resnet("resnet18").state_dict(), tmp_path / "r18.pth")
    expected = r"loaded as resnet50\) does not fit the architecture: missing \d+ keys.*shape mismatch"
    with pytest.raises(WeightsError, match=expected):
        load_model("resnet50", tmp_path / "r18.pth")


def test_missing_file_and_ambiguous_sources(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_model("resnet18", tmp_path / "absent.pth")
    with pytest.raises(WeightsError, match="exactly one"):
        load_model("resnet18")
    with pytest.raises(WeightsError, match="exactly one"):
        load_model("resnet18", tmp_path / "x.pth", random_weights=True)


def test_random_weights_are_seeded_announced_and_input_dependent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        a = load_model("resnet18", random_weights=True, seed=5)
    assert "RANDOM weights" in caplog.text
    assert a.source.is_random and a.source.seed == 5
    b = load_model("resnet18", random_weights=True, seed=5)
    x = torch.from_numpy(synthetic_batch(16, 224, seed=42))
    with torch.no_grad():
        la, lb = a.model(x), b.model(x)
    assert torch.equal(la, lb)
    # Meaningful for precision checks: different pictures, different winners, spread-out logits.
    assert len(set(la.argmax(1).tolist())) >= 8
    assert la.std(0).mean() > 1.0
