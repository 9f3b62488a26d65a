"""cuda-python calls as the TensorRT engine makes them: real calls into NVIDIA's bindings.

Without a GPU or driver (these machines) every call fails, and the failure must be an
EngineError naming the call and CUDA's own message, and no GPU counted; on a GPU machine
(make gpu-check) the same tests allocate, copy and synchronize for real.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cuda.bindings", reason="cuda-python is not installed (pip install 'resserve[test]')")

from resserve.engines import cuda_runtime as cuda
from resserve.errors import EngineError


def test_the_bindings_are_found() -> None:
    cudart = cuda.runtime()
    assert hasattr(cudart, "cudaMemcpyAsync") and hasattr(cudart, "cudaMallocHost")


def test_without_a_driver_calls_fail_clearly() -> None:
    if cuda.device_count() > 0:
        pytest.skip("a CUDA GPU is visible: the GPU test below runs instead")
    with pytest.raises(EngineError, match=r"CUDA cudaGetDeviceProperties failed: cuda\w+ \(.+\)"):
        cuda.device_identity(0)
    with pytest.raises(EngineError, match="CUDA cudaStreamCreate failed"):
        cuda.Stream()
    with pytest.raises(EngineError, match="CUDA cudaMalloc failed"):
        cuda.DeviceBuffer(1024)


@pytest.mark.skipif(cuda.device_count() < 1, reason="no CUDA GPU visible")
def test_a_round_trip_through_the_gpu() -> None:
    name, capability = cuda.device_identity(0)
    assert name and capability.count(".") == 1
    cuda.use_device(0)
    stream, host_in, host_out = cuda.Stream(), cuda.PinnedArray((4, 8)), cuda.PinnedArray((4, 8))
    device = cuda.DeviceBuffer(host_in.nbytes)
    try:
        host_in.array[...] = np.arange(32, dtype=np.float32).reshape(4, 8)
        cuda.copy_to_device(device, host_in, host_in.nbytes, stream)
        cuda.copy_to_host(host_out, device, host_in.nbytes, stream)
        stream.synchronize()
        np.testing.assert_array_equal(host_out.array, host_in.array)
        cuda.copy_array_to_device(device, np.ones((4, 8), np.float32))
        with pytest.raises(EngineError, match="do not fit"):
            cuda.copy_array_to_device(device, np.ones((5, 8), np.float32))
    finally:
        for resource in (device, host_in, host_out, stream):
            resource.close()
