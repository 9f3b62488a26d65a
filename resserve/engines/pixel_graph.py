"""An ONNX graph that takes uint8 (N, H, W, 3) pixels: cast, colour swap, normalize and transpose
prepended to the model's own input, in memory at load time (the artifact on disk is unchanged).

ONNX Runtime's counterpart of OpenVINO's PrePostProcessor (:mod:`resserve.engines.openvino`):
the host stops after resize and crop, and the batch it hands over is a quarter of the float32 size.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from resserve.engines.base import PixelInput
from resserve.errors import EngineError


def with_pixel_input(model: onnx.ModelProto, pixels: PixelInput) -> onnx.ModelProto:
    """A copy of ``model`` whose single image input, under the same name, is uint8 NHWC pixels."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise EngineError(f"pixel input needs a model with one image input, this one has {len(inputs)}")
    original = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "N") for d in original.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise EngineError(f"pixel input needs a 4-d image input, {original.name} has shape {dims}")
    n, h, w, c = (dims[0], dims[2], dims[3], dims[1]) if pixels.layout == "NCHW" else dims
    if c not in (3, "N"):
        raise EngineError(f"pixel input needs 3 colour channels, {original.name} has {c}")
    name = original.name
    internal = f"{name}__normalized"
    for node in graph.node:
        node.input[:] = [internal if x == name else x for x in node.input]

    prefix = f"{name}__pixels"
    mean = numpy_helper.from_array(np.asarray(pixels.mean, np.float32), f"{prefix}_mean")
    std = numpy_helper.from_array(np.asarray(pixels.std, np.float32), f"{prefix}_std")
    graph.initializer.extend([mean, std])
    nodes = [helper.make_node("Cast", [name], [f"{prefix}_float"], to=TensorProto.FLOAT)]
    current = f"{prefix}_float"
    if pixels.bgr:
        order = numpy_helper.from_array(np.asarray([2, 1, 0], np.int64), f"{prefix}_bgr_order")
        graph.initializer.append(order)
        nodes.append(helper.make_node("Gather", [current, order.name], [f"{prefix}_bgr"], axis=3))
        current = f"{prefix}_bgr"
    nodes.append(helper.make_node("Sub", [current, mean.name], [f"{prefix}_centered"]))
    if pixels.layout == "NCHW":
        nodes.append(helper.make_node("Div", [f"{prefix}_centered", std.name], [f"{prefix}_nhwc"]))
        nodes.append(helper.make_node("Transpose", [f"{prefix}_nhwc"], [internal], perm=[0, 3, 1, 2]))
    else:
        nodes.append(helper.make_node("Div", [f"{prefix}_centered", std.name], [internal]))
    for node in reversed(nodes):
        graph.node.insert(0, node)

    new_input = helper.make_tensor_value_info(name, TensorProto.UINT8, [n, h, w, 3])
    position = list(graph.input).index(original)
    graph.input.remove(original)
    graph.input.insert(position, new_input)
    onnx.checker.check_model(model)
    return model
