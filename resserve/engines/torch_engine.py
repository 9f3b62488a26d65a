"""The PyTorch model itself as an engine: CPU fp32/bf16, CUDA fp32/fp16/bf16, optional CUDA graphs.

It serves straight from weights (no ONNX step) with the same BatchNorm folding as the export,
so it is both a reference for the compiled engines and a fast path on machines where torch's
kernels (oneDNN with AMX/AVX-512 bf16, cuDNN) beat the alternatives. torch is imported lazily:
it is the ``export`` extra, not a serving dependency.

Example::

    engine = TorchEngine("resnet50", Path("resnet50.pth"), precision="bf16")
    engine.load()
    logits = engine.infer(np.zeros((8, 3, 224, 224), np.float32))
"""

from __future__ import annotations

import bisect
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from resserve.engine_registry import engine_spec
from resserve.engines.base import Engine, TensorSpec, check_batch_rows
from resserve.engines.hardware import torch_cpu_bf16
from resserve.errors import ConfigError, EngineError, EngineUnavailableError

log = logging.getLogger(__name__)

DEFAULT_GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def graph_batch_size(rows: int, sizes: Sequence[int]) -> int:
    """The smallest captured size that holds ``rows`` (callers chunk at the largest)."""
    ordered = sorted(sizes)
    index = bisect.bisect_left(ordered, rows)
    if index == len(ordered):
        raise EngineError(f"batch of {rows} exceeds the largest CUDA graph size {ordered[-1]}")
    return ordered[index]


