"""CUDA memory, copies and streams for TensorRT, through NVIDIA's cuda-python (no torch).

The GPU runtime image carries TensorRT, ONNX Runtime GPU and cuda-python, not torch (gigabytes
that serving does not need), so the TensorRT engine and the plan builder take their pinned host
buffers, device buffers and stream from here. cuda-python's calls return ``(error, value...)``
tuples; :func:`_checked` turns a failure into an :class:`EngineError` naming the call and CUDA's
own message. Imported lazily by the callers: this module imports anywhere, and says what is
missing when cuda-python or a CUDA driver is not there.
"""

from __future__ import annotations

import ctypes
import functools
from types import ModuleType
from typing import Any

import numpy as np

from resserve.errors import EngineError, EngineUnavailableError

INSTALL_HINT = "pip install 'resserve[gpu]' (cuda-python matching the driver's CUDA major)"


@functools.cache
def runtime() -> ModuleType:
    """cuda-python's runtime API module (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef, attr-defined]
        except ImportError as exc:
            raise EngineUnavailableError(f"cuda-python is not installed ({exc}); {INSTALL_HINT}") from exc
    return cudart  # type: ignore[no-any-return]


def _checked(call: str, result: Any) -> Any:
    """The value(s) of a cuda-python call; EngineError with CUDA's message when it failed."""
    cudart = runtime()
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(error)
        message = text.decode() if isinstance(text, bytes) else str(text)
        raise EngineError(f"CUDA {call} failed: {getattr(error, 'name', error)} ({message})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_count() -> int:
    """CUDA devices visible; 0 (not an error) where the driver is missing or sees none."""
    try:
        return int(_checked("cudaGetDeviceCount", runtime().cudaGetDeviceCount()))
    except EngineError:
        return 0


def device_identity(device_id: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of ``device_id``."""
    props = _checked("cudaGetDeviceProperties", runtime().cudaGetDeviceProperties(device_id))
    name = props.name
    name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
    return name, f"{props.major}.{props.minor}"


def use_device(device_id: int) -> None:
    """Make ``device_id`` current for this thread (CUDA's current device is per thread)."""
    _checked("cudaSetDevice", runtime().cudaSetDevice(device_id))


class Stream:
    """A CUDA stream; ``handle`` is what TensorRT's ``execute_async_v3`` takes."""

    def __init__(self) -> None:
        self._stream = _checked("cudaStreamCreate", runtime().cudaStreamCreate())

    @property
    def handle(self) -> int:
        return int(self._stream)

    def synchronize(self) -> None:
        _checked("cudaStreamSynchronize", runtime().cudaStreamSynchronize(self._stream))

    def close(self) -> None:
        if self._stream is not None:
            _checked("cudaStreamDestroy", runtime().cudaStreamDestroy(self._stream))
            self._stream = None


class DeviceBuffer:
    """``nbytes`` of device memory at ``ptr``."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = int(_checked("cudaMalloc", runtime().cudaMalloc(self.nbytes)))

    def close(self) -> None:
        if self.ptr:
            _checked("cudaFree", runtime().cudaFree(self.ptr))
            self.ptr = 0


class PinnedArray:
    """A float32 numpy array in page-locked host memory (copies to and from it run asynchronously)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any = np.float32) -> None:
        self.dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        self.nbytes = count * self.dtype.itemsize
        self.ptr = int(_checked("cudaMallocHost", runtime().cudaMallocHost(self.nbytes)))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=self.dtype, count=count).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            self.array = np.empty((0,), self.dtype)  # no view may outlive the memory
            _checked("cudaFreeHost", runtime().cudaFreeHost(self.ptr))
            self.ptr = 0


def copy_to_device(dst: DeviceBuffer, src: PinnedArray, nbytes: int, stream: Stream) -> None:
    kind = runtime().cudaMemcpyKind.cudaMemcpyHostToDevice
    _checked("cudaMemcpyAsync", runtime().cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream._stream))


def copy_to_host(dst: PinnedArray, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    kind = runtime().cudaMemcpyKind.cudaMemcpyDeviceToHost
    _checked("cudaMemcpyAsync", runtime().cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream._stream))


def copy_array_to_device(dst: DeviceBuffer, src: np.ndarray) -> None:
    """A synchronous copy of a C-contiguous host array (the calibrator's batches)."""
    src = np.ascontiguousarray(src)
    if src.nbytes > dst.nbytes:
        raise EngineError(f"{src.nbytes} bytes do not fit a {dst.nbytes}-byte device buffer")
    kind = runtime().cudaMemcpyKind.cudaMemcpyHostToDevice
    _checked("cudaMemcpy", runtime().cudaMemcpy(dst.ptr, src.ctypes.data, src.nbytes, kind))
