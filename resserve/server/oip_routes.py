"""Open Inference Protocol v2 routes (KServe v2 / Triton HTTP), so tritonclient works unchanged.

Inputs: FP32 tensors already preprocessed to the model's input shape, or a BYTES tensor of
encoded images that the server preprocesses itself. Outputs: the logits tensor, or with the
classification extension (``parameters: {classification: k}``) the top-k as
``"score:index:label"`` strings. The binary tensor data extension works both ways.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from resserve import __version__
from resserve.errors import InvalidRequestError
from resserve.redact import public_config
from resserve.server import oip
from resserve.server.body import content_encoding, decompress, read_raw
from resserve.server.disconnect import CancelOnDisconnect
from resserve.server.pipeline import MAX_TIMEOUT_MS, RequestPipeline, Ticket
from resserve.server.state import get_state
from resserve.serving.manager import ServedModel

router = APIRouter()

EXTENSIONS = ["classification", "binary_tensor_data", "model_repository", "resserve_classify"]
IMAGE_INPUT = "image"  # the BYTES input that carries encoded images
PLATFORM = "onnxruntime_onnx"


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _datatype(dtype: np.dtype) -> str:
    """The OIP datatype of an engine's input: FP32, or UINT8 for ``uint8_input`` models."""
    return next(name for name, known in oip.NUMERIC_DTYPES.items() if known == dtype.newbyteorder("<"))


def _tensor_input(served: ServedModel) -> oip.TensorMeta:
    """The one input metadata lists: a client that sends every listed input must succeed, and
    ``infer`` takes exactly one input, so the encoded-image input is listed apart, under
    ``resserve.alternative_inputs``."""
    spec = served.engines[0].input_spec
    return oip.TensorMeta(spec.name, _datatype(spec.dtype), list(spec.shape))


IMAGE_INPUT_META = {"name": IMAGE_INPUT, "datatype": oip.BYTES, "shape": [-1],
                    "description": "encoded image files instead of the tensor, preprocessed by the server"}

_TENSOR_SCHEMA = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(oip.DATATYPES)},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
        "data": {"type": "array", "description": "row-major values; for BYTES base64 strings"},
    },
}
OPENAPI_INFER: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An Open Inference Protocol v2 inference request. With the binary tensor data extension "
                       "the JSON header is followed by raw tensor bytes, its length in the "
                       f"{oip.HEADER_LENGTH} header (Content-Type application/octet-stream).",
        "content": {
            "application/json": {"schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object", "properties": {
                        "timeout": {"type": "number", "description": "deadline in microseconds"},
                        "binary_data_output": {"type": "boolean"}}},
                    "inputs": {"type": "array", "minItems": 1, "items": _TENSOR_SCHEMA},
                    "outputs": {"type": "array", "items": {
                        "type": "object", "required": ["name"],
                        "properties": {"name": {"type": "string"}, "parameters": {"type": "object", "properties": {
                            "binary_data": {"type": "boolean"},
                            "classification": {"type": "integer", "minimum": 1}}}}}},
                },
            }},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


@router.get("/v2")
async def server_metadata() -> Response:
    return _json(oip.server_metadata(__version__, EXTENSIONS))


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    served = get_state(request).manager.get(name, version)
    out = served.engines[0].output_spec
    doc = oip.model_metadata(served.name, [served.version], PLATFORM, [_tensor_input(served)],
                             [oip.TensorMeta(out.name, "FP32", list(out.shape))])
    doc["resserve"] = served.describe()
    doc["resserve"]["alternative_inputs"] = [IMAGE_INPUT_META]
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
    config = public_config(served.config)  # no fault injection, no paths: files by name only
    config["platform"] = PLATFORM
    return _json(config)


def _read_timeout_ms(request_params: dict[str, Any]) -> float | None:
    """OIP/Triton ``parameters.timeout`` is in microseconds."""
    raw = request_params.get("timeout")
    if raw is None:
        return None
    micros = oip.finite_number(raw)
    if micros is None or micros <= 0 or micros / 1000.0 > MAX_TIMEOUT_MS:
        shown = raw if len(repr(raw)) <= 40 else f"{repr(raw)[:40]}..."
        raise InvalidRequestError(f"parameters.timeout must be a positive number of microseconds, at most "
                                  f"{MAX_TIMEOUT_MS * 1000:.0f}, got {shown}")
    return micros / 1000.0


def _parse(body: bytes, encoding: str, header_length: int | None, max_decompressed_bytes: int,
           max_images: int) -> oip.InferRequest:
    """Inflate and decode a request (runs in a worker thread: JSON, base64 and framing are CPU work)."""
    return oip.parse_infer_request(decompress(body, encoding, max_decompressed_bytes), header_length,
                                   max_images=max_images)


async def _run(pipeline: RequestPipeline, ticket: Ticket, request: oip.InferRequest) -> np.ndarray:
    if len(request.inputs) != 1:
        names = ", ".join(repr(t.name) for t in request.inputs)
        raise InvalidRequestError(f"expected one input, got {len(request.inputs)} ({names}): send either "
                                  f"the tensor or {IMAGE_INPUT!r} (encoded images), not both")
    (tensor,) = request.inputs
    timeout_ms = _read_timeout_ms(request.parameters)
    served = ticket.served
    if tensor.datatype == oip.BYTES:
        images = tensor.data
        assert isinstance(images, list)
        if not images:
            raise InvalidRequestError(f"input '{tensor.name}' holds no images")
        return await pipeline.run_images(ticket, images, timeout_ms)
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
    return await pipeline.run_tensor(ticket, np.ascontiguousarray(data, dtype=spec.dtype), timeout_ms)


@router.post("/v2/models/{name}/infer", openapi_extra=OPENAPI_INFER)
@router.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=OPENAPI_INFER)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """OIP v2 inference with the binary tensor data and classification extensions."""
    received = time.monotonic()
    state = get_state(request)
    pipeline = state.pipeline
    served = state.manager.get(name, version)
    request.state.model, request.state.version = served.name, served.version
    header_length = oip.parse_header_length(request.headers.get(oip.HEADER_LENGTH))
    encoding = content_encoding(request)
    with pipeline.admit(served, received) as ticket:
        raw = await read_raw(request)
        parsed = await asyncio.to_thread(_parse, raw, encoding, header_length,
                                         state.settings.max_decompressed_bytes, pipeline.max_images(served))
        del raw  # the parsed request holds what it needs (binary tensors are views of it)
        out_spec = served.engines[0].output_spec
        requested = parsed.outputs or [oip.RequestedOutput(out_spec.name, parsed.binary_data_output)]
        for wanted in requested:
            if wanted.name != out_spec.name:
                raise InvalidRequestError(f"unknown output {wanted.name!r}; the model has {out_spec.name!r}")
        async with CancelOnDisconnect(request.receive):
            outputs = await _run(pipeline, ticket, parsed)
    results = []
    for wanted in requested:
        if wanted.classification is not None:
            scores = pipeline.scores(served, outputs)
            data = oip.classification_tensor(scores, wanted.classification, served.labels)
            k = min(wanted.classification, scores.shape[1])
            results.append(oip.OutputTensor(wanted.name, oip.BYTES, [scores.shape[0], k], data, wanted.binary))
        else:
            results.append(oip.OutputTensor(wanted.name, "FP32", list(outputs.shape), outputs, wanted.binary))
    body_out, headers = oip.build_infer_response(served.name, served.version, parsed.id, results)
    return Response(body_out, headers=headers)
