"""The Open Inference Protocol v2 codec: JSON and binary forms, errors, and Triton's own client."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from resserve.errors import InvalidRequestError, TooManyImagesError
from resserve.server.oip.wire import (
    HEADER_LENGTH,
    OutputTensor,
    RequestedOutput,
    TensorMeta,
    build_infer_response,
    classification_tensor,
    finite_number,
    model_metadata,
    parse_header_length,
    parse_infer_request,
    server_metadata,
)


def _json(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def _binary_request(header: dict, *blobs: bytes) -> tuple[bytes, int]:
    head = _json(header)
    return head + b"".join(blobs), len(head)


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _split(body: bytes, headers: dict[str, str]) -> tuple[dict, bytes]:
    n = int(headers.get(HEADER_LENGTH, len(body)))
    return json.loads(body[:n]), body[n:]


def _rejects(match: str, body: bytes, header_length: int | None = None, **limits: int) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        parse_infer_request(body, header_length, **limits)


# --- requests -------------------------------------------------------------------------------


def test_json_request_round_trip_nested_and_flat() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    body = _json(
        {
            "id": "r1",
            "parameters": {"priority": 1},
            "inputs": [
                {"name": "nested", "shape": [2, 3], "datatype": "FP32", "data": x.tolist()},
                {"name": "flat", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]},
            ],
            "outputs": [{"name": "logits", "parameters": {"classification": 5}}],
        }
    )
    req = parse_infer_request(body, None)
    assert req.id == "r1" and req.parameters == {"priority": 1} and not req.binary_data_output
    nested, flat = req.inputs
    assert nested.shape == (2, 3) and nested.data.dtype == np.float32
    np.testing.assert_array_equal(nested.data, x)
    np.testing.assert_array_equal(flat.data, np.arange(1, 7).reshape(2, 3))
    assert req.outputs == [RequestedOutput("logits", binary=False, classification=5)]


def test_binary_request_round_trip_and_zero_copy() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    small = np.array([7, 8], dtype=np.uint8)
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": [2, 3, 4, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes},
            },
            {"name": "json", "shape": [1], "datatype": "FP16", "data": [0.5]},
            {"name": "small", "shape": [2], "datatype": "UINT8", "parameters": {"binary_data_size": 2}},
        ],
        "parameters": {"binary_data_output": True},
    }
    body, n = _binary_request(header, x.tobytes(), small.tobytes())
    req = parse_infer_request(body, n)
    np.testing.assert_array_equal(req.inputs[0].data, x)
    assert req.inputs[0].data.flags.writeable is False  # a view of the body, not a copy
    assert req.inputs[1].data.dtype == np.float16 and req.inputs[1].data.tolist() == [0.5]
    np.testing.assert_array_equal(req.inputs[2].data, small)
    assert req.binary_data_output and req.outputs == []


def test_bytes_binary_with_several_images() -> None:
    images = [b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b"", b"\xff\xd8\xff" * 1000]
    blob = _bytes_tensor(images)
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": [3],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(blob)},
            }
        ]
    }
    body, n = _binary_request(header, blob)
    assert parse_infer_request(body, n).inputs[0].data == images


def test_bytes_json_is_base64() -> None:
    images = [b"\x00\x01\xfe\xff", b"jpeg"]
    data = [base64.b64encode(b).decode() for b in images]
    body = _json({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": data}]})
    assert parse_infer_request(body, None).inputs[0].data == images
    bad = _json(
        {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [data[0], "not base64!"]}]}
    )
    _rejects(r"input 'image': element 1 is not a base64 string", bad)


def test_a_listed_output_is_binary_only_where_it_says_so() -> None:
    """Triton and KServe: the request's binary_data_output applies to outputs nobody listed; a
    listed output without binary_data is JSON."""
    body = _json(
        {
            "parameters": {"binary_data_output": True},
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
            "outputs": [
                {"name": "a"},
                {"name": "b", "parameters": {"binary_data": False, "classification": 3}},
                {"name": "c", "parameters": {"binary_data": True}},
            ],
        }
    )
    request = parse_infer_request(body, None)
    assert request.binary_data_output is True
    assert request.outputs == [
        RequestedOutput("a", False, None),
        RequestedOutput("b", False, 3),
        RequestedOutput("c", True, None),
    ]


@pytest.mark.parametrize("blobs", [[b"\x00" * 20], [b"\x00" * 28], [b"\x00" * 24, b"\x00"]])
def test_wrong_binary_sizes(blobs: list[bytes]) -> None:
    header = {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}]
    }
    body, n = _binary_request(header, *blobs)
    _rejects(r"inputs declare 24 bytes of binary data \(binary_data_size\), body has \d+", body, n)


def test_binary_size_disagreeing_with_shape() -> None:
    header = {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 20}}]
    }
    body, n = _binary_request(header, b"\x00" * 20)
    _rejects(r"input byte size mismatch for input 'x'. Expected 24, got 20 \(shape \[2,3\] of FP32 needs 24 bytes, "
             r"binary_data_size 20\)", body, n)


def test_bad_bytes_framing() -> None:
    for blob, match in [
        (struct.pack("<I", 10) + b"abc", r"element 0 declares 10 bytes, 3 remain"),
        (_bytes_tensor([b"a"]) + b"\x01\x00", r"element 1 has a truncated length prefix"),
        (_bytes_tensor([b"a", b"b", b"c"]), r"input 'img': 5 bytes are left over after the 2 elements its shape"),
        (_bytes_tensor([b"a"]), r"input 'img': shape \[2\] needs 2 elements, the data holds 1"),
    ]:
        header = {
            "inputs": [
                {
                    "name": "img",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
        _rejects(match, *_binary_request(header, blob))


def test_bytes_framing_stops_at_the_declared_count() -> None:
    """5 M empty elements (20 MiB) behind a shape of [2]: the loop frames two and rejects the rest."""
    blob = b"\x00" * (20 * 1024 * 1024)
    header = {"inputs": [{"name": "img", "shape": [2], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(blob)}}]}
    # The old loop built 5 M bytes objects here before it counted them (seconds of event loop).
    _rejects(r"20971512 bytes are left over after the 2 elements", *_binary_request(header, blob))


def test_bytes_elements_capped_before_decoding() -> None:
    header = {"inputs": [{"name": "img", "shape": [65], "datatype": "BYTES",
                          "data": ["!not base64!"] * 65}]}
    with pytest.raises(TooManyImagesError, match=r"declares 65 images; at most 64 per request"):
        parse_infer_request(_json(header), None, max_images=64)
    # Within the cap the elements are decoded, and the bad base64 is what fails.
    header["inputs"][0]["shape"] = [64]
    header["inputs"][0]["data"] = ["!not base64!"] * 64
    _rejects("element 0 is not a base64 string", _json(header), None)
    # A tensor's images are its first dimension.
    tensor = {"inputs": [{"name": "x", "shape": [65, 2], "datatype": "FP32", "data": [0.0] * 130}]}
    with pytest.raises(TooManyImagesError, match=r"declares 65 images"):
        parse_infer_request(_json(tensor), None, max_images=64)


def test_huge_dimensions_are_refused() -> None:
    for shape in ([10**400], [1, 2**31], [2**63, 0]):
        body = _json({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": []}]})
        _rejects(r"shape has a dimension of \d+, above 2147483647", body)


def test_finite_number() -> None:
    assert finite_number(5) == 5.0 and finite_number(2.5) == 2.5
    for bad in (10**400, True, "5", None, float("inf"), float("nan"), [1]):
        assert finite_number(bad) is None


def test_header_length_problems() -> None:
    header = {
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]
    }
    body, n = _binary_request(header, b"\x00" * 4)
    _rejects(r"failed to parse the request JSON buffer: Extra data.*needs the Inference-Header-Content-Length header",
             body, None)
    _rejects(
        r"declare binary_data_size but the request has no Inference-Header-Content-Length", _json(header)
    )
    _rejects(r"inference header size should be in range \(0, [0-9]+\), got: 9999", body, 9999)
    _rejects(r"failed to parse the request JSON buffer", body, n - 1)
    assert parse_header_length(None) is None and parse_header_length(" 42") == 42
    with pytest.raises(InvalidRequestError, match="must be an integer"):
        parse_header_length("4x")


def test_element_count_mismatch() -> None:
    body = _json({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]})
    _rejects(r"^input 'x': shape \[2,3\] needs 6 elements, got 5$", body)
    ragged = _json({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}]})
    _rejects(r"rectangular", ragged)


@pytest.mark.parametrize(
    ("datatype", "data", "match"),
    [
        ("FP32", [1.0, float("nan")], r"input 'x': FP32 data must be finite, element 1 is nan"),
        ("FP32", [float("inf"), 1.0], r"element 0 is inf"),
        ("FP16", [1e6, 1.0], r"FP16 data must be finite, element 0 is inf"),  # overflows the cast
        ("FP32", ["1.5", "2"], r"FP32 data must be numbers"),
        ("FP32", [True, False], r"FP32 data must be numbers"),
        ("INT32", [1.5, 2], r"INT32 data must be integers"),
        ("UINT8", [255, 256], r"outside UINT8 \[0, 255\]"),
    ],
)
def test_bad_json_values(datatype: str, data: list, match: str) -> None:
    _rejects(match, _json({"inputs": [{"name": "x", "shape": [2], "datatype": datatype, "data": data}]}))


def test_nan_in_binary_input() -> None:
    x = np.array([0.0, np.nan, 1.0], dtype=np.float32)
    header = {
        "inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]
    }
    _rejects(r"input 'x': FP32 data must be finite, element 1 is nan", *_binary_request(header, x.tobytes()))


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        ({"datatype": "BF16"}, r"input 'x': datatype 'BF16' is not supported"),
        ({"datatype": None}, r"datatype None is not supported"),
        ({"shape": [2, -1]}, r"input 'x': shape \[2,-1\] has a negative dimension \(-1\)"),
        ({"shape": [2, True]}, r"'shape' must be a list of integers"),
        ({"shape": [1] * 17}, r"17 dimensions"),
        ({"parameters": {"binary_data_size": 4}}, r"exactly one of 'data' and parameters.binary_data_size"),
        ({"parameters": {"shared_memory_region": "r"}}, r"shared memory is not supported"),
        ({"name": ""}, r"inputs\[0\] must be an object with a non-empty 'name'"),
    ],
)
def test_bad_input_headers(tensor: dict, match: str) -> None:
    base = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}
    _rejects(match, _json({"inputs": [base | tensor]}))


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3"])
def test_bad_classification_parameter(value: object) -> None:
    body = _json(
        {
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
            "outputs": [{"name": "logits", "parameters": {"classification": value}}],
        }
    )
    _rejects(rf"output 'logits': classification must be a positive integer, got {value!r}", body)


def test_bad_request_shapes() -> None:
    one = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}
    _rejects(r"request header must be a JSON object", b"[1]")
    _rejects(r"failed to parse the request JSON buffer", b"{")
    _rejects(r"expected 1 inputs but got 0 inputs: 'inputs' must be a non-empty list", _json({"inputs": []}))
    _rejects(r"'id' must be a string", _json({"id": 3, "inputs": [one]}))
    _rejects(r"input 'x' already exists in request", _json({"inputs": [one, one]}))
    _rejects(r"9 inputs, at most 8", _json({"inputs": [one | {"name": f"x{i}"} for i in range(9)]}))
    _rejects(
        r"3 inputs, at most 2", _json({"inputs": [one | {"name": f"x{i}"} for i in range(3)]}), max_inputs=2
    )
    _rejects(
        r"binary_data_output must be true or false",
        _json({"inputs": [one], "parameters": {"binary_data_output": 1}}),
    )
    _rejects(
        r"output 'y' already exists in request",
        _json({"inputs": [one], "outputs": [{"name": "y"}, {"name": "y"}]}),
    )


def test_too_many_elements_refused_before_allocating() -> None:
    # 10**12 FP32 elements would be 4 TB: the shape alone must be refused, whatever the data.
    huge = {"name": "x", "shape": [10**6, 10**6], "datatype": "FP32", "parameters": {"binary_data_size": 4}}
    _rejects(
        r"input 'x': shape \[1000000,1000000\] has 1000000000000 elements, more than the limit",
        *_binary_request({"inputs": [huge]}, b"\x00" * 4),
    )
    pair = [{"name": f"x{i}", "shape": [6], "datatype": "FP32", "data": [0] * 6} for i in range(2)]
    _rejects(r"the inputs have 12 elements in all, more than 10", _json({"inputs": pair}), max_elements=10)


# --- responses ------------------------------------------------------------------------------


def test_json_response() -> None:
    logits = np.array([[0.5, -1.25, 2.0]], dtype=np.float32)
    body, headers = build_infer_response(
        "resnet50", "1", "r1", [OutputTensor("logits", "FP32", [1, 3], logits)]
    )
    assert headers == {"Content-Type": "application/json"}
    assert b" " not in body  # compact
    assert json.loads(body) == {
        "model_name": "resnet50",
        "model_version": "1",
        "id": "r1",
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 3], "data": [0.5, -1.25, 2.0]}],
    }
    body, _ = build_infer_response("m", "1", None, [OutputTensor("c", "BYTES", [1], [b"0.5:1:cat"])])
    assert "id" not in json.loads(body) and json.loads(body)["outputs"][0]["data"] == ["0.5:1:cat"]


def test_binary_response_layout_parsed_back() -> None:
    logits = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    classes = [b"0.9:3:dog", b"0.1:0:cat", b"1.0:4:eel", b"0.5:1:cat"]
    body, headers = build_infer_response(
        "m",
        "2",
        None,
        [
            OutputTensor("logits", "FP32", [2, 5], logits, binary=True),
            OutputTensor("json", "INT64", [2], np.array([1, 2])),
            OutputTensor("classes", "BYTES", [2, 2], classes, binary=True),
        ],
    )
    assert headers["Content-Type"] == "application/octet-stream"
    header, rest = _split(body, headers)
    sizes = [o.get("parameters", {}).get("binary_data_size") for o in header["outputs"]]
    assert sizes == [40, None, len(_bytes_tensor(classes))]
    assert header["outputs"][1]["data"] == [1, 2]
    np.testing.assert_array_equal(np.frombuffer(rest[:40], dtype="<f4").reshape(2, 5), logits)
    assert rest[40:] == _bytes_tensor(classes)


def test_response_rejects_server_mistakes() -> None:
    with pytest.raises(ValueError, match="5 values for shape"):
        build_infer_response("m", "1", None, [OutputTensor("x", "FP32", [2, 3], np.zeros(5))])
    with pytest.raises(ValueError, match="not JSON compliant"):
        build_infer_response("m", "1", None, [OutputTensor("x", "FP32", [1], np.array([np.nan]))])


def test_classification_tensor_format_and_order() -> None:
    scores = np.array([[0.1, 3.5, -2.0, 3.5], [9.0, 1.0, 2.0, 0.0]], dtype=np.float32)
    labels = ["cat", "dog", "", "eel"]
    assert classification_tensor(scores, 2, labels) == [
        b"3.500000:1:dog",
        b"3.500000:3:eel",
        b"9.000000:0:cat",
        b"2.000000:2",
    ]
    assert len(classification_tensor(scores, 10, labels)) == 2 * 4  # k clamped to the class count
    assert classification_tensor(scores[:1], 1, []) == [b"3.500000:1"]  # no labels: Triton's "value:index"
    with pytest.raises(ValueError, match="positive"):
        classification_tensor(scores, 0, labels)


def test_metadata_bodies() -> None:
    assert server_metadata("0.1.0", ["classification", "binary_tensor_data"]) == {
        "name": "resserve",
        "version": "0.1.0",
        "extensions": ["classification", "binary_tensor_data"],
    }
    meta = model_metadata(
        "resnet50",
        ["1"],
        "onnxruntime_onnx",
        [TensorMeta("input", "FP32", [-1, 3, 224, 224])],
        [TensorMeta("logits", "FP32", (-1, 1000))],
    )
    assert meta == {
        "name": "resnet50",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}],
    }


# --- Triton's own client --------------------------------------------------------------------


def _tritonclient():  # type: ignore[no-untyped-def]
    return pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")


def test_tritonclient_binary_request_with_classification() -> None:
    http = _tritonclient()
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    inp = http.InferInput("input", list(x.shape), "FP32").set_data_from_numpy(x, binary_data=True)
    out = http.InferRequestedOutput("logits", binary_data=True, class_count=3)
    body, json_size = http.InferenceServerClient.generate_request_body([inp], outputs=[out], request_id="abc")
    req = parse_infer_request(body, json_size)
    assert req.id == "abc" and req.inputs[0].shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(req.inputs[0].data, x)
    assert req.outputs == [RequestedOutput("logits", binary=True, classification=3)]


def test_tritonclient_json_request_and_no_outputs() -> None:
    http = _tritonclient()
    x = np.arange(12, dtype=np.float32).reshape(1, 12) / 8
    inp = http.InferInput("input", [1, 12], "FP32").set_data_from_numpy(x, binary_data=False)
    body, json_size = http.InferenceServerClient.generate_request_body([inp])
    assert json_size is None  # all JSON: no header-length header
    req = parse_infer_request(body, json_size)
    np.testing.assert_array_equal(req.inputs[0].data, x)
    assert req.binary_data_output and req.outputs == []  # the client asks for every output, binary


def test_tritonclient_bytes_images() -> None:
    http = _tritonclient()
    images = np.array([b"\xff\xd8jpeg\x00", b"\x89PNG\x00\x00", b""], dtype=np.object_)
    inp = http.InferInput("image", [3], "BYTES").set_data_from_numpy(images, binary_data=True)
    body, json_size = http.InferenceServerClient.generate_request_body(
        [inp], outputs=[http.InferRequestedOutput("logits")]
    )
    assert parse_infer_request(body, json_size).inputs[0].data == list(images)


def test_tritonclient_decodes_our_responses() -> None:
    http = _tritonclient()
    logits = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    top = classification_tensor(logits, 2, ["a", "b", "c", "d"])
    for binary in (True, False):
        body, headers = build_infer_response(
            "m",
            "1",
            "id7",
            [
                OutputTensor("logits", "FP32", [2, 4], logits, binary),
                OutputTensor("top", "BYTES", [2, 2], top, binary),
            ],
        )
        length = headers.get(HEADER_LENGTH)
        result = http.InferResult.from_response_body(
            body, verbose=False, header_length=None if length is None else int(length)
        )
        np.testing.assert_array_equal(result.as_numpy("logits"), logits)
        got = result.as_numpy("top")
        assert got.shape == (2, 2)
        # Binary BYTES come back as bytes, JSON ones as str: that is tritonclient's behaviour.
        assert [v if isinstance(v, bytes) else v.encode() for v in got.reshape(-1)] == top
        assert result.get_response()["id"] == "id7"


def test_forty_thousand_outputs_are_refused_by_their_count_before_any_is_read() -> None:
    """The attack (issue 30): 40,000 outputs with one duplicate (771 KiB) cost 14 s of parsing, the
    duplicate search being quadratic; now the count is refused first, and duplicates are one pass."""
    one = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}
    outputs = [{"name": f"y{i}"} for i in range(40_000)] + [{"name": "y0"}]
    _rejects(r"40001 outputs requested, at most 8 are accepted", _json({"inputs": [one], "outputs": outputs}))
    # Within the limit a duplicate is still found, wherever it is.
    _rejects(r"output 'y3' already exists in request",
             _json({"inputs": [one], "outputs": [{"name": f"y{i}"} for i in range(7)] + [{"name": "y3"}]}))
    # The outputs are checked before the inputs are decoded: a bad output list allocates nothing.
    huge = {"name": "x", "shape": [1 << 20], "datatype": "FP32", "data": [1] * 3}
    _rejects(r"9 outputs requested", _json({"inputs": [huge], "outputs": [{"name": f"y{i}"} for i in range(9)]}))
