"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) codec. Pure: no FastAPI, no HTTP library.

Tested against Triton's own client, `tritonclient.http`. Wire format (Triton's binary tensor
extension): a JSON header, optionally followed by raw tensor bytes; the header's length travels in
the `Inference-Header-Content-Length` HTTP header, each binary tensor gives its size in
`parameters.binary_data_size`, and the blobs follow in the order of the tensors that declare one.
Numbers are little-endian. A BYTES tensor is its elements, each a 4-byte little-endian length then
the bytes. OIP's JSON has strings, not bytes, so JSON BYTES inputs are a flat list of base64
strings (what Triton clients send for images); JSON BYTES outputs are UTF-8 strings (classes).
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resserve.errors import InvalidRequestError, TooManyImagesError

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"  # what Triton sends when a binary part follows

# Explicit byte order: "<f4" stays little-endian on a big-endian host, where float32 would not.
_FLOATS = {"FP32": "<f4", "FP16": "<f2", "FP64": "<f8"}
_INTS = {"UINT8": "u1", "INT8": "i1", "INT32": "<i4", "INT64": "<i8"}
NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(code) for name, code in (_FLOATS | _INTS).items()}
BYTES = "BYTES"
DATATYPES: tuple[str, ...] = (*NUMERIC_DTYPES, BYTES)
DEFAULT_MAX_INPUTS = 8
DEFAULT_MAX_OUTPUTS = 8  # a classifier has one output; the count is checked before any output is read
# 2**26 elements = 256 MiB of FP32, ~445 images at 3x224x224: far above any sane batch, far below
# what would hurt the process. Checked on the declared shapes, before anything is allocated.
DEFAULT_MAX_ELEMENTS = 1 << 26
MAX_RANK = 16  # numpy stops at 64 dimensions; image models need a handful
MAX_DIMENSION = 2**31 - 1  # Triton's dims are int64, but no tensor here has a side above int32

