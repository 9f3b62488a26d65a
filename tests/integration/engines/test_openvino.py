"""The OpenVINO compiler and engine on a real exported ResNet-18 (random weights), no mocks of OpenVINO.

fp32 must match ONNX Runtime at the parity tolerance; bf16 and int8 are held to agreement figures
against the ONNX Runtime fp32 engine on held-out placeholder images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# openvino and nncf are optional dependencies: without them this module is skipped, not an error.
ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino nncf)")
pytest.importorskip("nncf", reason="nncf is not installed (pip install nncf), needed for int8")

from resserve.builder.accuracy import compare
from resserve.builder.calibration import calibration_and_held_out
from resserve.builder.export import ExportReport
from resserve.builder.compile_openvino import compile_openvino
from resserve.contract import imagenet_contract
from resserve.engines.hardware import cpu_capabilities, cpu_supports_bf16
from resserve.engines.onnxruntime import OnnxRuntimeEngine
from resserve.engines.openvino import SIDECAR_FILE, OpenVinoEngine
from resserve.errors import ConfigError, EngineError, EngineUnavailableError
from resserve.metadata import AccuracyReport

Images = tuple[np.ndarray, np.ndarray]  # calibration, held-out
CALIBRATION_IMAGES = 32
HELD_OUT_IMAGES = 32
PARITY_RTOL = 1e-4
# Floors for the random-weight ResNet-18 (resserve's stable random init: scaled-down residual
# branches, a head on the leading feature components) on 32 placeholder images. Measured here:
# int8 top-1 1.0, top-5 1.0, cosine 0.9997 (200 images: 0.985, 1.0, 0.9997); bf16 top-1 1.0,
# cosine 0.99998. A broken quantization (wrong scales, a lost layer) falls far below.
INT8_MIN_TOP1 = 0.9
INT8_MIN_TOP5 = 0.97
INT8_MIN_COSINE = 0.998
BF16_MIN_TOP1 = 0.95
BF16_MIN_COSINE = 0.9998


@pytest.fixture(scope="module")
def onnx_path(resnet18_onnx: ExportReport) -> Path:
    return resnet18_onnx.path


@pytest.fixture(scope="module")
def images() -> Images:
    """Calibration and held-out placeholder batches (disjoint)."""
    return calibration_and_held_out(imagenet_contract(), CALIBRATION_IMAGES, HELD_OUT_IMAGES)


@pytest.fixture(scope="module")
def reference(onnx_path: Path) -> OnnxRuntimeEngine:
    engine = OnnxRuntimeEngine(onnx_path, "cpu", intra_op_threads=2)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def fp32_xml(onnx_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_openvino(onnx_path, tmp_path_factory.mktemp("ov_fp32"), "fp32")


@pytest.fixture(scope="module")
def int8_xml(onnx_path: Path, images: Images, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_openvino(onnx_path, tmp_path_factory.mktemp("ov_int8"), "int8", images[0])


@pytest.fixture(scope="module")
def fp32_engine(fp32_xml: Path) -> OpenVinoEngine:
    engine = OpenVinoEngine(fp32_xml)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def split_engine(fp32_xml: Path) -> OpenVinoEngine:
    """Two streams, so every batch of two or more rows is split across two concurrent requests."""
    engine = OpenVinoEngine(fp32_xml, performance_hint="THROUGHPUT", num_streams=2)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def int8_engine(int8_xml: Path) -> OpenVinoEngine:
    engine = OpenVinoEngine(int8_xml)
    engine.load()
    return engine


def _relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.abs(reference - candidate).max() / np.abs(reference).max())


def _report(
    reference: OnnxRuntimeEngine, engine: OpenVinoEngine, held_out: np.ndarray, variant: str
) -> AccuracyReport:
    report = compare(reference, engine, held_out, variant=variant, reference_name="onnxruntime fp32",
                     method="openvino vs onnxruntime on placeholder held-out images")
    print(report.summary(), f"(cosine min {report.cosine_min:.5f})")
    return report


def test_fp32_matches_onnxruntime(fp32_engine: OpenVinoEngine, reference: OnnxRuntimeEngine,
                                  images: Images) -> None:
    held_out = images[1]
    error = _relative_error(reference.infer(held_out), fp32_engine.infer(held_out))
    print(f"openvino fp32 vs onnxruntime: max|diff|/max|logit| = {error:.2e}")
    assert error <= PARITY_RTOL
    # The f32 hint must win over the bf16 default that AMX machines would otherwise pick.
    assert fp32_engine.describe()["inference_precision"] == "f32"


def test_saved_ir_has_dynamic_batch_and_records_precision(fp32_xml: Path, int8_xml: Path) -> None:
    for xml, precision in ((fp32_xml, "fp32"), (int8_xml, "int8")):
        model = ov.Core().read_model(str(xml))
        assert model.input(0).get_partial_shape()[0].is_dynamic
        assert xml.with_suffix(".bin").is_file()
        assert json.loads((xml.parent / SIDECAR_FILE).read_text())["precision"] == precision
        assert model.get_rt_info(["resserve", "precision"]).astype(str) == precision
    int8_ops = {op.get_type_name() for op in ov.Core().read_model(str(int8_xml)).get_ops()}
    assert "FakeQuantize" in int8_ops


def test_fixed_batch_onnx_becomes_dynamic(onnx_path: Path, tmp_path: Path) -> None:
    # Third-party files often fix the batch to 1; the batcher needs it dynamic.
    import onnx

    model = onnx.load(str(onnx_path))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(tmp_path / "static.onnx"))
    xml = compile_openvino(tmp_path / "static.onnx", tmp_path / "ir", "fp32")
    engine = OpenVinoEngine(xml)
    engine.load()
    assert engine.input_spec.shape == (-1, 3, 224, 224)
    assert engine.infer(np.zeros((3, 3, 224, 224), np.float32)).shape == (3, 1000)
    engine.close()


def test_int8_agrees_with_fp32(int8_engine: OpenVinoEngine, reference: OnnxRuntimeEngine,
                               images: Images) -> None:
    assert int8_engine.precision == "int8"  # read from openvino.json
    report = _report(reference, int8_engine, images[1], "openvino int8")
    assert report.images == HELD_OUT_IMAGES
    assert report.top1_agreement >= INT8_MIN_TOP1
    assert report.top5_agreement >= INT8_MIN_TOP5
    assert report.cosine_mean >= INT8_MIN_COSINE


def test_bf16_agrees_with_fp32(fp32_xml: Path, reference: OnnxRuntimeEngine,
                               images: Images) -> None:
    if not cpu_supports_bf16():
        caps = cpu_capabilities()["optimization_capabilities"]
        pytest.skip(f"this CPU has no native bf16 (OpenVINO CPU capabilities: {caps})")
    engine = OpenVinoEngine(fp32_xml, "bf16")
    engine.load()
    assert engine.describe()["inference_precision"] == "bf16"
    report = _report(reference, engine, images[1], "openvino bf16")
    assert report.top1_agreement >= BF16_MIN_TOP1
    assert report.cosine_mean >= BF16_MIN_COSINE
    engine.close()


def test_bf16_without_cpu_support_is_a_clear_error(fp32_xml: Path, onnx_path: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The only stand-in in this module: the capability query, to reach the non-AMX branch here.
    monkeypatch.setattr("resserve.engines.hardware._cpu_properties", lambda: (("FP32", "INT8"), "old CPU"))
    with pytest.raises(EngineUnavailableError, match="no AMX/AVX512-BF16; use fp32 or int8"):
        OpenVinoEngine(fp32_xml, "bf16").load()
    with pytest.raises(EngineUnavailableError, match="no AMX/AVX512-BF16"):
        compile_openvino(onnx_path, tmp_path, "bf16")


@pytest.mark.parametrize("size", [1, 3, 16])
def test_dynamic_batch(fp32_engine: OpenVinoEngine, split_engine: OpenVinoEngine, int8_engine: OpenVinoEngine,
                       reference: OnnxRuntimeEngine, images: Images, size: int) -> None:
    batch = np.concatenate([images[1], images[0]])[:size]
    want = reference.infer(batch)
    assert _relative_error(want, fp32_engine.infer(batch)) <= PARITY_RTOL
    assert _relative_error(want, split_engine.infer(batch)) <= PARITY_RTOL
    out = int8_engine.infer(batch)
    assert out.shape == (size, 1000) and out.dtype == np.float32


def test_throughput_hint_splits_batches_in_order(split_engine: OpenVinoEngine, images: Images) -> None:
    info = split_engine.describe()
    assert info["performance_hint"] == "THROUGHPUT" and info["streams"] == 2
    assert info["infer_strategy"] == "split across streams"
    batch = images[1][:5]  # uneven split across two streams: 3 + 2 rows
    together = split_engine.infer(batch)
    alone = np.concatenate([split_engine.infer(row[None]) for row in batch])
    assert _relative_error(alone, together) <= PARITY_RTOL


def test_latency_hint_uses_one_synchronous_request(fp32_xml: Path, fp32_engine: OpenVinoEngine,
                                                    images: Images) -> None:
    assert fp32_engine.describe()["performance_hint"] == "LATENCY"  # the default
    engine = OpenVinoEngine(fp32_xml, inference_threads=1)
    engine.load()
    info = engine.describe()
    assert info["streams"] == 1 and info["threads"] == 1
    assert info["infer_strategy"] == "single synchronous request"
    batch = images[1][:4]
    assert _relative_error(fp32_engine.infer(batch), engine.infer(batch)) <= PARITY_RTOL
    engine.close()


def test_interface(int8_engine: OpenVinoEngine) -> None:
    assert int8_engine.name == "openvino"
    spec = int8_engine.input_spec
    assert spec.name == "input" and spec.shape == (-1, 3, 224, 224) and spec.dtype == np.float32
    assert int8_engine.output_spec.shape == (-1, 1000) and int8_engine.output_spec.dtype == np.float32
    assert int8_engine.warmup((1, 2), rounds=1) > 0
    info = int8_engine.describe()
    assert info["engine"] == "openvino" and info["precision"] == "int8"
    assert info["performance_hint"] == "LATENCY" and info["streams"] == 1 and info["threads"] >= 1
    assert "FP32" in info["optimization_capabilities"] and Path(info["path"]).name == "model.xml"
    # float64 input is cast, not rejected: callers need not know the engine's dtype.
    assert int8_engine.infer(np.zeros((2, 3, 224, 224))).shape == (2, 1000)


def test_precision_defaults_to_fp32_without_sidecar(fp32_xml: Path, tmp_path: Path) -> None:
    for suffix in (".xml", ".bin"):
        (tmp_path / f"model{suffix}").write_bytes(fp32_xml.with_suffix(suffix).read_bytes())
    engine = OpenVinoEngine(tmp_path / "model.xml")
    engine.load()
    assert engine.precision == "fp32"
    engine.close()


def test_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        OpenVinoEngine(tmp_path / "model.xml").load()
    with pytest.raises(ConfigError, match="does not exist"):
        compile_openvino(tmp_path / "absent.onnx", tmp_path / "out", "fp32")


def test_int8_without_calibration_is_a_clear_error(onnx_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="int8 quantization needs calibration images"):
        compile_openvino(onnx_path, tmp_path, "int8")


def test_unknown_precision_is_a_clear_error(onnx_path: Path, fp32_xml: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown OpenVINO precision 'fp16'"):
        compile_openvino(onnx_path, tmp_path, "fp16")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown OpenVINO precision 'int4'"):
        OpenVinoEngine(fp32_xml, "int4").load()
    with pytest.raises(ConfigError, match="performance_hint"):
        OpenVinoEngine(fp32_xml, performance_hint="FAST")  # type: ignore[arg-type]


def test_infer_errors(fp32_xml: Path, fp32_engine: OpenVinoEngine) -> None:
    with pytest.raises(EngineError, match="not loaded"):
        OpenVinoEngine(fp32_xml).infer(np.zeros((1, 3, 224, 224), np.float32))
    with pytest.raises(EngineError, match="openvino"):
        fp32_engine.infer(np.zeros((1, 3, 100), np.float32))
    with pytest.raises(EngineError, match="openvino failed on a batch"):
        fp32_engine.infer(np.zeros((2, 3, 100, 100), np.float32))
