"""The gRPC adapter's pure parts: every domain error's status code, and ModelInferRequest decoding."""

from __future__ import annotations

import logging

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from resserve import errors
from resserve.server.error_responses import STATUS
from resserve.server.oip.wire import OutputTensor
from resserve.server.oip.grpc_codec import decode_request, encode_response
from resserve.server.oip.grpc_status import grpc_status

CODES = {
    errors.InvalidImageError("not a JPEG"): grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidRequestError("bad shape"): grpc.StatusCode.INVALID_ARGUMENT,
    errors.ConfigError("bad parameter"): grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnsupportedMediaTypeError("gif"): grpc.StatusCode.INVALID_ARGUMENT,
    errors.ImageTooLargeError("too many pixels"): grpc.StatusCode.INVALID_ARGUMENT,
    errors.PayloadTooLargeError("too large"): grpc.StatusCode.INVALID_ARGUMENT,
    errors.TooManyImagesError("5 images, at most 4"): grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnauthorizedError("no key"): grpc.StatusCode.UNAUTHENTICATED,
    errors.ForbiddenError("control disabled"): grpc.StatusCode.PERMISSION_DENIED,
    errors.ModelNotFoundError("no such model"): grpc.StatusCode.NOT_FOUND,
    errors.ConflictError("not with workers"): grpc.StatusCode.FAILED_PRECONDITION,
    errors.RequestTimeoutError("body too slow"): grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.DeadlineExceededError("deadline passed"): grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ClientDisconnectedError("gone"): grpc.StatusCode.CANCELLED,
    errors.QueueFullError("queue full", retry_after_s=2.6): grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ModelNotReadyError("loading", retry_after_s=0.2): grpc.StatusCode.UNAVAILABLE,
    errors.EngineError("engine raised"): grpc.StatusCode.INTERNAL,
}


def test_every_mapped_error_class_has_a_case() -> None:
    assert set(STATUS) <= {type(e) for e in CODES}


@pytest.mark.parametrize("exc", list(CODES), ids=lambda e: type(e).__name__)
def test_domain_errors_keep_their_message_and_get_their_code(exc: errors.ResserveError) -> None:
    code, message, _ = grpc_status(exc)
    assert code == CODES[exc] and message == str(exc)


def test_retryable_refusals_carry_retry_after_in_seconds() -> None:
    assert grpc_status(errors.QueueFullError("full", retry_after_s=2.6))[2] == (("retry-after", "3"),)
    assert grpc_status(errors.ModelNotReadyError("loading", retry_after_s=0.2))[2] == (("retry-after", "1"),)
    assert grpc_status(errors.InvalidRequestError("bad"))[2] == ()


def test_unexpected_errors_are_logged_and_answered_generically(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="resserve.server.oip.grpc_status"):
        code, message, trailers = grpc_status(KeyError("/secret/path"))
    assert (code, message, trailers) == (grpc.StatusCode.INTERNAL, "internal server error", ())
    assert caplog.records[0].exc_info is not None  # the traceback is in the log, not in the answer


def _request(**tensor: object) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m", id="r1")
    request.inputs.add(**tensor)
    return request


def test_raw_and_typed_fp32_decode_alike() -> None:
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    raw = _request(name="input", datatype="FP32", shape=[1, 6])
    raw.raw_input_contents.append(x.tobytes())
    typed = _request(name="input", datatype="FP32", shape=[1, 6])
    typed.inputs[0].contents.fp32_contents.extend(x.reshape(-1).tolist())
    for request in (raw, typed):
        parsed = decode_request(request, max_images=4)
        assert parsed.id == "r1" and parsed.inputs[0].name == "input"
        np.testing.assert_array_equal(parsed.inputs[0].data, x)


def test_bytes_elements_and_the_classification_parameter() -> None:
    request = _request(name="image", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(b"".join(len(b).to_bytes(4, "little") + b for b in (b"one", b"three")))
    wanted = request.outputs.add(name="logits")
    wanted.parameters["classification"].int64_param = 3
    parsed = decode_request(request, max_images=4)
    assert parsed.inputs[0].data == [b"one", b"three"]
    assert parsed.outputs[0].name == "logits" and parsed.outputs[0].classification == 3


def _fp32_request() -> service_pb2.ModelInferRequest:
    request = _request(name="input", datatype="FP32", shape=[1, 6])
    request.raw_input_contents.append(b"\0" * 24)
    return request


def test_malformed_requests_say_what_is_wrong() -> None:
    wrong_size = _fp32_request()
    wrong_size.inputs[0].shape.extend([7])
    two_blobs = _fp32_request()
    two_blobs.raw_input_contents.append(b"\0" * 24)
    shared = _fp32_request()
    shared.inputs[0].parameters["shared_memory_region"].string_param = "region"
    for request, says in ((wrong_size, "bytes"), (two_blobs, "raw_input_contents"), (shared, "shared memory")):
        with pytest.raises(errors.InvalidRequestError, match=says):
            decode_request(request, max_images=4)


def test_classification_must_be_a_positive_integer() -> None:
    request = _fp32_request()
    request.outputs.add(name="logits").parameters["classification"].int64_param = 0
    with pytest.raises(errors.InvalidRequestError, match="positive integer"):
        decode_request(request, max_images=4)


def test_too_many_images_is_refused_before_anything_is_decoded() -> None:
    request = _request(name="image", datatype="BYTES", shape=[5])
    request.raw_input_contents.append(b"".join((1).to_bytes(4, "little") + b"x" for _ in range(5)))
    with pytest.raises(errors.TooManyImagesError, match="at most 4"):
        decode_request(request, max_images=4)


def test_encode_response_puts_outputs_in_raw_output_contents() -> None:
    logits = np.array([[0.5, -1.0]], dtype=np.float32)
    response = encode_response("m", "1", "r1", [OutputTensor("logits", "FP32", list(logits.shape), logits)])
    assert (response.model_name, response.model_version, response.id) == ("m", "1", "r1")
    assert list(response.outputs[0].shape) == [1, 2] and not response.outputs[0].contents.fp32_contents
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4").reshape(1, 2), logits)


def test_outputs_are_counted_and_unique_before_the_inputs_are_decoded() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    for i in range(40_000):
        request.outputs.add(name=f"y{i}")
    with pytest.raises(errors.InvalidRequestError, match="40000 outputs requested, at most 8"):
        decode_request(request, max_images=4)
    del request.outputs[:]
    request.outputs.add(name="y")
    request.outputs.add(name="y")
    with pytest.raises(errors.InvalidRequestError, match="output 'y' already exists in request"):
        decode_request(request, max_images=4)
