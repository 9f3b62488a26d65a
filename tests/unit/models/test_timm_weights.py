"""timm weights by name: downloaded from a Hub with the advertised sha256 verified, cached, reused
from huggingface_hub's cache, and a clear error offline (the Hub: tests/fake_hub.py, a real HTTP
server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resserve.errors import WeightsError
from resserve.models.timm_resnet import TimmResNet, build_timm_resnet
from resserve.models.timm_weights import parse_timm_name
from resserve.models.weights import cached_named_weights, load_model, load_model_or_fallback
from tests.fake_hub import Hub, serve_hub

NAME = "resnet18d.ra2_in1k"


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESSERVE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    with serve_hub() as state:
        monkeypatch.setenv("HF_ENDPOINT", state.url)
        yield state


def checkpoint_bytes(tmp_path: Path, classes: int = 10) -> bytes:
    torch.manual_seed(0)
    path = tmp_path / "source.safetensors"
    save_file(build_timm_resnet("resnet18d", num_classes=classes).state_dict(), str(path))
    return path.read_bytes()


def test_download_verifies_the_hub_sha256_and_caches(hub: Hub, tmp_path: Path) -> None:
    data = checkpoint_bytes(tmp_path)
    hub.files["timm/resnet18d.ra2_in1k"] = data
    loaded = load_model("resnet18d", f"timm:{NAME}")
    assert isinstance(loaded.model, TimmResNet) and loaded.num_classes == 10
    assert (loaded.source.kind, loaded.source.description) == ("timm", f"timm:{NAME}")
    assert loaded.source.sha256 == hashlib.sha256(data).hexdigest()
    assert loaded.contract == parse_timm_name(NAME).contract and loaded.contract.crop_size == 288
    cached = tmp_path / "cache" / "timm" / NAME / "model.safetensors"
    assert cached.read_bytes() == data
    assert (cached.parent / "model.safetensors.sha256").read_text().strip() == hashlib.sha256(data).hexdigest()
    assert cached_named_weights(f"timm:{NAME}") == cached
    seen = len(hub.requests)
    load_model("resnet18d", f"timm:{NAME}")  # the cache: no request
    assert len(hub.requests) == seen == 2  # HEAD for the checksum, GET of the bytes


def test_bytes_that_differ_from_the_advertised_sha256_are_refused(hub: Hub, tmp_path: Path) -> None:
    hub.files["timm/resnet18d.ra2_in1k"] = checkpoint_bytes(tmp_path)
    hub.advertised["timm/resnet18d.ra2_in1k"] = "0" * 64
    with pytest.raises(WeightsError, match="expected 0000000000000000"):
        load_model("resnet18d", f"timm:{NAME}")
    folder = tmp_path / "cache" / "timm" / NAME
    assert not list(folder.iterdir())  # neither the file nor a .part is left behind


def test_a_hub_that_names_no_checksum_is_refused(hub: Hub, tmp_path: Path) -> None:
    hub.files["timm/resnet18d.ra2_in1k"] = checkpoint_bytes(tmp_path)
    hub.advertised["timm/resnet18d.ra2_in1k"] = None
    with pytest.raises(WeightsError, match="names no sha256"):
        load_model("resnet18d", f"timm:{NAME}")
    assert not any(r.startswith("GET") for r in hub.requests)


def test_a_damaged_cached_file_is_refused(hub: Hub, tmp_path: Path) -> None:
    hub.files["timm/resnet18d.ra2_in1k"] = checkpoint_bytes(tmp_path)
    load_model("resnet18d", f"timm:{NAME}")
    cached = tmp_path / "cache" / "timm" / NAME / "model.safetensors"
    cached.write_bytes(cached.read_bytes()[:-1] + b"\0")
    with pytest.raises(WeightsError, match="damaged"):
        load_model("resnet18d", f"timm:{NAME}")


def test_offline_the_error_says_where_the_file_comes_from(monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 9 on loopback: nothing listens, so the connection is refused at once, as offline.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(WeightsError) as info:
        load_model("resnet18d", f"timm:{NAME}")
    text = str(info.value)
    assert "http://127.0.0.1:9/timm/resnet18d.ra2_in1k/resolve/main/model.safetensors" in text
    assert "--weights /path/to/model.safetensors" in text and "Offline?" in text


def test_offline_fallback_keeps_the_weights_preprocessing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    loaded, fell_back = load_model_or_fallback("resnet18d", f"timm:{NAME}", fallback_random=True)
    assert fell_back and loaded.source.is_random and isinstance(loaded.model, TimmResNet)
    # Clients send the same pictures to the fallback as to the real weights later.
    assert loaded.contract == parse_timm_name(NAME).contract


def test_huggingface_hub_cache_is_reused_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    data = checkpoint_bytes(tmp_path)
    digest = hashlib.sha256(data).hexdigest()
    repo = tmp_path / "hf-hub" / "models--timm--resnet18d.ra2_in1k"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / digest).write_bytes(data)
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(repo / "blobs" / digest)
    loaded = load_model("resnet18d", f"timm:{NAME}")
    assert loaded.source.sha256 == digest and loaded.num_classes == 10
    (repo / "blobs" / digest).write_bytes(data[:-1] + b"\0")
    with pytest.raises(WeightsError, match="damaged"):
        load_model("resnet18d", f"timm:{NAME}")
