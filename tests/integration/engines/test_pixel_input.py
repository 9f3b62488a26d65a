"""uint8 pixels into the engine, normalization inside the model (``uint8_input``): ONNX Runtime with
ops prepended in memory, OpenVINO with its PrePostProcessor, and the server around them.

Each path is checked against the host-normalized float32 path on the same real images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from pydantic import ValidationError

from resserve.config import ModelConfig, ServerSettings
from resserve.contract import PreprocessContract, imagenet_contract
from resserve.engines.base import PixelInput
from resserve.engines.factory import Variant, open_engine
from resserve.engines.onnxruntime import OnnxRuntimeEngine
from resserve.engines.pixel_graph import with_pixel_input
from resserve.errors import ConfigError, EngineError
from resserve.preprocess import DecodeOptions, preprocess
from tests.server_harness import RunningServer, jpeg, serve_in_thread, write_model

PIXELS = DecodeOptions(fast_transform=True, uint8_pixels=True)
FLOATS = DecodeOptions(fast_transform=True)


def _batches(contract: PreprocessContract, count: int = 4) -> tuple[np.ndarray, np.ndarray]:
    images = [jpeg(400, 300, seed) for seed in range(count)]
    pixels = np.stack([preprocess(d, contract, PIXELS) for d in images])
    floats = np.stack([preprocess(d, contract, FLOATS) for d in images])
    return pixels, floats


def _close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    assert (got.argmax(1) == want.argmax(1)).all()


def test_pixel_input_from_contract_is_in_pixel_units() -> None:
    pixels = PixelInput.from_contract(imagenet_contract())
    assert pixels.mean == pytest.approx((0.485 * 255, 0.456 * 255, 0.406 * 255))
    assert pixels.std == pytest.approx((0.229 * 255, 0.224 * 255, 0.225 * 255))
    raw = PreprocessContract(input_scale="0-255", mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0), color_order="BGR")
    assert PixelInput.from_contract(raw) == PixelInput((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), bgr=True)


def test_preprocess_stops_at_uint8_pixels() -> None:
    contract = imagenet_contract()
    pixels, floats = _batches(contract, 1)
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 224, 224, 3)
    assert floats.dtype == np.float32 and floats.shape == (1, 3, 224, 224)
    # The same crop: normalizing the pixels on the host gives the float path's tensor.
    mean, std = np.array(contract.mean, np.float32), np.array(contract.std, np.float32)
    host = ((pixels[0].astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(host, floats[0], atol=1e-5)


@pytest.mark.parametrize("color_order", ["RGB", "BGR"])
def test_onnxruntime_engine_normalizes_pixels_in_the_graph(model_onnx: Path, color_order: str) -> None:
    contract = PreprocessContract(color_order=color_order)  # type: ignore[arg-type]
    pixels, floats = _batches(contract)
    reference = OnnxRuntimeEngine(model_onnx, "cpu")
    engine = OnnxRuntimeEngine(model_onnx, "cpu", pixels=PixelInput.from_contract(contract))
    reference.load()
    engine.load()
    assert engine.input_spec.dtype == np.uint8 and engine.input_spec.shape == (-1, 224, 224, 3)
    assert engine.input_spec.name == reference.input_spec.name  # same public name, new type
    assert engine.describe()["pixel_input"] is True
    _close(engine.infer(pixels), reference.infer(floats))


def test_pixel_graph_refuses_models_it_cannot_feed(tmp_path: Path, model_onnx: Path) -> None:
    model = onnx.load(str(model_onnx))
    two_inputs = onnx.ModelProto.FromString(model.SerializeToString())
    two_inputs.graph.input.append(onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [1]))
    with pytest.raises(EngineError, match="one image input"):
        with_pixel_input(two_inputs, PixelInput.from_contract(imagenet_contract()))
    # The file on disk is untouched: only the in-memory copy changes.
    converted = with_pixel_input(model, PixelInput.from_contract(imagenet_contract()))
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert onnx.load(str(model_onnx)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_engines_without_pixel_input_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="uint8_input needs the onnxruntime or openvino engine"):
        ModelConfig.model_validate({"name": "m", "source": {"arch": "resnet18", "random_weights": True}, "engine": "torch",
                                    "uint8_input": True})
    # engine auto resolves per machine: there an engine without pixel input serves float32 instead
    # (the server asks the engine what it takes). Here it goes on to open the TensorRT plan, which
    # is missing; with an explicit engine it is refused before anything is opened.
    pixels = PixelInput.from_contract(imagenet_contract())
    config = ModelConfig.model_validate({"name": "m", "source": {"onnx": "m.onnx"}, "engine": "auto",
                                         "precision": "fp16", "uint8_input": True})
    with pytest.raises(Exception) as raised:
        open_engine(Variant("tensorrt", "fp16"), config, tmp_path, pixels)
    assert "uint8_input" not in str(raised.value)
    explicit = config.model_copy(update={"engine": "onnxruntime"})
    with pytest.raises(ConfigError, match="uint8_input needs the onnxruntime or openvino engine"):
        open_engine(Variant("tensorrt", "fp16"), explicit, tmp_path, pixels)


def test_openvino_engine_normalizes_pixels_with_its_preprocessor(model_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed")
    from resserve.builder.compile_openvino import compile_openvino
    from resserve.engines.openvino import OpenVinoEngine

    xml = compile_openvino(model_onnx, tmp_path / "ov", "fp32")
    contract = imagenet_contract()
    pixels, floats = _batches(contract)
    reference = OpenVinoEngine(xml)
    engine = OpenVinoEngine(xml, pixels=PixelInput.from_contract(contract))
    reference.load()
    engine.load()
    assert engine.input_spec.dtype == np.uint8 and engine.input_spec.shape == (-1, 224, 224, 3)
    _close(engine.infer(pixels), reference.infer(floats))
    with pytest.raises(EngineError, match="N,H,W,3 uint8"):
        engine.infer(pixels[0])


@pytest.fixture(scope="module")
def server(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "floats", model_onnx)
    write_model(repo, "pixels", model_onnx, uint8_input=True)
    with serve_in_thread(ServerSettings(model_repo=repo)) as running:
        yield running


def test_server_classifies_the_same_with_pixels_into_the_model(server: RunningServer) -> None:
    for seed in range(3):
        body = jpeg(500, 375, seed)
        answers = [httpx.post(f"{server.url}/v2/models/{m}/classify", content=body,
                              headers={"Content-Type": "image/jpeg"}, timeout=30) for m in ("floats", "pixels")]
        assert [a.status_code for a in answers] == [200, 200], answers[1].text
        floats, pixels = (a.json()["results"][0]["predictions"] for a in answers)
        assert [p["index"] for p in pixels] == [p["index"] for p in floats]
        assert [p["score"] for p in pixels] == pytest.approx([p["score"] for p in floats], abs=1e-4)


def test_oip_declares_and_takes_uint8_pixels(server: RunningServer) -> None:
    meta = httpx.get(f"{server.url}/v2/models/pixels", timeout=10).json()
    assert meta["inputs"][0] == {"name": "input", "datatype": "UINT8", "shape": [-1, 224, 224, 3]}
    assert httpx.get(f"{server.url}/v2/models/floats", timeout=10).json()["inputs"][0]["datatype"] == "FP32"
    # Triton's model config says the layout too (its image clients lay out what they send by it).
    pixels_config = httpx.get(f"{server.url}/v2/models/pixels/config", timeout=10).json()["input"][0]
    assert pixels_config == {"name": "input", "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC",
                             "dims": [224, 224, 3]}
    assert httpx.get(f"{server.url}/v2/models/floats/config", timeout=10).json()["input"][0]["format"] == \
        "FORMAT_NCHW"

    contract = imagenet_contract()
    pixels, floats = _batches(contract, 2)

    def infer(model: str, datatype: str, array: np.ndarray) -> httpx.Response:
        body = {"inputs": [{"name": "input", "shape": list(array.shape), "datatype": datatype,
                            "data": array.ravel().tolist()}]}
        return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30)

    got, want = infer("pixels", "UINT8", pixels), infer("floats", "FP32", floats)
    assert got.status_code == 200 and want.status_code == 200, got.text
    _close(np.array(got.json()["outputs"][0]["data"], np.float32).reshape(2, -1),
           np.array(want.json()["outputs"][0]["data"], np.float32).reshape(2, -1))

    refused = infer("pixels", "FP32", floats)
    assert refused.status_code == 400
    assert "but model 'pixels' expects 'UINT8'" in refused.json()["error"] and "uint8 pixels" in refused.json()["error"]
