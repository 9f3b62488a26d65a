"""Stage ``tests``: ``pytest`` on the GPU tests twice: TensorRT, ONNX Runtime GPU and CUDA tests with
torch blocked (the GPU runtime image's own dependencies), then the torch tests."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from .. import ROOT
from ..resserve_modules import BUILD_EXPORT, WEIGHTS, load
from ..supervisor import say
from ..table import row

# What the GPU runtime image runs (TensorRT, ONNX Runtime GPU, cuda-python, no torch): these tests
# run with torch made unimportable, on an ONNX file exported first by a process that has torch.
IMAGE_TESTS = ("tests/gpu/test_tensorrt_engine.py", "tests/gpu/test_onnxruntime_gpu.py",
               "tests/gpu/test_onnxruntime_fp16_cuda.py", "tests/unit/engines/test_cuda_runtime.py")
TORCH_TESTS = ("tests/gpu/test_torch_cuda.py", "tests/gpu/test_gpu_preprocess_cuda.py")
NO_TORCH_SITECUSTOMIZE = """\
import importlib.abc, sys


class _NoTorch(importlib.abc.MetaPathFinder):  # the GPU runtime image has no torch
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not part of the GPU runtime image (make gpu-check blocks it here)")
        return None


sys.meta_path.insert(0, _NoTorch())
"""


def _pytest(paths: Collection[str], env: dict[str, str], budget_s: float) -> tuple[str, list[str], int | None]:
    """One pytest run: its summary line, what failed or was skipped and why, its exit code (None: timeout)."""
    command = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *paths]
    notes = []
    if importlib.util.find_spec("pytest_asyncio") is None:
        # pyproject's asyncio_mode is then an unknown option, which the warnings-as-errors setting fails.
        command += ["-W", "ignore::pytest.PytestConfigWarning"]
        notes.append("pytest-asyncio missing: its ini options ignored")
    else:
        command += ["-p", "pytest_asyncio.plugin"]
    say("running " + " ".join(command[1:]))
    try:
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, timeout=budget_s)
        output, returncode = done.stdout, done.returncode
    except subprocess.TimeoutExpired as exc:
        output, returncode = exc.stdout or "", None
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
    print(output, flush=True)
    lines = output.splitlines()
    summary = next((line.strip("= ") for line in reversed(lines)
                    if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)|no tests ran", line)), "no summary")
    say(summary)
    notes += [line for line in lines if line.startswith(("FAILED", "ERROR", "SKIPPED"))][:12]
    return summary, notes, returncode


def _export_for_image_tests(folder: Path) -> tuple[Path | None, str]:
    """ResNet-18 (seeded) exported with this machine's torch, for the torch-free tests."""
    try:
        export_onnx, load_model = load(BUILD_EXPORT).export_onnx, load(WEIGHTS).load_model
        path = folder / "resnet18.onnx"
        export_onnx(load_model("resnet18", random_weights=True, seed=0), path)
        return path, ""
    except Exception as exc:  # no torch or a broken export: those tests export nothing and skip
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[:1]}"


def run(result: dict[str, Any], save: Callable[[], None], args: argparse.Namespace) -> None:
    """``pytest`` on the GPU tests twice: TensorRT, ONNX Runtime GPU and CUDA tests with torch blocked
    (the GPU runtime image's own dependencies), then the torch tests."""
    started = time.monotonic()
    # The machine's own pytest plugins (benchmark, xdist, ...) may not suit the pytest from gpu-wheels.
    base_env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    rows, notes, failures = [], [], []
    with tempfile.TemporaryDirectory(prefix="gpu-check-image-") as scratch:
        onnx_path, why = _export_for_image_tests(Path(scratch))
        blocker = Path(scratch) / "no_torch"
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(NO_TORCH_SITECUSTOMIZE)
        image_env = {**base_env, "PYTHONPATH": os.pathsep.join(p for p in (str(blocker), base_env.get("PYTHONPATH"))
                                                                 if p)}
        if onnx_path is not None:
            image_env["RESSERVE_GPU_TEST_ONNX"] = str(onnx_path)
        else:
            notes.append(f"no ONNX file for the torch-free run ({why})")
        runs = (("GPU image deps, no torch", IMAGE_TESTS, image_env), ("torch", TORCH_TESTS, base_env))
        for index, (label, paths, env) in enumerate(runs):
            budget = max(10.0, (args.stage_budget_s - (time.monotonic() - started)) / (len(runs) - index))
            summary, run_notes, returncode = _pytest(paths, env, budget)
            rows.append(row("tests", f"pytest ({label})", note=summary))
            notes += [f"{label}: {n}" for n in run_notes]
            if returncode is None:
                failures.append(f"{label}: pytest did not finish in {budget:.0f} s")
            elif returncode not in (0, 5):  # 5: nothing collected
                failures.append(f"{label}: pytest exited {returncode}: {summary}")
            result.update(rows=rows, notes=notes)
            save()
    if failures:
        result.update(status="failed", reason="; ".join(failures))
