"""The one small interface every engine implements (ONNX Runtime, TensorRT, OpenVINO, torch).

The batcher and the server only ever call these methods, so an engine is swappable by config.
``infer`` takes and returns numpy arrays: the serving path needs no torch.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from resserve.engines.hardware import isa_class, numerics_features
from resserve.errors import EngineError


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``-1`` for dynamic dims) and dtype of a model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def example(self, batch: int, seed: int = 0) -> np.ndarray:
        """A seeded random tensor with this spec and ``batch`` rows, for warm-up and benchmarks."""
        dims = [batch if i == 0 else (d if d > 0 else 224) for i, d in enumerate(self.shape)]
        rng = np.random.default_rng(seed)
        if np.issubdtype(self.dtype, np.floating):
            return rng.standard_normal(dims).astype(self.dtype)
        return rng.integers(0, 256, size=dims).astype(self.dtype)


@dataclass(frozen=True)
class PixelInput:
    """An engine fed decoded pixels: uint8 (N, H, W, 3) RGB in, and the colour swap, ``(x - mean) / std``
    and the layout change the model needs run inside the compiled model instead of on the host.

    ``mean``/``std`` are in 0-255 pixel units and ``layout`` is the layout the model itself takes.
    Host normalization and the float32 batch are a measurable share of each image's time on a
    fast int8 engine (figures: docs/engines-and-precision.md, Measured behind the defaults); OpenVINO folds the in-graph normalization into
    the first quantized layer, so the logits come out bit-identical.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False
    layout: str = "NCHW"

    @classmethod
    def from_contract(cls, contract: Any) -> PixelInput:
        """The normalization a :class:`~resserve.contract.PreprocessContract` describes, in pixel units."""
        unit = 255.0 if contract.input_scale == "0-1" else 1.0
        return cls(mean=tuple(m * unit for m in contract.mean), std=tuple(s * unit for s in contract.std),  # type: ignore[arg-type]
                   bgr=contract.color_order == "BGR", layout=contract.layout)


class Engine(abc.ABC):
    """Loads a compiled model and runs whole batches on it.

    ``load`` is separate from ``__init__`` so a repository can construct engines cheaply and
    decide when to pay for loading (and report readiness meanwhile).
    """

    name: str = "engine"

    @abc.abstractmethod
    def load(self) -> None:
        """Create sessions / contexts; after this ``infer`` may be called."""

    @property
    @abc.abstractmethod
    def input_spec(self) -> TensorSpec:
        """The single image input."""

    @property
    @abc.abstractmethod
    def output_spec(self) -> TensorSpec:
        """The logits (or probabilities) output."""

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; returns one output row per input row."""

    def warmup(self, batch_sizes: tuple[int, ...] = (1,), rounds: int = 2) -> float:
        """Run each batch size a few times so first requests do not pay for lazy initialisation.

        Returns the seconds spent.
        """
        start = time.perf_counter()
        for size in batch_sizes:
            example = self.input_spec.example(size)
            for _ in range(rounds):
                self.infer(example)
        return time.perf_counter() - start

    def describe(self) -> dict[str, Any]:
        """Facts for logs, ``/v2/models/{name}`` and ``resserve describe``."""
        return {
            "engine": self.name,
            "input": {"name": self.input_spec.name, "shape": list(self.input_spec.shape),
                      "dtype": str(self.input_spec.dtype)},
            "output": {"name": self.output_spec.name, "shape": list(self.output_spec.shape),
                       "dtype": str(self.output_spec.dtype)},
        }

    def runtime(self) -> dict[str, Any]:
        """What runs, as far as it decides the answers: the engine and its version, the instruction-set
        class of this CPU, the precision asked for and what the runtime reports it runs non-quantized
        layers in, and for int8 which kernels. Recorded beside the accuracy report at build, checked
        and exported at load. Engines fill in what they know."""
        return {"engine": self.name, "engine_version": None, "isa": isa_class(), "cpu_features": numerics_features(),
                "precision": None, "inference_precision": None, "int8_kernels": None}

    def close(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Release sessions and device memory; engines that hold none need not override."""


def check_batch_rows(batch: np.ndarray, outputs: np.ndarray, engine: str) -> np.ndarray:
    """An engine must give one output row per input row; anything else is an engine bug."""
    if outputs.shape[0] != batch.shape[0]:
        raise EngineError(f"{engine} returned {outputs.shape[0]} rows for a batch of {batch.shape[0]}")
    return outputs