class TorchEngine(Engine):
    """A folded ResNet in eval mode under ``torch.inference_mode``; numpy float32 in and out."""

    name = "torch"

    def __init__(
        self,
        arch: str,
        weights_path: Path | None = None,
        *,
        num_classes: int | None = None,
        device: Literal["cpu", "cuda"] = "cpu",
        precision: str = "fp32",
        compile: bool = False,
        channels_last: bool = True,
        cuda_graphs: bool = False,
        graph_batch_sizes: Sequence[int] = DEFAULT_GRAPH_BATCH_SIZES,
        random_weights_seed: int | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        if (weights_path is None) == (random_weights_seed is None):
            raise ConfigError("TorchEngine needs exactly one of weights_path or random_weights_seed")
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"unknown torch device {device!r}; choose cpu or cuda")
        precisions = engine_spec("torch").precisions
        if precision not in precisions:
            raise ConfigError(f"unknown torch precision {precision!r}; choose {', '.join(precisions[:-1])} "
                              f"or {precisions[-1]}")
        if cuda_graphs and device != "cuda":
            raise ConfigError("cuda_graphs needs device cuda")
        if cuda_graphs and compile:
            raise ConfigError("use compile or cuda_graphs, not both (compiled graphs are not captured here)")
        if not graph_batch_sizes or any(b < 1 for b in graph_batch_sizes):
            raise ConfigError(f"graph_batch_sizes must be positive, got {list(graph_batch_sizes)}")
        self.arch = arch
        self.weights_path = Path(weights_path) if weights_path is not None else None
        self.num_classes = num_classes
        self.device = device
        self.precision = precision
        self.compile = compile
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs
        self.graph_batch_sizes = tuple(sorted(set(graph_batch_sizes)))
        self.random_weights_seed = random_weights_seed
        # (H, W) the server preprocesses to: a weights file alone does not say (timm's test sizes).
        self.input_size = input_size
        self._model: Any = None
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}  # size -> (graph, static input, static output)
        self._pool: Any = None
        self._facts: dict[str, Any] = {}
        self._input_hw: tuple[int, int] = (0, 0)
        self._classes = 0

    def _check_device(self) -> None:
        """Refuse what this machine cannot do, before paying for the model."""
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise EngineUnavailableError(f"torch engine device cuda: torch {torch.__version__} ({build}) "
                                         "sees no CUDA GPU; use device cpu, or a CUDA torch on a GPU machine")
        if self.device == "cpu" and self.precision == "fp16":
            raise EngineUnavailableError("torch engine: fp16 on CPU is not supported (few CPU fp16 kernels, "
                                         "slower than fp32); use bf16 or fp32 on CPU, or fp16 on device cuda")
        if self.device == "cpu" and self.precision == "bf16":
            ok, why = torch_cpu_bf16()
            if not ok:
                raise EngineUnavailableError(f"torch engine: bf16 on CPU: {why}; use fp32")
        if self.device == "cuda" and self.precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise EngineUnavailableError("torch engine: this GPU has no bf16; use fp16 or fp32")

    def load(self) -> None:
        import torch

        from resserve.models.fold import fold_batchnorms
        from resserve.models.weights import load_model

        self._check_device()
        seeded = self.random_weights_seed is not None
        loaded = load_model(self.arch, self.weights_path, random_weights=seeded,
                            seed=self.random_weights_seed or 0, num_classes=self.num_classes)
        model: Any
        model, folds = fold_batchnorms(loaded.model.eval())
        model.eval().requires_grad_(False)
        if self.device == "cuda":
            model = model.to(torch.device("cuda"))
            if self.precision != "fp32":  # weights in half/bf16: no per-call casts, graph-capturable
                model = model.to(torch.float16 if self.precision == "fp16" else torch.bfloat16)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            # CUDA graphs are this engine's own business (cuda_graphs=True), so compile without them.
            mode = "max-autotune-no-cudagraphs" if self.device == "cuda" else None
            model = torch.compile(model, mode=mode)
        self._model = model
        self._graphs, self._pool = {}, None
        width, height = loaded.contract.crop_wh
        self._input_hw = self.input_size or (height, width)
        self._classes = loaded.num_classes
        self._facts = {
            "arch": self.arch, "weights": loaded.source.description,
            "random_weights": loaded.source.is_random, "folded_batchnorms": folds,
            "torch_version": torch.__version__,
            "gpu": torch.cuda.get_device_name() if self.device == "cuda" else None,
        }
        log.info("loaded torch %s (%s, %s%s%s)", self.arch, self.device, self.precision,
                 ", compiled" if self.compile else "", ", CUDA graphs" if self.cuda_graphs else "")

    def _require(self) -> None:
        if self._model is None:
            raise EngineError("engine is not loaded; call load() first")

    @property
    def input_spec(self) -> TensorSpec:
        self._require()
        return TensorSpec("input", (-1, 3, *self._input_hw), np.dtype(np.float32))

    @property
    def output_spec(self) -> TensorSpec:
        self._require()
        return TensorSpec("logits", (-1, self._classes), np.dtype(np.float32))

    def _prepare(self, x: Any) -> Any:
        import torch

        if self.device == "cuda":
            x = x.to("cuda", non_blocking=True)
            if self.precision != "fp32":
                x = x.to(torch.float16 if self.precision == "fp16" else torch.bfloat16)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _forward(self, x: Any) -> Any:
        import torch

        autocast: Any = contextlib.nullcontext()
        if self.device == "cpu" and self.precision == "bf16":
            autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        with autocast:
            return self._model(x)

    def _graph_run(self, x: Any) -> Any:
        """Replay the graph captured for the next size up, padding the batch into its static input."""
        import torch

        rows = x.shape[0]
        size = graph_batch_size(rows, self.graph_batch_sizes)
        if size not in self._graphs:
            static_in = torch.zeros((size, *x.shape[1:]), dtype=x.dtype, device=x.device)
            if self.channels_last:
                static_in = static_in.contiguous(memory_format=torch.channels_last)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm up (cuDNN autotuning) outside the capture
                for _ in range(3):
                    self._model(static_in)
            torch.cuda.current_stream().wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                static_out = self._model(static_in)
            self._graphs[size] = (graph, static_in, static_out)
            log.info("captured a CUDA graph for batch %d", size)
        graph, static_in, static_out = self._graphs[size]
        static_in[:rows].copy_(x)  # rows past ``rows`` hold stale inputs: rows are independent
        graph.replay()
        return static_out[:rows]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        self._require()
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        expected = (3, *self._input_hw)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise EngineError(f"expected input (N, {', '.join(map(str, expected))}), got {batch.shape}")
        step = self.graph_batch_sizes[-1] if self.cuda_graphs else max(len(batch), 1)
        outputs = []
        try:
            with torch.inference_mode():
                for start in range(0, len(batch), step):
                    x = self._prepare(torch.from_numpy(batch[start : start + step]))
                    out = self._graph_run(x) if self.cuda_graphs else self._forward(x)
                    outputs.append(out.float().cpu().numpy())
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"torch failed on a batch of {batch.shape}: {exc}") from exc
        out = np.concatenate(outputs) if outputs else np.empty((0, self._classes), np.float32)
        return check_batch_rows(batch, out, self.name)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = super().describe() if self._model is not None else {"engine": self.name}
        info.update(self._facts, device=self.device, precision=self.precision, compile=self.compile,
                    channels_last=self.channels_last, cuda_graphs=self.cuda_graphs,
                    graph_batch_sizes=list(self._graphs) if self.cuda_graphs else [])
        return info

    def close(self) -> None:
        self._model = None
        self._graphs, self._pool = {}, None


def open_from_config(variant: Any, config: Any, folder: Path, pixels: Any) -> TorchEngine:
    """The engine for a built ``variant`` of ``config`` (the registry's opener; not yet loaded)."""
    from resserve.metadata import read_metadata

    if config.source.arch is None:
        raise EngineError(f"model {config.name}: engine torch needs source.arch")
    width, height = read_metadata(folder / "model.onnx").preprocess.crop_wh
    return TorchEngine(config.source.arch, variant.artifact(folder), num_classes=config.source.num_classes,
                       device="cuda" if config.device in ("cuda", "tensorrt") else "cpu",
                       precision=variant.precision, input_size=(height, width))
