"""A served model's configuration as Triton's ``ModelConfig``: what perf_analyzer and Triton's
clients read before they send a request (batch size, input and output names, datatypes and dims,
dynamic batching). One document, answered by HTTP's ``/v2/models/{name}/config`` (with resserve's
own configuration under ``resserve``) and by gRPC's ``ModelConfig``.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from resserve.server.oip.infer import PLATFORM, datatype_of, output_meta
from resserve.serving.manager import ServedModel

UINT64_MAX = 2**64 - 1
# Triton's backend names for resserve's engines.
BACKENDS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt", "torch": "pytorch"}


def triton_config(served: ServedModel) -> dict[str, Any]:
    """The model as Triton's ``ModelConfig`` JSON (field names as in model_config.proto, numbers
    as numbers): the tensor input (the one a client that sends every listed input can send),
    the output, batching and instances. ``dims`` leave out the batch dimension, as Triton's do
    where ``max_batch_size`` > 0."""
    config = served.config
    spec = served.input_spec
    output = output_meta(served)
    batching = config.dynamic_batching
    runtime = served.runtime  # what was resolved and runs (engine: auto, device: auto), not what was asked
    on_gpu = config.device in ("cuda", "tensorrt") or (runtime.provider or "").lower().startswith(("cuda", "tensorrt"))
    # uint8_input models take HWC pixels; float models their contract's layout (Triton's image
    # clients read this field to lay out what they send).
    nhwc = config.uint8_input or served.contract.layout == "NHWC"
    return {
        "name": served.name,
        "platform": PLATFORM,
        "backend": BACKENDS.get(runtime.engine, runtime.engine),
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": config.max_batch_size,
        "input": [{"name": spec.name, "data_type": f"TYPE_{datatype_of(spec.dtype)}",
                   "format": "FORMAT_NHWC" if nhwc else "FORMAT_NCHW", "dims": [int(d) for d in spec.shape[1:]]}],
        "output": [{"name": output.name, "data_type": f"TYPE_{output.datatype}",
                    "dims": [int(d) for d in output.shape[1:]]}],
        "dynamic_batching": {
            "preferred_batch_size": list(batching.preferred_batch_sizes),
            "max_queue_delay_microseconds": round(batching.max_queue_delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": batching.max_queue_size,
                                     "default_timeout_microseconds": min(round(batching.default_timeout_ms * 1000),
                                                                         UINT64_MAX)},
        },
        "instance_group": [{"name": served.name, "count": config.instance_count,
                            "kind": "KIND_GPU" if on_gpu else "KIND_CPU"}],
    }


def triton_config_message(served: ServedModel) -> model_config_pb2.ModelConfig:
    """:func:`triton_config` as the protobuf gRPC's ``ModelConfigResponse`` carries."""
    return json_format.ParseDict(triton_config(served), model_config_pb2.ModelConfig())
