"""OIP v2 inference over the request pipeline, whatever carried it: HTTP (:mod:`.http_routes`) or gRPC
(:mod:`.grpc_servicer`). A decoded :class:`~resserve.server.oip.wire.InferRequest` goes in, output tensors come
out; the checks (one input, the tensor's datatype and shape, known outputs) are written once here.

Inputs: an FP32 (or UINT8) tensor already preprocessed to the model's input shape, or a BYTES
tensor of encoded images that the server preprocesses itself. Outputs: the logits tensor, or with
the classification extension the top-k as ``"value:index:label"`` strings (the output's values).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resserve.errors import InvalidRequestError
from resserve.server.oip import wire as oip
from resserve.server.request_pipeline import MAX_TIMEOUT_MS, RequestPipeline, Ticket
from resserve.serving.manager import ServedModel

IMAGE_INPUT = "image"  # the BYTES input that carries encoded images
PLATFORM = "onnxruntime_onnx"
# What server metadata lists, over HTTP and gRPC alike.
EXTENSIONS = ["classification", "model_repository", "model_configuration", "binary_tensor_data", "statistics",
              "resserve_classify"]


def datatype_of(dtype: np.dtype) -> str:
    """The OIP datatype of an engine's input: FP32, or UINT8 for ``uint8_input`` models."""
    return next(name for name, known in oip.NUMERIC_DTYPES.items() if known == dtype.newbyteorder("<"))


def tensor_input(served: ServedModel) -> oip.TensorMeta:
    """The one input metadata lists: a client that sends every listed input must succeed, and
    ``infer`` takes exactly one input, so the encoded-image input is listed apart, under
    ``resserve.alternative_inputs``."""
    spec = served.input_spec
    return oip.TensorMeta(spec.name, datatype_of(spec.dtype), list(spec.shape))


def output_meta(served: ServedModel) -> oip.TensorMeta:
    out = served.output_spec
    return oip.TensorMeta(out.name, "FP32", list(out.shape))


def read_timeout_ms(request_params: dict[str, Any]) -> float | None:
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


def requested_outputs(served: ServedModel, request: oip.InferRequest) -> list[oip.RequestedOutput]:
    """The outputs to answer: those asked for (each must be the model's), else the model's one."""
    out_spec = served.output_spec
    requested = request.outputs or [oip.RequestedOutput(out_spec.name, request.binary_data_output)]
    for wanted in requested:
        if wanted.name != out_spec.name:
            raise InvalidRequestError(f"unexpected inference output '{wanted.name}' for model '{served.name}': "
                                      f"the model has {out_spec.name!r}")
    return requested


async def run_request(pipeline: RequestPipeline, ticket: Ticket, request: oip.InferRequest,
                      deadline_ms: float | None = None) -> np.ndarray:
    """Raw outputs for a decoded request. ``deadline_ms``: what the transport allows (a gRPC
    deadline); the request's own ``timeout`` parameter may only shorten it."""
    served = ticket.served
    spec = served.input_spec
    if len(request.inputs) != 1:
        names = ", ".join(repr(t.name) for t in request.inputs)
        raise InvalidRequestError(f"expected 1 inputs but got {len(request.inputs)} inputs for model "
                                  f"'{served.name}' ({names}): send either the tensor {spec.name!r} or "
                                  f"{IMAGE_INPUT!r} (encoded images), not both")
    (tensor,) = request.inputs
    if tensor.name not in (spec.name, IMAGE_INPUT):
        raise InvalidRequestError(f"unexpected inference input '{tensor.name}' for model '{served.name}': it takes "
                                  f"{spec.name!r} (a tensor) or {IMAGE_INPUT!r} (encoded images)")
    timeout_ms = read_timeout_ms(request.parameters)
    if deadline_ms is not None:
        timeout_ms = min(deadline_ms, timeout_ms) if timeout_ms is not None else deadline_ms
    if tensor.datatype == oip.BYTES:
        images = tensor.data
        assert isinstance(images, list)
        if not images:
            raise InvalidRequestError(f"input '{tensor.name}' holds no images")
        return await pipeline.run_images(ticket, images, timeout_ms)
    datatype = datatype_of(spec.dtype)
    if tensor.datatype != datatype:
        why = " (this model takes uint8 pixels after resize and crop, and normalizes them itself)" \
            if datatype == "UINT8" else ""
        raise InvalidRequestError(
            f"inference input '{tensor.name}' data-type is '{tensor.datatype}', but model '{served.name}' expects "
            f"'{datatype}' (or BYTES: encoded images){why}")
    expected = spec.shape[1:]
    if len(tensor.shape) != len(spec.shape) or tuple(tensor.shape[1:]) != expected or tensor.shape[0] < 1:
        want = ",".join(map(str, (-1, *expected)))
        raise InvalidRequestError(
            f"unexpected shape for input '{tensor.name}' for model '{served.name}'. Expected [{want}], got "
            f"[{','.join(map(str, tensor.shape))}]. The first dimension is the batch: [N, "
            f"{', '.join(map(str, expected))}] with N of at least 1")
    data = tensor.data
    assert isinstance(data, np.ndarray)
    return await pipeline.run_tensor(ticket, np.ascontiguousarray(data, dtype=spec.dtype), timeout_ms)


def output_tensors(served: ServedModel, requested: list[oip.RequestedOutput],
                   outputs: np.ndarray) -> list[oip.OutputTensor]:
    """The answer's tensors: logits, or top-k classes where the classification extension asks.

    Classification reports the output's own values, as Triton does (the logits of a model that
    ends in logits), never probabilities: ``/classify`` is the endpoint that answers softmax."""
    results = []
    for wanted in requested:
        if wanted.classification is not None:
            data = oip.classification_tensor(outputs, wanted.classification, served.labels)
            k = min(wanted.classification, outputs.shape[1])
            results.append(oip.OutputTensor(wanted.name, oip.BYTES, [outputs.shape[0], k], data, wanted.binary))
        else:
            results.append(oip.OutputTensor(wanted.name, "FP32", list(outputs.shape), outputs, wanted.binary))
    return results
