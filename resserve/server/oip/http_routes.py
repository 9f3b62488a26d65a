"""Open Inference Protocol v2 routes (KServe v2 / Triton HTTP), so tritonclient works unchanged.

Inputs: FP32 tensors already preprocessed to the model's input shape, or a BYTES tensor of
encoded images that the server preprocesses itself. Outputs: the logits tensor, or with the
classification extension (``parameters: {classification: k}``) the top-k as
``"score:index:label"`` strings. The binary tensor data extension works both ways.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from resserve import __version__
from resserve.errors import InvalidRequestError
from resserve.redact import public_config
from resserve.server.oip.model_config import triton_config
from resserve.server.oip import wire as oip
from resserve.server.body import content_encoding, read_body
from resserve.server.disconnect import CancelOnDisconnect
from resserve.server.oip.infer import (
    EXTENSIONS,
    IMAGE_INPUT,
    PLATFORM,
    datatype_of,
    output_meta,
    output_tensors,
    requested_outputs,
    run_request,
    tensor_input,
)
from resserve.server.app_state import get_state, labelled
from resserve.serving.manager import ServedModel

router = APIRouter()

def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


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
    manager = get_state(request).manager
    served = manager.get(name, version)
    versions = [served.version] if version is not None else manager.serving_versions(name)
    doc = oip.model_metadata(served.name, versions, PLATFORM, [tensor_input(served)], [output_meta(served)])
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
    # Triton's ModelConfig fields (what perf_analyzer and Triton's clients read), and resserve's
    # own configuration beside them: no fault injection, no paths (files by name only).
    return _json({**triton_config(served), "resserve": public_config(served.config)})


# A JSON header this small parses in tens of microseconds: on the event loop, not a thread.
INLINE_HEADER_BYTES = 16 * 1024


@router.post("/v2/models/{name}/infer", openapi_extra=OPENAPI_INFER)
@router.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=OPENAPI_INFER)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """OIP v2 inference with the binary tensor data and classification extensions."""
    state = get_state(request)
    pipeline = state.pipeline
    framing: list[Any] = []

    def found(served: ServedModel) -> None:  # the framing headers: checked once the model is found, before admission
        labelled(request)(served)
        framing[:] = [oip.parse_header_length(request.headers.get(oip.HEADER_LENGTH)), content_encoding(request)]

    with pipeline.request(name, version, "http", found=found) as ticket:
        served = ticket.served
        header_length = framing[0]
        with pipeline.tracing.span("read"):
            raw = await read_body(request, state.settings.max_decompressed_bytes)
        # JSON, base64 and framing are CPU work: off the event loop, on the pipeline's parse slots;
        # a small JSON header ahead of binary data (tritonclient's framing) is read on the loop,
        # which costs less than a trip to a thread.
        max_images = pipeline.max_images(served)
        if header_length == 0:  # Triton's raw binary request: the body is the model's one input
            spec = served.input_spec
            if any(d < 0 for d in spec.shape[1:]):
                raise InvalidRequestError(f"The shape of the raw input '{spec.name}' can not be deduced: model "
                                          f"'{served.name}' has variable-sized dimensions {list(spec.shape)}")
            header = oip.raw_request_header(raw, spec.name, datatype_of(spec.dtype), spec.shape[1:])
        elif header_length is not None and header_length <= INLINE_HEADER_BYTES:
            header = oip.read_infer_header(raw, header_length, max_images=max_images)
        else:
            header = await pipeline.parse(oip.read_infer_header, raw, header_length, max_images=max_images)
        pipeline.reserve(ticket, header.images)  # the model's places, before any element is converted
        parsed = await pipeline.parse(oip.decode_inputs, header)
        del raw, header  # the parsed request holds what it needs (binary tensors are views of it)
        requested = requested_outputs(served, parsed)
        async with CancelOnDisconnect(request.receive):
            outputs = await run_request(pipeline, ticket, parsed)
    with pipeline.tracing.span("encode"):
        results = output_tensors(served, requested, outputs)
        body_out, headers = oip.build_infer_response(served.name, served.version, parsed.id, results)
    return Response(body_out, headers=headers)
