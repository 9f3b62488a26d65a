"""Stage ``env``: Python, CPU, torch and CUDA, torchvision, every dependency's version or import error."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from ..resserve_modules import BENCH_ENGINE, HARDWARE, load
from ..supervisor import SITE_VARIABLE

# What the environment table reports: import name -> distribution.
DEPENDENCIES = {
    "numpy": "numpy", "PIL": "pillow", "pydantic": "pydantic", "pydantic_settings": "pydantic-settings",
    "yaml": "pyyaml", "typer": "typer", "rich": "rich", "fastapi": "fastapi", "uvicorn": "uvicorn",
    "httptools": "httptools", "uvloop": "uvloop", "python_multipart": "python-multipart", "orjson": "orjson",
    "prometheus_client": "prometheus-client", "opentelemetry.sdk.trace": "opentelemetry-sdk",
    "pythonjsonlogger": "python-json-logger", "httpx": "httpx", "aiohttp": "aiohttp", "onnx": "onnx",
    "onnxruntime": "onnxruntime", "onnxscript": "onnxscript", "safetensors": "safetensors",
    "pytest": "pytest", "pytest_asyncio": "pytest-asyncio", "grpc": "grpcio", "tritonclient": "tritonclient",
    "tensorrt": "tensorrt", "openvino": "openvino", "cuda.bindings": "cuda-bindings",
}


def _torch() -> dict[str, Any]:
    try:
        import torch

        info: dict[str, Any] = {"version": torch.__version__, "cuda_build": torch.version.cuda,
                                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                                "cuda_available": torch.cuda.is_available()}
        if info["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = (f"{props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
                           f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
        elif torch.version.cuda:
            info["why"] = f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
        else:
            info["why"] = f"torch {torch.__version__} is a CPU-only build"
        return info
    except Exception as exc:  # a broken CUDA install raises more than ImportError
        return {"error": f"{type(exc).__name__}: {exc}"}


def _modules(site: str) -> dict[str, Any]:
    modules: dict[str, Any] = {}
    for module, distribution in DEPENDENCIES.items():
        try:
            imported = importlib.import_module(module)
            version = getattr(imported, "__version__", None) or importlib.metadata.version(distribution)
            where = str(getattr(imported, "__file__", "") or "")
            modules[module] = {"version": str(version), "from_wheels": bool(site) and where.startswith(site)}
        except Exception as exc:
            modules[module] = {"error": f"{type(exc).__name__}: {exc}"}
    return modules


def run(result: dict[str, Any], save: Callable[[], None], args: argparse.Namespace) -> None:
    """Python, CPU, torch and CUDA, torchvision, every dependency's version or import error."""
    available_cores = load(HARDWARE).available_cores
    try:
        cpu = load(BENCH_ENGINE).cpu_model()  # imports onnxruntime, which may be missing
    except ImportError:
        cpu = platform.processor() or platform.machine()
    result.update(python=f"{platform.python_version()} ({sys.executable})", cpu=cpu, cores=available_cores())
    result["torch"] = _torch()
    save()
    try:
        import torchvision

        result["torchvision"] = {"version": torchvision.__version__}
    except Exception as exc:
        result["torchvision"] = {"error": f"{type(exc).__name__}: {exc}"}
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        result["driver"] = done.stdout.strip() or done.stderr.strip()
    result["modules"] = _modules(os.environ.get(SITE_VARIABLE, ""))
    if result["modules"]["onnxruntime"].get("version"):
        import onnxruntime

        result["onnxruntime_providers"] = onnxruntime.get_available_providers()
    save()
