"""Every resserve module the stages import, by name, in one place: a module that moves is one line
here. Only a stage's child imports them (``load``); the parent runs on the standard library alone."""

from __future__ import annotations

import importlib
from types import ModuleType

BENCH_ENGINE = "resserve.perf.bench_engine"  # bench_engine, cpu_model
BENCH_PREPROCESS = "resserve.perf.bench_preprocess"  # bench_preprocess
BENCH_PROCESS = "resserve.perf.server_process"  # server_process
BENCH_STATS = "resserve.perf.stats"  # latency_summary_ms
BUILD_EXPORT = "resserve.builder.export"  # export_onnx
BUILD_PIPELINE = "resserve.builder.build_pipeline"  # BuildPipeline
CONTRACT = "resserve.contract"  # imagenet_contract
GPU_PREPROCESS = "resserve.preprocess.gpu"  # GpuPreprocessor, decode_jpegs
HARDWARE = "resserve.engines.hardware"  # available_cores
LOAD_GENERATOR = "resserve.perf.generator"  # LoadGenerator
LOAD_IMAGES = "resserve.perf.images"  # generate
LOAD_MEASURE = "resserve.perf.measure"  # MeasurementSettings, closed_point
PREPROCESS = "resserve.preprocess"  # preprocess
REPOSITORY = "resserve.repository"  # ModelRepository
SYNTHETIC = "resserve.synthetic"  # synthetic_jpegs
TORCH_ENGINE = "resserve.engines.torch_engine"  # TorchEngine
WEIGHTS = "resserve.models.weights"  # load_model


def load(name: str) -> ModuleType:
    """The module ``name`` (one of the above), imported now."""
    return importlib.import_module(name)