_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class InputTensor:
    """A decoded input: an array of `shape` (binary ones are read-only views of the body, no copy),
    or for BYTES a flat list of prod(shape) byte strings."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for: binary or JSON, top-k classification instead of the tensor."""

    name: str
    binary: bool
    classification: int | None = None


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A parsed request. Empty `outputs` means "every output", each binary iff `binary_data_output`
    (tritonclient sets that parameter when its caller names no outputs)."""

    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput]
    binary_data_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutputTensor:
    """An output to send: a numpy array, or for BYTES a flat list of prod(shape) byte strings."""

    name: str
    datatype: str
    shape: Sequence[int]
    data: np.ndarray | list[bytes]
    binary: bool = False


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """A tensor in model metadata; -1 marks a dynamic dimension (the batch)."""

    name: str
    datatype: str
    shape: Sequence[int]


@dataclass(frozen=True, slots=True)
class _InputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    count: int
    binary_size: int | None
    data: Any


def parse_header_length(value: str | None) -> int | None:
    """The `Inference-Header-Content-Length` header's value as an int (None when absent)."""
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        raise InvalidRequestError(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None


@dataclass(frozen=True, slots=True)
class InferHeader:
    """A request whose JSON header is read and checked and whose inputs are not yet decoded:
    ``images`` is what they declare, so admission can take its places before any element is
    converted (:func:`read_infer_header`, then :func:`decode_inputs`)."""

    id: str | None
    specs: list[_InputSpec]
    outputs: list[RequestedOutput]
    binary_output: bool
    parameters: dict[str, Any]
    binary: memoryview
    images: int


def parse_infer_request(
    body: bytes,
    header_length: int | None,
    *,
    max_inputs: int = DEFAULT_MAX_INPUTS,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_images: int | None = None,
) -> InferRequest:
    """Decode an infer request body; InvalidRequestError says exactly what is wrong."""
    return decode_inputs(read_infer_header(body, header_length, max_inputs=max_inputs, max_elements=max_elements,
                                           max_images=max_images))


def read_infer_header(
    body: bytes,
    header_length: int | None,
    *,
    max_inputs: int = DEFAULT_MAX_INPUTS,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_images: int | None = None,
) -> InferHeader:
    """Read and check a request's JSON header: every input's name, datatype, shape and size, the
    outputs, and the binary framing. Nothing is decoded yet.

    ``max_images`` caps the images of an input: the elements of a BYTES input (encoded images,
    each of which costs a decode), the first (batch) dimension of a numeric one. Checked on the
    declared shape, before any element is framed, base64-decoded or converted.
    """
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[len(view) :]
    elif 0 < header_length <= len(view):
        header, binary = view[:header_length], view[header_length:]
    else:
        raise InvalidRequestError(f"inference header size should be in range (0, {len(view)}), got: {header_length}")
    try:
        doc = json.loads(bytes(header))
    except RecursionError:
        raise InvalidRequestError("JSON nesting depth exceeds maximum allowed limit") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        # The classic mistake: binary tensors after the JSON, but no header to say where it ends.
        extra = isinstance(exc, json.JSONDecodeError) and exc.msg == "Extra data" and header_length is None
        hint = f" (binary data needs the {HEADER_LENGTH} header)" if extra else ""
        raise InvalidRequestError(f"failed to parse the request JSON buffer: {exc}{hint}") from None
    if not isinstance(doc, dict):
        raise InvalidRequestError("request header must be a JSON object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequestError(f"'id' must be a string, got {request_id!r}")
    parameters = _parameters(doc, "request")
    binary_output = _flag(parameters, "binary_data_output", False, "request")

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequestError("expected 1 inputs but got 0 inputs: 'inputs' must be a non-empty list")
    if len(raw_inputs) > max_inputs:
        raise InvalidRequestError(f"{len(raw_inputs)} inputs, at most {max_inputs} are accepted")
    # Validate every header, shape and size before decoding anything: a bad request allocates nothing.
    outputs = _requested_outputs(doc.get("outputs"))
    specs = [_input_spec(raw, i) for i, raw in enumerate(raw_inputs)]
    _check_unique([s.name for s in specs], "input")
    for spec in specs:
        if spec.count > max_elements:
            msg = f"shape {_fmt(spec.shape)} has {spec.count} elements, more than the limit of {max_elements}"
            raise InvalidRequestError(f"input '{spec.name}': {msg}")
        if max_images is not None and (images := _images(spec)) > max_images:
            raise TooManyImagesError(f"input '{spec.name}': shape {_fmt(spec.shape)} declares {images} "
                                     f"images; at most {max_images} per request (max_images_per_request)")
    if (total := sum(s.count for s in specs)) > max_elements:
        raise InvalidRequestError(f"the inputs have {total} elements in all, more than {max_elements}")
    sizes = [s.binary_size for s in specs if s.binary_size is not None]
    if sizes and header_length is None:
        raise InvalidRequestError(f"inputs declare binary_data_size but the request has no {HEADER_LENGTH}")
    if sum(sizes) != len(binary):
        msg = f"inputs declare {sum(sizes)} bytes of binary data (binary_data_size), body has {len(binary)}"
        raise InvalidRequestError(msg)
    return InferHeader(request_id, specs, outputs, binary_output, parameters, binary,
                       sum(_images(spec) for spec in specs))


def raw_request_header(body: bytes, name: str, datatype: str, dims: Sequence[int]) -> InferHeader:
    """Triton's raw binary request (``Inference-Header-Content-Length: 0``): the whole body is the
    model's one input, named and typed as its metadata says, of shape ``[1] + dims`` (every model
    here batches); every output comes back binary (nobody asked for JSON)."""
    shape = (1, *dims)
    spec = _InputSpec(name, datatype, shape, math.prod(shape), len(body), None)
    return InferHeader(None, [spec], [], True, {}, memoryview(body), _images(spec))


def decode_inputs(header: InferHeader) -> InferRequest:
    """The inputs of a checked header as arrays (or encoded images): base64, framing, conversion."""
    inputs: list[InputTensor] = []
    offset = 0
    for spec in header.specs:
        if spec.binary_size is None:
            data = _decode_json(spec)
        else:
            data = _decode_binary(spec, header.binary[offset : offset + spec.binary_size])
            offset += spec.binary_size
        inputs.append(InputTensor(spec.name, spec.datatype, spec.shape, data))
    return InferRequest(header.id, inputs, header.outputs, header.binary_output, header.parameters)


def declared_images(datatype: str, shape: Sequence[int]) -> int:
    """The images an input declares (BYTES: its elements; a tensor: its first dimension), from its
    shape alone; 0 for a shape that decoding refuses anyway (too many dimensions, a negative or
    huge one), so the caller's error comes from the decoder."""
    if len(shape) > MAX_RANK or any(d < 0 or d > MAX_DIMENSION for d in shape):
        return 0
    if datatype == BYTES:
        return math.prod(shape)
    return shape[0] if shape else 1


def decode_tensor(name: str, datatype: str, shape: Sequence[int], *, raw: bytes | None = None,
                  values: Sequence[Any] | None = None, max_elements: int = DEFAULT_MAX_ELEMENTS,
                  max_images: int | None = None) -> InputTensor:
    """One input as gRPC carries it: raw bytes in the binary framing (``raw_input_contents``), or
    typed values (numbers; for BYTES the byte strings). The same checks as a JSON header's input,
    shape and size first."""
    what = f"input '{name}'"
    if not name:
        raise InvalidRequestError("an input needs a non-empty name")
    if datatype not in DATATYPES:
        raise InvalidRequestError(f"{what}: datatype {datatype!r} is not supported ({', '.join(DATATYPES)})")
    dims = _shape([int(d) for d in shape], what)
    spec = _InputSpec(name, datatype, dims, math.prod(dims), None if raw is None else len(raw), values)
    if spec.count > max_elements:
        raise InvalidRequestError(f"{what}: shape {_fmt(dims)} has {spec.count} elements, more than the limit "
                                  f"of {max_elements}")
    if max_images is not None and (images := _images(spec)) > max_images:
        raise TooManyImagesError(f"{what}: shape {_fmt(dims)} declares {images} images; at most {max_images} "
                                 f"per request (max_images_per_request)")
    if raw is not None:
        return InputTensor(name, datatype, dims, _decode_binary(spec, memoryview(raw)))
    if datatype == BYTES:
        items = [bytes(v) for v in values or ()]
        _check_count(what, spec, len(items))
        return InputTensor(name, datatype, dims, items)
    return InputTensor(name, datatype, dims, _decode_json(_InputSpec(name, datatype, dims, spec.count, None,
                                                                     list(values or ()))))


def raw_bytes(out: OutputTensor) -> bytes:
    """An output in the binary framing: little-endian numbers, or length-prefixed BYTES elements."""
    count = math.prod(int(d) for d in out.shape)
    if out.datatype == BYTES:
        items = list(out.data)
        if len(items) != count or not all(isinstance(b, bytes) for b in items):
            raise ValueError(f"output {out.name!r}: shape {_fmt(out.shape)} needs {count} bytes objects")
        return b"".join(_LENGTH.pack(len(b)) + b for b in items)
    if out.datatype not in NUMERIC_DTYPES:
        raise ValueError(f"output {out.name!r}: datatype {out.datatype!r} is not supported")
    array = np.ascontiguousarray(out.data, dtype=NUMERIC_DTYPES[out.datatype])
    if array.size != count:
        raise ValueError(f"output {out.name!r}: {array.size} values for shape {_fmt(out.shape)}")
    return array.tobytes()


def _images(spec: _InputSpec) -> int:
    """How many images a checked input carries: BYTES elements, or the batch dimension of a tensor."""
    return declared_images(spec.datatype, spec.shape)


def _input_spec(raw: Any, index: int) -> _InputSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise InvalidRequestError(f"inputs[{index}] must be an object with a non-empty 'name'")
    what = f"input '{raw['name']}'"
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidRequestError(f"{what}: datatype {datatype!r} is not supported ({', '.join(DATATYPES)})")
    shape = _shape(raw.get("shape"), what)
    params = _parameters(raw, what)
    if "shared_memory_region" in params:
        raise InvalidRequestError(f"{what}: shared memory is not supported, send the data in the body")
    size = params.get("binary_data_size")
    if size is not None and (not _is_int(size) or size < 0):
        raise InvalidRequestError(f"{what}: binary_data_size must be a non-negative integer, got {size!r}")
    if (size is None) == ("data" not in raw):
        raise InvalidRequestError(f"{what}: needs exactly one of 'data' and parameters.binary_data_size")
    return _InputSpec(raw["name"], datatype, shape, math.prod(shape), size, raw.get("data"))


def _decode_binary(spec: _InputSpec, chunk: memoryview) -> np.ndarray | list[bytes]:
    what = f"input '{spec.name}'"
    if spec.datatype == BYTES:
        # Exactly the declared elements and not one more: the loop never runs past spec.count,
        # which max_elements bounded, however many empty elements the body could hold.
        items: list[bytes] = []
        offset = 0
        for index in range(spec.count):
            if offset + 4 > len(chunk):
                if offset == len(chunk):
                    raise InvalidRequestError(f"{what}: shape {_fmt(spec.shape)} needs {spec.count} "
                                              f"elements, the data holds {index}")
                raise InvalidRequestError(f"{what}: BYTES element {index} has a truncated length prefix")
            (length,) = _LENGTH.unpack_from(chunk, offset)
            offset += 4
            if offset + length > len(chunk):
                msg = f"BYTES element {index} declares {length} bytes, {len(chunk) - offset} remain"
                raise InvalidRequestError(f"{what}: {msg}")
            items.append(bytes(chunk[offset : offset + length]))
            offset += length
        if offset != len(chunk):
            raise InvalidRequestError(f"{what}: {len(chunk) - offset} bytes are left over after the "
                                      f"{spec.count} elements its shape {_fmt(spec.shape)} declares")
        return items
    dtype = NUMERIC_DTYPES[spec.datatype]
    if len(chunk) != (need := spec.count * dtype.itemsize):
        msg = f"shape {_fmt(spec.shape)} of {spec.datatype} needs {need} bytes, binary_data_size {len(chunk)}"
        raise InvalidRequestError(f"input byte size mismatch for input '{spec.name}'. Expected {need}, got "
                                  f"{len(chunk)} ({msg})")
    return _finite(what, spec.datatype, np.frombuffer(chunk, dtype=dtype).reshape(spec.shape))


def _decode_json(spec: _InputSpec) -> np.ndarray | list[bytes]:
    what = f"input '{spec.name}'"
    if not isinstance(spec.data, list):
        raise InvalidRequestError(f"{what}: 'data' must be a list")
    if spec.datatype == BYTES:
        _check_count(what, spec, len(spec.data))
        decoded: list[bytes] = []
        for i, text in enumerate(spec.data):
            try:
                decoded.append(base64.b64decode(text, validate=True))
            except (ValueError, TypeError):  # binascii.Error, non-ASCII, or not a string at all
                msg = f"element {i} is not a base64 string (JSON BYTES inputs are base64-encoded bytes)"
                raise InvalidRequestError(f"{what}: {msg}") from None
        return decoded
    dtype = NUMERIC_DTYPES[spec.datatype]
    try:  # one C call for flat or nested lists; ragged nesting raises ValueError
        array = np.asarray(spec.data)
    except (ValueError, TypeError, RecursionError):
        raise InvalidRequestError(f"{what}: 'data' must be a flat or rectangular nested list") from None
    _check_count(what, spec, array.size)
    if array.size == 0:
        return np.zeros(spec.shape, dtype=dtype)
    # The kind check stops numpy from quietly turning "1.5" strings or true/false into numbers.
    wanted = "numbers" if dtype.kind == "f" else "integers"
    if array.dtype.kind not in ("iuf" if dtype.kind == "f" else "iu"):
        raise InvalidRequestError(f"{what}: {spec.datatype} data must be {wanted} (within 64 bits)")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if int(array.min()) < info.min or int(array.max()) > info.max:  # astype would wrap silently
            raise InvalidRequestError(f"{what}: a value is outside {spec.datatype} [{info.min}, {info.max}]")
    with np.errstate(over="ignore"):  # a value that overflows FP16 becomes Inf, which _finite reports
        return _finite(what, spec.datatype, array.astype(dtype).reshape(spec.shape))


def _finite(what: str, datatype: str, array: np.ndarray) -> np.ndarray:
    # NaN/Inf would reach the client as garbage scores, never as an error: refuse them here.
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        flat = array.reshape(-1)
        bad = int(np.flatnonzero(~np.isfinite(flat))[0])
        raise InvalidRequestError(f"{what}: {datatype} data must be finite, element {bad} is {flat[bad]}")
    return array


def _requested_outputs(raw: Any) -> list[RequestedOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequestError("'outputs' must be a list")
    check_output_count(len(raw))
    outputs: list[RequestedOutput] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise InvalidRequestError(f"outputs[{index}] must be an object with a non-empty 'name'")
        what = f"output '{item['name']}'"
        params = _parameters(item, what)
        if "shared_memory_region" in params:
            raise InvalidRequestError(f"{what}: shared memory is not supported")
        # A listed output is binary only where it says so (Triton and KServe): the request's
        # binary_data_output applies to the outputs nobody listed.
        binary = _flag(params, "binary_data", False, what)
        classes = params.get("classification")
        if classes is not None and (not _is_int(classes) or classes < 1):
            raise InvalidRequestError(f"{what}: classification must be a positive integer, got {classes!r}")
        outputs.append(RequestedOutput(item["name"], binary, classes))
    _check_unique([o.name for o in outputs], "output")
    return outputs


def build_infer_response(
    model_name: str, model_version: str, request_id: str | None, outputs: Sequence[OutputTensor]
) -> tuple[bytes, dict[str, str]]:
    """The response body and the headers to add (Content-Type; the header length when binary).

    Raises ValueError on server-side mistakes (data that does not match its shape or datatype,
    non-UTF-8 BYTES or NaN/Inf in a JSON output): a 500, not the client's fault.
    """
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in outputs:
        shape = [int(d) for d in out.shape]
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": shape}
        if out.binary:
            blob = raw_bytes(out)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(out, math.prod(shape))
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    header = _dumps(doc)
    if not blobs:
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    return header + b"".join(blobs), {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(header))}


def _json_data(out: OutputTensor, count: int) -> list[Any]:
    if out.datatype == BYTES:
        items = list(out.data)
        if len(items) != count or not all(isinstance(b, bytes) for b in items):
            raise ValueError(f"output {out.name!r}: shape {_fmt(out.shape)} needs {count} bytes objects")
        return [b.decode("utf-8") for b in items]
    if out.datatype not in NUMERIC_DTYPES:
        raise ValueError(f"output {out.name!r}: datatype {out.datatype!r} is not supported")
    array = np.ascontiguousarray(out.data, dtype=NUMERIC_DTYPES[out.datatype])
    if array.size != count:
        raise ValueError(f"output {out.name!r}: {array.size} values for shape {_fmt(out.shape)}")
    return array.reshape(-1).tolist()  # type: ignore[no-any-return]


def classification_tensor(scores: np.ndarray, k: int, labels: Sequence[str]) -> list[bytes]:
    """Triton's classification extension: each row of `scores` (batch, classes: the output's own
    values) gives its top k as b"value:index:label", best first, row-major; the output's shape is
    [batch, min(k, classes)].

    Triton's format exactly (`std::to_string(value) + ":" + index [+ ":" + label]`): the value
    with 6 decimals, and no ":label" part where an index has no label. Ties: lower index first.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (batch, classes), got shape {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]
    result: list[bytes] = []
    for row, indices in zip(scores, order, strict=True):
        for index in indices.tolist():
            label = labels[index] if index < len(labels) else ""
            result.append((f"{row[index]:f}:{index}" + (f":{label}" if label else "")).encode("utf-8"))
    return result


def server_metadata(version: str, extensions: list[str]) -> dict[str, Any]:
    """The body of `GET /v2`."""
    return {"name": "resserve", "version": version, "extensions": list(extensions)}


def model_metadata(
    name: str, versions: list[str], platform: str, inputs: list[TensorMeta], outputs: list[TensorMeta]
) -> dict[str, Any]:
    """The body of `GET /v2/models/{name}[/versions/{version}]`."""

    def tensors(metas: list[TensorMeta]) -> list[dict[str, Any]]:
        return [{"name": m.name, "datatype": m.datatype, "shape": [int(d) for d in m.shape]} for m in metas]

    meta = {"name": name, "versions": list(versions), "platform": platform}
    return meta | {"inputs": tensors(inputs), "outputs": tensors(outputs)}


def _dumps(doc: Any) -> bytes:
    # Compact; ASCII-only, so that the header length in bytes equals its length in characters
    # (tritonclient computes it from the str); strict, since NaN/Infinity are not JSON.
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("ascii")


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidRequestError(f"{what}: 'parameters' must be an object")
    return params


def _flag(params: dict[str, Any], key: str, default: bool, what: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{what}: {key} must be true or false, got {value!r}")
    return value


def _shape(raw: Any, what: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(_is_int(d) for d in raw):
        raise InvalidRequestError(f"{what}: 'shape' must be a list of integers, got {raw!r}")
    if len(raw) > MAX_RANK:
        raise InvalidRequestError(f"{what}: shape has {len(raw)} dimensions, at most {MAX_RANK} are accepted")
    if negative := [d for d in raw if d < 0]:
        raise InvalidRequestError(f"{what}: shape {_fmt(raw)} has a negative dimension ({negative[0]})")
    if huge := [d for d in raw if d > MAX_DIMENSION]:
        raise InvalidRequestError(f"{what}: shape has a dimension of {huge[0]}, above {MAX_DIMENSION}")
    return tuple(raw)


def _check_count(what: str, spec: _InputSpec, got: int) -> None:
    if got != spec.count:
        raise InvalidRequestError(f"{what}: shape {_fmt(spec.shape)} needs {spec.count} elements, got {got}")


def _check_unique(names: list[str], kind: str) -> None:
    """One pass with a set: the first name seen twice is the error (a quadratic search here let
    one 771 KiB body of 40,000 outputs cost 14 s of parsing)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidRequestError(f"{kind} '{name}' already exists in request")
        seen.add(name)


def check_output_count(count: int, limit: int = DEFAULT_MAX_OUTPUTS) -> None:
    """Refuse more requested outputs than any model here has, before reading one of them."""
    if count > limit:
        raise InvalidRequestError(f"{count} outputs requested, at most {limit} are accepted")


def check_unique_outputs(names: list[str]) -> None:
    _check_unique(names, "output")


def check_unique_inputs(names: list[str]) -> None:
    _check_unique(names, "input")


def finite_number(value: Any) -> float | None:
    """A JSON number as a finite float, or None (booleans, strings, NaN, a 400-digit integer)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not the integer 1


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
