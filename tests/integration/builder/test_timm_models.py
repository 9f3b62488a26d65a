"""timm's ResNet variants through the product: export, int8 on both engines, the torch engine,
and a repository model built from timm weights fetched by name and served.

The squeeze-excitation, average-pool shortcut, deep stem and stem-pool convolution are exercised
together on a small ResNet-RS-like network (full-size ones cost minutes on 2 cores); the
repository test builds a real resnet18d.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
import yaml
from safetensors.torch import save_file

from resserve.builder.accuracy import compare
from resserve.builder.calibration import calibration_and_held_out
from resserve.builder.export import export_onnx
from resserve.builder.compile_openvino import compile_openvino
from resserve.builder.ort_quant import quantize_int8
from resserve.builder.build_pipeline import BuildPipeline
from resserve.config import ServerSettings
from resserve.contract import PreprocessContract
from resserve.engines.onnxruntime import OnnxRuntimeEngine
from resserve.engines.torch_engine import TorchEngine
from resserve.metadata import read_metadata
from resserve.preprocess import preprocess
from resserve.models.timm_resnet import Bottleneck, TimmArchSpec, TimmResNet, build_timm_resnet
from resserve.models.timm_weights import parse_timm_name
from resserve.models.random_init import randomize
from resserve.models.weights import LoadedModel, WeightsSource, load_model
from resserve.repository import ModelRepository
from tests.fake_hub import serve_hub
from tests.server_harness import jpeg, serve_in_thread

CONTRACT = PreprocessContract(resize_size=182, crop_size=160, interpolation="bicubic")
SMALL_RS = TimmArchSpec(Bottleneck, (1, 1, 1, 1), deep_stem=True, stem_width=16, avg_down=True,
                        replace_stem_pool=True, se_ratio=0.25)
# Floors a broken quantization misses by far (wrong scales: cosine < 0.95); measured on this
# graph: ONNX Runtime cosine 0.9995, OpenVINO 0.9976, top-5 98-100%.
MIN_COSINE = 0.99
MIN_TOP5 = 0.95


def small_rs_model() -> TimmResNet:
    torch.manual_seed(0)  # the convolutions' init; randomize() seeds the rest
    model = TimmResNet(SMALL_RS)
    randomize(model, seed=0, image_size=160)
    return model.eval()


@pytest.fixture(scope="module")
def small_rs_torch() -> TimmResNet:
    return small_rs_model()


@pytest.fixture(scope="module")
def small_rs(small_rs_torch: TimmResNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = small_rs_torch
    path = tmp_path_factory.mktemp("small_rs") / "model.onnx"
    export_onnx(LoadedModel("resnetrs-small", model, WeightsSource("random", "test", seed=0), CONTRACT), path)
    return path


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    return calibration_and_held_out(CONTRACT, 64, 64)


@pytest.fixture(scope="module")
def reference(small_rs: Path) -> OnnxRuntimeEngine:
    engine = OnnxRuntimeEngine(small_rs, "cpu")
    engine.load()
    return engine


def test_export_keeps_se_and_the_avg_pool_shortcut(small_rs: Path) -> None:
    graph = onnx.load(str(small_rs)).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["BatchNormalization"] == 0
    assert ops["Sigmoid"] == 4 and ops["Mul"] == 4  # one SE gate per block
    assert ops["MaxPool"] == 0  # ResNet-RS: a strided conv replaces the stem pool
    pools = [n for n in graph.node if n.op_type == "AveragePool"]
    assert len(pools) == 3  # the strided shortcuts of stages 2-4
    for pool in pools:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pool.attribute}
        assert attrs["ceil_mode"] == 1 and attrs.get("count_include_pad", 0) == 0
        assert list(attrs["kernel_shape"]) == [2, 2]


def test_odd_feature_maps_pool_as_timm_does(small_rs_torch: TimmResNet, reference: OnnxRuntimeEngine) -> None:
    """ceil_mode with count_include_pad off: the last, partial window averages what it covers."""
    torch_model = small_rs_torch
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 160, 160), dtype=np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    got = reference.infer(x)  # 160 -> 80 -> 40 -> 20 -> 10 -> 5: stage 4 pools an odd map
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_onnxruntime_int8_agrees_and_keeps_the_narrow_stem_conv_fp32(
        small_rs: Path, images: tuple[np.ndarray, np.ndarray], reference: OnnxRuntimeEngine) -> None:
    path = quantize_int8(small_rs, small_rs.parent / "int8" / "model.onnx", images[0])
    graph = onnx.load(str(path)).graph
    image = graph.input[0].name
    # The first conv reads the float image itself (not quantized); every other conv reads int8.
    assert sum(n.op_type == "Conv" and n.input[0] == image for n in graph.node) == 1
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert sum(n.input[0] in dequantized for n in convs) == len(convs) - 1
    engine = OnnxRuntimeEngine(path, "cpu")
    engine.load()
    report = compare(reference, engine, images[1], variant="int8", reference_name="fp32", method="percentile")
    assert report.cosine_mean >= MIN_COSINE and report.top5_agreement >= MIN_TOP5, report.summary()


def test_openvino_int8_agrees(small_rs: Path, images: tuple[np.ndarray, np.ndarray],
                              reference: OnnxRuntimeEngine) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is a runtime dependency on x86 CPUs")
    from resserve.engines.openvino import OpenVinoEngine

    engine = OpenVinoEngine(compile_openvino(small_rs, small_rs.parent / "ov-int8", "int8", images[0]))
    engine.load()
    report = compare(reference, engine, images[1], variant="int8", reference_name="fp32", method="nncf")
    assert report.cosine_mean >= MIN_COSINE and report.top5_agreement >= MIN_TOP5, report.summary()


def test_torch_engine_runs_a_timm_architecture_like_its_export(tmp_path: Path) -> None:
    loaded = load_model("resnet18d", random_weights=True, seed=1)
    path = tmp_path / "model.onnx"
    export_onnx(loaded, path)
    weights = tmp_path / "model.safetensors"
    save_file(loaded.model.state_dict(), str(weights))
    engine = TorchEngine("resnet18d", weights, input_size=(224, 224))
    engine.load()
    onnx_engine = OnnxRuntimeEngine(path, "cpu")
    onnx_engine.load()
    x = calibration_and_held_out(loaded.contract, 4, 4)[1]
    expected = onnx_engine.infer(x)
    assert np.abs(engine.infer(x) - expected).max() <= 1e-4 * np.abs(expected).max()
    assert engine.describe()["arch"] == "resnet18d"


@pytest.fixture
def timm_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModelRepository, TimmResNet]]:
    """A repository whose model names timm weights, served by a Hub on 127.0.0.1."""
    monkeypatch.setenv("RESSERVE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    torch.manual_seed(0)
    source = build_timm_resnet("resnet18d")
    randomize(source, seed=4)
    checkpoint = tmp_path / "published.safetensors"
    save_file(source.state_dict(), str(checkpoint))
    root = tmp_path / "repo"
    (root / "resnet18d").mkdir(parents=True)
    config = {"source": {"arch": "resnet18d", "weights": "timm:resnet18d.ra2_in1k"}, "max_batch_size": 4,
              "intra_op_threads": 2}
    (root / "resnet18d" / "config.yaml").write_text(yaml.safe_dump(config))
    with serve_hub() as hub:
        hub.files["timm/resnet18d.ra2_in1k"] = checkpoint.read_bytes()
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield ModelRepository(root), source.eval()


def test_repository_builds_timm_weights_by_name_and_serves_them(
        timm_repo: tuple[ModelRepository, TimmResNet], tmp_path: Path) -> None:
    repo, published = timm_repo
    folder = BuildPipeline(repo).build("resnet18d")
    metadata = read_metadata(folder / "model.onnx")
    assert (metadata.weights_kind, metadata.weights_source) == ("timm", "timm:resnet18d.ra2_in1k")
    assert metadata.weights_sha256 == hashlib.sha256((tmp_path / "published.safetensors").read_bytes()).hexdigest()
    assert not metadata.random_weights
    # The contract travels with the weights: timm's test size 288, crop_pct 0.95, bicubic.
    contract = parse_timm_name("timm:resnet18d.ra2_in1k").contract
    assert metadata.preprocess == contract
    assert (metadata.preprocess.resize_size, metadata.preprocess.crop_size) == (303, 288)
    photo = jpeg(500, 375)
    with torch.no_grad():
        logits = published(torch.from_numpy(preprocess(photo, contract)[np.newaxis])).numpy()[0]
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    with serve_in_thread(ServerSettings(model_repo=repo.root, build_missing=False)) as server:
        response = httpx.post(f"{server.url}/v2/models/resnet18d/classify", content=photo,
                              headers={"content-type": "image/jpeg"}, params={"top_k": 5}, timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["random_weights"] is False
        predictions = body["results"][0]["predictions"]
        assert [p["index"] for p in predictions] == list(np.argsort(-want)[:5])
        np.testing.assert_allclose([p["score"] for p in predictions], np.sort(want)[::-1][:5], rtol=1e-3)
        meta = httpx.get(f"{server.url}/v2/models/resnet18d", timeout=10).json()
        assert meta["inputs"][0]["shape"][-2:] == [288, 288]
