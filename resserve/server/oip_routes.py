"""Open Inference Protocol v2 routes (KServe v2 / Triton HTTP), so tritonclient works unchanged.

Inputs: FP32 tensors already preprocessed to the model's input shape, or a BYTES tensor of
encoded images that the server preprocesses itself. Outputs: the logits tensor, or with the
classification extension (``parameters: {classification: k}``) the top-k as
``"score:index:label"`` strings. The binary tensor data extension works both ways.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from resserve import __version__
from resserve.errors import InvalidRequestError, PayloadTooLargeError
from resserve.runtime import ServedModel
from resserve.server import oip
from resserve.server.state import AppState, get_state

router = APIRouter()

EXTENSIONS = ["classification", "binary_tensor_data", "model_repository", "resserve_classify"]
IMAGE_INPUT = "image"  # the BYTES input that carries encoded images
PLATFORM = "onnxruntime_onnx"


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _datatype(dtype: np.dtype) -> str:
    """The OIP datatype of an engine's input: FP32, or UINT8 for ``uint8_input`` models."""
    return next(name for name, known in oip.NUMERIC_DTYPES.items() if known == dtype.newbyteorder("<"))


def _tensor_inputs(served: ServedModel) -> list[oip.TensorMeta]:
    spec = served.engines[0].input_spec
    return [
        oip.TensorMeta(spec.name, _datatype(spec.dtype), list(spec.shape)),
        oip.TensorMeta(IMAGE_INPUT, oip.BYTES, [-1]),
    ]


@router.get("/v2")
async def server_metadata() -> Response:
    return _json(oip.server_metadata(__version__, EXTENSIONS))


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    served = get_state(request).manager.get(name, version)
    out = served.engines[0].output_spec
    doc = oip.model_metadata(served.name, [served.version], PLATFORM, _tensor_inputs(served),
                             [oip.TensorMeta(out.name, "FP32", list(out.shape))])
    doc["resserve"] = served.describe()
    return _json(doc)


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    get_state(request).manager.get(name, version)  # raises 404 / 503
    return Response(status_code=200)


@router.get("/v2/models/{name}/config")
@router.get("/v2/models/{name}/versions/{version}/config")
async def model_config(request: Request, name: str, version: str | None = None) -> Response:
    served = get_state(request).manager.get(name, version)
    config = served.config.model_dump(mode="json")
    config["platform"] = PLATFORM
    return _json(config)


def _read_timeout_ms(request_params: dict[str, Any]) -> float | None:
    """OIP/Triton ``parameters.timeout`` is in microseconds."""
    raw = request_params.get("timeout")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise InvalidRequestError(f"parameters.timeout must be a positive number of microseconds, got {raw!r}")
    return float(raw) / 1000.0


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip/deflate request bodies (tritonclient's request compression), capped at ``limit``."""
    if encoding in ("", "identity"):
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise InvalidRequestError(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequestError(f"cannot decompress the {encoding} body: {exc}") from exc
    if len(out) > limit:
        raise PayloadTooLargeError(f"decompressed body exceeds the limit of {limit} bytes")
    return out


async def _run(state: AppState, served: ServedModel, request: oip.InferRequest) -> np.ndarray:
    if len(request.inputs) != 1:
        raise InvalidRequestError(f"expected one input, got {len(request.inputs)}")
    (tensor,) = request.inputs
    deadline = state.service.deadline(served, _read_timeout_ms(request.parameters))
    if tensor.datatype == oip.BYTES:
        images = tensor.data
        assert isinstance(images, list)
        if not images:
            raise InvalidRequestError(f"input '{tensor.name}' holds no images")
        outputs = await state.service.infer_images(served, images, deadline)
        state.metrics.images.labels(served.name, "ok").inc(len(images))
        return outputs
    spec = served.engines[0].input_spec
    datatype = _datatype(spec.dtype)
    if tensor.datatype != datatype:
        why = " (this model takes uint8 pixels after resize and crop, and normalizes them itself)" \
            if datatype == "UINT8" else ""
        raise InvalidRequestError(
            f"input '{tensor.name}': datatype {tensor.datatype} is not {datatype} or BYTES{why}")
    expected = spec.shape[1:]
    if len(tensor.shape) != len(spec.shape) or tuple(tensor.shape[1:]) != expected or tensor.shape[0] < 1:
        raise InvalidRequestError(
            f"input '{tensor.name}': shape {list(tensor.shape)} does not match [N, {', '.join(map(str, expected))}]"
        )
    data = tensor.data
    assert isinstance(data, np.ndarray)
    return await state.service.infer_tensor(served, np.ascontiguousarray(data, dtype=spec.dtype), deadline)


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """OIP v2 inference with the binary tensor data and classification extensions."""
    state = get_state(request)
    served = state.manager.get(name, version)
    request.state.model, request.state.version = served.name, served.version
    with state.service.admit(served):
        body = _decompress(await request.body(), request.headers.get("content-encoding", "").lower(),
                           state.settings.max_body_bytes)
        parsed = oip.parse_infer_request(body, oip.parse_header_length(request.headers.get(oip.HEADER_LENGTH)))
        out_spec = served.engines[0].output_spec
        requested = parsed.outputs or [oip.RequestedOutput(out_spec.name, parsed.binary_data_output)]
        for wanted in requested:
            if wanted.name != out_spec.name:
                raise InvalidRequestError(f"unknown output {wanted.name!r}; the model has {out_spec.name!r}")
        outputs = await _run(state, served, parsed)
    results = []
    for wanted in requested:
        if wanted.classification is not None:
            scores = state.service.scores(served, outputs)
            data = oip.classification_tensor(scores, wanted.classification, served.labels)
            k = min(wanted.classification, scores.shape[1])
            results.append(oip.OutputTensor(wanted.name, oip.BYTES, [scores.shape[0], k], data, wanted.binary))
        else:
            results.append(oip.OutputTensor(wanted.name, "FP32", list(outputs.shape), outputs, wanted.binary))
    body_out, headers = oip.build_infer_response(served.name, served.version, parsed.id, results)
    return Response(body_out, headers=headers)
