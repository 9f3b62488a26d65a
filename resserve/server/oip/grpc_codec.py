"""``ModelInferRequest`` <-> resserve's OIP request and output tensors (:mod:`resserve.server.oip.wire`).

Inputs come as ``raw_input_contents`` (the binary framing, one blob per input, what tritonclient
sends) or as typed ``contents``; either way :func:`oip.decode_tensor` checks the datatype, shape
and size before anything is converted. Outputs always go back as ``raw_output_contents``, as
Triton answers; the classification extension is the output parameter ``classification``.
"""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2

from resserve.errors import InvalidRequestError
from resserve.server.oip import wire as oip

_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
             "UINT8": "uint_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _param(value: service_pb2.InferParameter) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def parameters(params: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values."""
    return {key: _param(value) for key, value in params.items()}


def decode_request(request: service_pb2.ModelInferRequest, *, max_images: int,
                   max_inputs: int = oip.DEFAULT_MAX_INPUTS,
                   max_elements: int = oip.DEFAULT_MAX_ELEMENTS) -> oip.InferRequest:
    """The request as resserve's :class:`oip.InferRequest`; InvalidRequestError says what is wrong."""
    if not request.inputs:
        raise InvalidRequestError("'inputs' must be a non-empty list")
    if len(request.inputs) > max_inputs:
        raise InvalidRequestError(f"{len(request.inputs)} inputs, at most {max_inputs} are accepted")
    oip.check_output_count(len(request.outputs))
    oip.check_unique_outputs([wanted.name for wanted in request.outputs])
    raw = list(request.raw_input_contents)
    if raw:
        for tensor in request.inputs:
            if tensor.HasField("contents"):
                raise InvalidRequestError(f"contents field must not be specified when using raw_input_contents for "
                                          f"'{tensor.name}' for model '{request.model_name}'")
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents: give every "
                                  "input's data raw, or none")
    total = 0
    inputs = []
    for index, tensor in enumerate(request.inputs):
        if "shared_memory_region" in tensor.parameters:
            raise InvalidRequestError(f"input '{tensor.name}': shared memory is not supported, send the data")
        values = None
        if not raw:
            field = _CONTENTS.get(tensor.datatype)
            values = list(getattr(tensor.contents, field)) if field else []
        decoded = oip.decode_tensor(tensor.name, tensor.datatype, list(tensor.shape),
                                    raw=raw[index] if raw else None, values=values,
                                    max_elements=max_elements, max_images=max_images)
        total += len(decoded.data) if isinstance(decoded.data, list) else decoded.data.size
        if total > max_elements:
            raise InvalidRequestError(f"the inputs have more than {max_elements} elements in all")
        inputs.append(decoded)
    oip.check_unique_inputs([t.name for t in inputs])
    outputs = []
    for wanted in request.outputs:
        params = parameters(wanted.parameters)
        classes = params.get("classification")
        if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 1):
            raise InvalidRequestError(f"output '{wanted.name}': classification must be a positive integer, "
                                      f"got {classes!r}")
        outputs.append(oip.RequestedOutput(wanted.name, True, classes))
    return oip.InferRequest(request.id or None, inputs, outputs, True, parameters(request.parameters))


def encode_response(model: str, version: str, request_id: str | None,
                    outputs: list[oip.OutputTensor]) -> service_pb2.ModelInferResponse:
    """The answer with every output in ``raw_output_contents``."""
    response = service_pb2.ModelInferResponse(model_name=model, model_version=version, id=request_id or "")
    for out in outputs:
        response.outputs.add(name=out.name, datatype=out.datatype, shape=[int(d) for d in out.shape])
        response.raw_output_contents.append(oip.raw_bytes(out))
    return response
