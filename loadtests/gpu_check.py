"""``make gpu-check``: one short run on a lent GPU machine, one table at the end.

    python3 loadtests/gpu_check.py [--wheels gpu-wheels] [--budget-s 460] [--stages tests,engine,...]

Stages, each in a child process of its own with a time limit (a hang or a crash in one is that
stage's failure, never the whole check's), each skipped with the reason where what it needs is
missing:

1. ``tests``: the GPU-marked tests, twice: the TensorRT, ONNX Runtime GPU and cuda-python tests
   with torch made unimportable (what the GPU runtime image carries: no torch), on a ResNet-18
   ONNX file exported first; then the torch tests (TensorRT and ONNX Runtime CUDA skip as always
   where those are absent).
2. ``engine``: the torch engine on CUDA through ``resserve.bench.engine.bench_engine`` (what
   ``resserve bench engine`` runs): ResNet-50 fp16 and bf16, channels-last, eager and with a
   CUDA graph per batch size, then ResNet-18 fp16, at batch 1..256, seeded random weights.
3. ``preprocess``: the CPU path (``resserve.bench.preprocess``, one core) against nvJPEG decode
   plus resize, crop and normalize on the GPU (``resserve.engines.gpu_preprocess``), on
   synthetic 500x375 and 1600x1200 JPEGs, with the GPU tensor's deviation from the CPU path's.
4. ``server``: ``resserve serve`` on one torch-CUDA fp16 ResNet-50 built here, loaded by the
   project's load generator (closed loop, 64 clients by default); ``--workers`` is passed only
   where ``resserve serve --help`` lists it. The server decodes on the CPU, then once more with
   the model's ``gpu_decode: true`` (nvJPEG and GPU preprocessing in the server) at the first
   worker count, where the installed resserve has that option.

The lent machine's ``python3`` has CUDA torch and torchvision but few of resserve's dependencies
and no network: ``make gpu-wheels`` (here) downloads them into ``gpu-wheels/``, which travels
with the run, and this script first installs, into a temporary folder put on the children's
``PYTHONPATH``, each wheel whose package is missing there or older. The repository root goes on
that path too (nothing is pip-installed). Results: ``$OUT/gpu-check.json`` (or ``./``, or
``--json``) and every child's output in ``gpu-check.log`` beside it.

This file runs with the standard library alone until a stage's child imports what it needs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the lent machine has no installed resserve: the checkout is the package
    sys.path.insert(0, str(ROOT))

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SITE_VARIABLE = "RESSERVE_GPU_CHECK_SITE"  # where the wheels went, for the environment table
PROGRESS = "gpu-check: "  # a child's lines with this prefix are echoed; all its lines go to the log
GRACE_S = 15  # a child's own deadline is its limit minus this, so it can write what it has
SERVER_MODEL = "resnet50-torch-fp16"
# The server stage's model: built here (export for the metadata, weights for the torch engine).
SERVER_MODEL_CONFIG = """\
source: {arch: resnet50, random_weights: true, seed: 0}
engine: torch
precision: fp16
device: cuda
max_batch_size: 64
dynamic_batching: {max_queue_delay_ms: 2, preferred_batch_sizes: [16, 32, 64], max_queue_size: 1024}
warmup_batch_sizes: [1, 16, 32, 64]
fast_jpeg_decode: true
fast_preprocess: true
# The build's fp16-against-fp32 report: fewer images than the default 200, a floor that still fails
# a broken build (random weights flip a few top-1 classes at any reduced precision).
calibration: {held_out: 64, min_top1_agreement: 0.9}
"""

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
_CORE = ["numpy", "PIL", "pydantic", "pydantic_settings", "yaml"]
# Stage -> (time limit in seconds, modules it imports, needs torchvision).
STAGES: dict[str, tuple[int, list[str], bool]] = {
    "tests": (100, ["pytest"], False),
    "engine": (100, [*_CORE, "onnxruntime"], False),
    "preprocess": (60, _CORE, True),
    "server": (190, [*_CORE, "typer", "rich", "fastapi", "uvicorn", "python_multipart", "orjson",
                     "prometheus_client", "opentelemetry.sdk.trace", "pythonjsonlogger", "httpx", "aiohttp",
                     "onnx", "onnxruntime", "onnxscript", "safetensors"], False),
}
TABLE_COLUMNS = ("stage", "what", "batch", "img/s", "p50 ms", "p99 ms", "note")


def say(message: str) -> None:
    """A progress line of a child, echoed by the parent."""
    print(PROGRESS + message, flush=True)


def text_table(headers: tuple[str, ...], rows: list[list[str]], right: Collection[int] = ()) -> str:
    """Plain columns at their natural width: nothing wraps or is cut, piped or not."""
    cells = [list(headers), *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(row) for row in cells[1:])])


def _fmt(value: Any, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def row(stage: str, what: str, *, batch: int | str | None = None, img_s: float | None = None,
        p50_ms: float | None = None, p99_ms: float | None = None, note: str = "") -> dict[str, Any]:
    """One line of the final table (and of the JSON's ``table``)."""
    return {"stage": stage, "what": what, "batch": batch, "img_s": img_s, "p50_ms": p50_ms, "p99_ms": p99_ms,
            "note": note}


# ---- the parent: wheels, children, tables --------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _older(installed: str, offered: str) -> bool:
    try:
        from packaging.version import Version
    except ImportError:  # cannot compare: keep what is there
        return False
    try:
        return Version(installed) < Version(offered)
    except ValueError:
        return False


def install_wheels(folder: Path, log: TextIO) -> dict[str, Any]:
    """Install into a temporary folder each wheel of ``folder`` whose package is missing here or
    older (the machine's own compiled packages, newer or equal, stay in use)."""
    if not folder.is_dir():
        return {"status": "none", "note": f"no {folder.name}/ folder (make gpu-wheels, then carry it)"}
    offered: dict[str, str] = {}
    for wheel in folder.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        name = _canonical(name)
        if name not in offered or _older(offered[name], version):
            offered[name] = version
    wanted = []
    for name, version in sorted(offered.items()):
        try:
            if not _older(importlib.metadata.version(name), version):
                continue
        except importlib.metadata.PackageNotFoundError:
            pass
        wanted.append(f"{name}=={version}")
    if not wanted:
        return {"status": "ok", "installed": [], "note": f"{len(offered)} wheels offered, all already installed"}
    site = Path(tempfile.gettempdir()) / "resserve-gpu-site"
    shutil.rmtree(site, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
               "--no-deps", "--no-compile", "--no-cache-dir", "--find-links", str(folder), "--target", str(site),
               *wanted]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"status": "failed", "note": f"pip install did not finish: {exc}"}
    log.write(f"[wheels] {' '.join(command)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "note": f"pip install exited {done.returncode}: {tail[0]}"}
    return {"status": "ok", "installed": wanted, "site": str(site),
            "note": f"installed {len(wanted)} of {len(offered)} wheels into {site}"}


def child_env(site: str | None) -> dict[str, str]:
    """The children's environment: the installed wheels first, then the checkout, then the rest."""
    paths = [p for p in (site, str(ROOT), os.environ.get("PYTHONPATH")) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1", SITE_VARIABLE: site or ""}


def run_child(stage: str, limit_s: float, argv: list[str], env: dict[str, str], log: TextIO) -> dict[str, Any]:
    """Run one stage in a child (its own process group, killed whole at ``limit_s``); its result."""
    fd, name = tempfile.mkstemp(prefix=f"gpu-check-{stage}-", suffix=".json")
    os.close(fd)
    result_path = Path(name)
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--stage", stage, "--result", str(result_path),
               "--stage-budget-s", f"{max(limit_s - GRACE_S, 5.0):.0f}"]
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                               text=True, errors="replace", start_new_session=True)
    tail: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(f"[{stage}] {line}")
            tail[:] = [*tail[-19:], line.rstrip()]
            if line.startswith(PROGRESS):
                print(f"  [{stage}] {line[len(PROGRESS):]}", end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        returncode = process.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)  # the stage's own process group: its server and pytest too
        returncode = process.wait()
    reader.join(timeout=5)
    try:
        result = json.loads(result_path.read_text() or "{}")
    except (OSError, ValueError):
        result = {}
    result_path.unlink(missing_ok=True)
    result["seconds"] = round(time.monotonic() - start, 1)
    if timed_out:
        result["status"] = "timeout"
        result["reason"] = f"stopped at its {limit_s:.0f} s limit"
    elif returncode != 0:
        result["status"] = "failed"
        result.setdefault("reason", f"exit {returncode}: " + next(
            (line for line in reversed(tail) if line.strip() and not line.startswith(PROGRESS)), "no output"))
    else:
        result.setdefault("status", "ok")
    return result


def skip_reason(stage: str, env: dict[str, Any], remaining_s: float, wheels: dict[str, Any]) -> str | None:
    """Why ``stage`` cannot run here, or None."""
    _, needs, torchvision = STAGES[stage]
    torch = env.get("torch") or {}
    if not torch.get("version"):
        return f"torch does not import: {torch.get('error', 'environment probe failed')}"
    if not torch.get("cuda_available"):
        return f"no CUDA GPU ({torch.get('why')})"
    missing = [m for m in needs if not env.get("modules", {}).get(m, {}).get("version")]
    if torchvision:
        missing += [] if (env.get("torchvision") or {}).get("version") else ["torchvision"]
    if missing:
        hint = "" if wheels.get("status") == "ok" else " (make gpu-wheels here, carry gpu-wheels/ there)"
        return f"needs {', '.join(missing)}, which do not import{hint}"
    if remaining_s < 20:
        return f"only {remaining_s:.0f} s left of the budget"
    return None


def env_rows(env: dict[str, Any], wheels: dict[str, Any]) -> list[list[str]]:
    torch = env.get("torch") or {}
    rows = [["python", env.get("python", platform.python_version())],
            ["cpu", f"{env.get('cpu', '?')}, {env.get('cores', '?')} cores"],
            ["gpu-wheels", f"{wheels['status']}: {wheels.get('note', '')}"]]
    if torch.get("version"):
        rows.append(["torch", f"{torch['version']} (CUDA build {torch.get('cuda_build') or 'none'}, cuDNN "
                              f"{torch.get('cudnn') or 'none'})"])
        rows.append(["gpu", torch.get("gpu") or f"none ({torch.get('why')})"])
    else:
        rows.append(["torch", f"does not import: {torch.get('error', '?')}"])
    tv = env.get("torchvision") or {}
    rows.append(["torchvision", tv.get("version") or f"missing: {tv.get('error', '?')}"])
    if env.get("driver"):
        rows.append(["nvidia driver", env["driver"]])
    for module, info in (env.get("modules") or {}).items():
        where = " (gpu-wheels)" if info.get("from_wheels") else ""
        rows.append([module, f"{info['version']}{where}" if info.get("version") else f"missing: {info.get('error')}"])
    if env.get("onnxruntime_providers"):
        rows.append(["onnxruntime providers", ", ".join(env["onnxruntime_providers"])])
    rows.append(["resserve serve --workers", env.get("serve_workers", "not checked")])
    if env.get("status") != "ok":
        rows.append(["environment probe", f"{env.get('status')}: {env.get('reason', '')}"])
    return rows


def table_rows(stages: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for stage in stages:
        for r in stage.get("rows", []):
            rows.append([r["stage"], r["what"], _fmt(r.get("batch"), 0), _fmt(r.get("img_s"), 1),
                         _fmt(r.get("p50_ms"), 3), _fmt(r.get("p99_ms"), 3), r.get("note", "")])
        if stage["status"] != "ok" or not stage.get("rows"):
            rows.append([stage["name"], stage["status"], "", "", "", "", stage.get("reason", "")])
        for note in stage.get("notes", []):
            rows.append([stage["name"], "note", "", "", "", "", note])
    return rows


def parent(args: argparse.Namespace) -> int:
    started, wall = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = args.json or Path(os.environ.get("OUT") or ".") / "gpu-check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    forwarded = ["--concurrency", str(args.concurrency), "--window-s", str(args.window_s), "--workers",
                 str(args.workers), "--rounds", str(args.rounds), "--round-s", str(args.round_s)]
    with out.with_suffix(".log").open("w") as log:
        print(f"gpu check: {', '.join(stages)} within {args.budget_s:.0f} s", flush=True)
        wheels = install_wheels(args.wheels, log)
        env_vars = child_env(wheels.get("site"))
        env = run_child("env", 90, forwarded, env_vars, log)
        print("\nenvironment\n" + text_table(("item", "value"), env_rows(env, wheels)), flush=True)
        done: list[dict[str, Any]] = []
        for stage in stages:
            limit, _, _ = STAGES[stage]
            remaining = args.budget_s - (time.monotonic() - started)
            reason = skip_reason(stage, env, remaining, wheels)
            if reason:
                done.append({"name": stage, "status": "skipped", "reason": reason})
                print(f"{stage}: skipped: {reason}", flush=True)
                continue
            print(f"{stage}: running (limit {min(limit, remaining):.0f} s)", flush=True)
            result = run_child(stage, min(limit, remaining), forwarded, env_vars, log)
            done.append({"name": stage, **result})
            print(f"{stage}: {result['status']} in {result['seconds']} s", flush=True)
    report = {"started": wall, "seconds": round(time.monotonic() - started, 1), "budget_s": args.budget_s,
              "wheels": wheels, "environment": env, "stages": done,
              "table": [r for s in done for r in s.get("rows", [])]}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ngpu check results ({report['seconds']} s)\n"
          + text_table(TABLE_COLUMNS, table_rows(done), right={2, 3, 4, 5}), flush=True)
    print(f"\nwrote {out} and {out.with_suffix('.log')}", flush=True)
    return 1 if any(s["status"] in ("failed", "timeout") for s in done) else 0


# ---- the children: one stage each --------------------------------------------------------------


def stage_env(result: dict[str, Any], save: Callable[[], None], args: argparse.Namespace) -> None:
    """Python, CPU, torch and CUDA, torchvision, every dependency's version or import error."""
    from resserve.engines.hardware import available_cores

    try:
        from resserve.bench.engine import cpu_model  # imports onnxruntime, which may be missing

        cpu = cpu_model()
    except ImportError:
        cpu = platform.processor() or platform.machine()
    result.update(python=f"{platform.python_version()} ({sys.executable})", cpu=cpu, cores=available_cores())
    site = os.environ.get(SITE_VARIABLE, "")
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
        result["torch"] = info
    except Exception as exc:  # a broken CUDA install raises more than ImportError
        result["torch"] = {"error": f"{type(exc).__name__}: {exc}"}
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
    modules: dict[str, Any] = {}
    for module, distribution in DEPENDENCIES.items():
        try:
            imported = importlib.import_module(module)
            version = getattr(imported, "__version__", None) or importlib.metadata.version(distribution)
            where = str(getattr(imported, "__file__", "") or "")
            modules[module] = {"version": str(version), "from_wheels": bool(site) and where.startswith(site)}
        except Exception as exc:
            modules[module] = {"error": f"{type(exc).__name__}: {exc}"}
    result["modules"] = modules
    if modules["onnxruntime"].get("version"):
        import onnxruntime

        result["onnxruntime_providers"] = onnxruntime.get_available_providers()
    save()
    try:
        result["serve_workers"] = "listed" if _serve_has_workers() else "not listed (one server process)"
    except Exception as exc:
        result["serve_workers"] = f"cannot tell: {type(exc).__name__}: {exc}"


def _serve_has_workers() -> bool:
    done = subprocess.run([sys.executable, "-m", "resserve.cli", "serve", "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError((done.stderr or done.stdout).strip().splitlines()[-1])
    return "--workers" in done.stdout


def _has_gpu_decode() -> bool:
    from resserve.config import ModelConfig

    return "gpu_decode" in ModelConfig.model_fields


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
        from resserve.build.export import export_onnx
        from resserve.models.weights import load_model

        path = folder / "resnet18.onnx"
        export_onnx(load_model("resnet18", random_weights=True, seed=0), path)
        return path, ""
    except Exception as exc:  # no torch or a broken export: those tests export nothing and skip
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[:1]}"


def stage_tests(result: dict[str, Any], save: Callable[[], None], args: argparse.Namespace) -> None:
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


def stage_engine(result: dict[str, Any], save: Callable[[], None], args: argparse.Namespace) -> None:
    """The torch engine on CUDA per precision and graph mode, by ``bench_engine``, batch 1..256."""
    import torch

    from resserve.bench.engine import bench_engine
    from resserve.engines.torch_engine import TorchEngine
    from resserve.models.weights import load_model

    deadline = time.monotonic() + args.stage_budget_s
    configs = [("resnet50", precision, graphs) for precision in ("fp16", "bf16") for graphs in (False, True)]
    configs += [("resnet18", "fp16", graphs) for graphs in (False, True)]
    result.update(rows=[], notes=[
        "engine.infer as the server calls it: numpy float32 in and out, host<->device copies included; "
        f"median of {args.rounds} interleaved rounds of {args.round_s} s per batch size; seeded random weights"])
    last_s = 0.0
    with tempfile.TemporaryDirectory(prefix="gpu-check-weights-") as folder:
        weights: dict[str, Path] = {}
        for arch, precision, graphs in configs:
            name = f"{arch} {precision} channels-last" + (" CUDA graphs" if graphs else " eager")
            if time.monotonic() + 1.3 * last_s > deadline:
                result["notes"].append(f"{name}: not measured, the stage's time ran out")
                continue
            begun = time.monotonic()
            if arch not in weights:  # the seeded init once per arch; a tensor-only file each engine loads
                weights[arch] = Path(folder) / f"{arch}.pth"
                torch.save(load_model(arch, random_weights=True, seed=0).model.state_dict(), weights[arch])
            engine = TorchEngine(arch, weights[arch], device="cuda", precision=precision,  # type: ignore[arg-type]
                                 channels_last=True, cuda_graphs=graphs, graph_batch_sizes=BATCH_SIZES)
            engine.load()
            try:
                for r in bench_engine(engine, list(BATCH_SIZES), rounds=args.rounds, round_s=args.round_s):
                    result["rows"].append(row("engine", name, batch=r.batch_size, img_s=r.images_per_s,
                                              p50_ms=r.latency_ms["p50_ms"], p99_ms=r.latency_ms["p99_ms"],
                                              note=f"{r.images_per_s_min:.0f}..{r.images_per_s_max:.0f}"))
                result.setdefault("gpu", engine.describe().get("gpu"))
            finally:
                engine.close()
                torch.cuda.empty_cache()
            last_s = time.monotonic() - begun
            say(f"{name}: {last_s:.1f} s")
            save()


def _gpu_timed(run: Callable[[], Any], images: int, seconds: float) -> tuple[float, dict[str, float]]:
    """Images/s and per-batch latency of ``run`` (synchronized each call) after a warm-up."""
    import torch

    from resserve.bench.stats import latency_summary_ms

    for _ in range(3):  # nvJPEG's handles and buffers are made on the first calls
        run()
    torch.cuda.synchronize()
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 5:
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        latencies.append(time.perf_counter() - t0)
    return images * len(latencies) / (time.perf_counter() - start), latency_summary_ms(latencies)


def stage_preprocess(result: dict[str, Any], save: Callable[[], None], args: argparse.Namespace) -> None:
    """CPU preprocessing (one core, exact and fast paths) against GPU decode + preprocess."""
    import numpy as np

    from resserve.bench.preprocess import bench_preprocess
    from resserve.contract import imagenet_contract
    from resserve.engines.gpu_preprocess import GpuPreprocessor, decode_jpegs
    from resserve.engines.hardware import available_cores
    from resserve.preprocess import preprocess
    from resserve.synthetic import synthetic_jpegs

    contract, cores, sizes, batch = imagenet_contract(), available_cores(), [(500, 375), (1600, 1200)], 64
    result.update(rows=[], notes=[
        f"CPU: resserve.bench.preprocess on one core; x{cores} cores is the ideal all-core rate, not measured",
        f"GPU: batches of {batch} JPEG files (16 distinct, quality 90) decoded by nvJPEG in one call, then "
        "resize (antialiased bilinear), crop and normalize in torch; synchronized per batch"])
    modes = {"exact": "CPU exact", "both": "CPU fast_jpeg_decode + fast_preprocess"}  # the server runs "both"
    for r in bench_preprocess(sizes, images=8, rounds=1, round_s=0.5):
        if r.mode in modes:
            img_s = 1000.0 / r.ms_per_image
            deviation = f"; max abs dev from exact {r.max_abs_deviation:.4f}" if r.mode != "exact" else ""
            result["rows"].append(row("preprocess", f"{modes[r.mode]} {r.size[0]}x{r.size[1]}, one core", batch=1,
                                      img_s=img_s,
                                      note=f"x{cores} cores: {img_s * cores:.0f} img/s{deviation}"))
    save()
    preprocessor = GpuPreprocessor(contract)
    for width, height in sizes:
        jpegs = synthetic_jpegs(16, [(width, height)], seed=11) * (batch // 16)
        gpu = preprocessor(jpegs[:16]).cpu().numpy()
        diff = np.abs(gpu - np.stack([preprocess(data, contract) for data in jpegs[:16]]))
        deviation = f"vs CPU exact: max abs {diff.max():.4f}, mean abs {diff.mean():.5f}"
        for what, run in ((f"GPU decode + preprocess {width}x{height}", lambda jpegs=jpegs: preprocessor(jpegs)),
                          (f"GPU decode only {width}x{height}", lambda jpegs=jpegs: decode_jpegs(jpegs))):
            img_s, latency = _gpu_timed(run, batch, 2.0)
            result["rows"].append(row("preprocess", what, batch=batch, img_s=img_s, p50_ms=latency["p50_ms"],
                                      p99_ms=latency["p99_ms"], note=deviation if "+" in what else ""))
            say(f"{what}: {img_s:.0f} img/s")
            save()


def stage_server(result: dict[str, Any], save: Callable[[], None], args: argparse.Namespace) -> None:
    """Build one torch-CUDA fp16 ResNet-50, serve it (per ``--workers`` value), and load it with the
    project's generator."""
    import asyncio

    from resserve.bench.process import server_process
    from resserve.build.pipeline import BuildPipeline
    from resserve.loadtest.generator import LoadGenerator
    from resserve.loadtest.images import generate
    from resserve.loadtest.measure import MeasurementSettings, closed_point
    from resserve.repository import ModelRepository

    deadline = time.monotonic() + args.stage_budget_s
    result.update(rows=[], points=[], notes=[
        "CPU decode: Pillow with fast_jpeg_decode and fast_preprocess in the preprocess threads; GPU decode: "
        "the same model with gpu_decode: true (nvJPEG and torch on the GPU, one image at a time per worker)",
        "the engine as the server opens it: torch fp16 channels-last eager (a model config has no CUDA "
        "graphs option); max_batch_size 64, max_queue_delay_ms 2; seeded random weights"])
    settings = MeasurementSettings(warmup_s=5.0, window_s=args.window_s, stable_windows=3, max_windows=4)
    payloads = generate(sizes=((500, 375),), per_size=16)
    with tempfile.TemporaryDirectory(prefix="gpu-check-repo-") as folder:
        repo = Path(folder)
        (repo / SERVER_MODEL).mkdir()
        (repo / SERVER_MODEL / "config.yaml").write_text(SERVER_MODEL_CONFIG)
        begun = time.monotonic()
        built: list[str] = []

        def progress(message: str) -> None:
            say(message)
            built.append(message)

        BuildPipeline(ModelRepository(repo)).build(SERVER_MODEL, progress=progress)
        result["notes"].append(f"build {time.monotonic() - begun:.0f} s: {built[-1] if built else ''}")
        save()
        has_workers = _serve_has_workers()
        runs = [(w, "cpu") for w in args.workers.split(",") if w] if has_workers else [("", "cpu")]
        if not has_workers:
            result["notes"].append("resserve serve has no --workers here: one server process")
        if _has_gpu_decode():
            runs.insert(1, (runs[0][0], "gpu"))  # beside the first CPU-decode run, before the other counts
        else:
            result["notes"].append("this resserve's model config has no gpu_decode: CPU decode only")
        last_s = 0.0
        for workers, decode in runs:
            label = f"--workers {workers}" if workers else "one process"
            config = SERVER_MODEL_CONFIG + ("gpu_decode: true\n" if decode == "gpu" else "")
            (repo / SERVER_MODEL / "config.yaml").write_text(config)  # read at load: the build stays fresh
            if time.monotonic() + 1.2 * last_s > deadline:
                result["notes"].append(f"{label}: not measured, the stage's time ran out")
                continue
            begun = time.monotonic()
            extra = ["--model", SERVER_MODEL, "--no-build-missing", *(["--workers", workers] if workers else [])]
            load_s = settings.warmup_s + settings.max_windows * settings.window_s
            say(f"serving {SERVER_MODEL} ({label}); {args.concurrency} clients")
            with server_process(repo, *extra, log_dir=repo, log_level="warning",
                                ready_timeout_s=max(deadline - time.monotonic() - load_s, 10.0)) as server:

                async def load(url: str = server.url) -> Any:
                    async with LoadGenerator(f"{url}/v2/models/{SERVER_MODEL}/classify", payloads,
                                             max_outstanding=args.concurrency + 1) as generator:
                        return await closed_point(generator, args.concurrency, settings,
                                                  metrics_url=f"{url}/metrics", model=SERVER_MODEL)

                ready_s = time.monotonic() - begun
                point = asyncio.run(load())
            last_s = time.monotonic() - begun
            batch_note = f", mean batch {point.server.mean_batch_size:.1f}" if point.server else ""
            result["points"].append({"workers": workers or None, "decode": decode, **point.model_dump(mode="json")})
            result["rows"].append(row(
                "server", f"{SERVER_MODEL}, {label}, {args.concurrency} clients, 500x375 JPEG, {decode.upper()} decode",
                img_s=point.throughput_img_s, p50_ms=point.latency_ms.get("p50_ms"),
                p99_ms=point.latency_ms.get("p99_ms"),
                note=f"errors {point.error_rate:.3f}; {'stable' if point.stable else 'NOT stable'} over "
                     f"{len(point.windows)} windows of {args.window_s:g} s{batch_note}; ready in {ready_s:.0f} s; "
                     f"generator {point.generator_cpu_us_per_request:.0f} us CPU/request"))
            say(f"{label}, {decode} decode: {point.throughput_img_s:.0f} img/s, "
                f"p99 {point.latency_ms.get('p99_ms', 0):.0f} ms")
            save()


CHILDREN = {"env": stage_env, "tests": stage_tests, "engine": stage_engine, "preprocess": stage_preprocess,
            "server": stage_server}


def child(args: argparse.Namespace) -> int:
    """Run one stage, saving its result as it goes, so a stage stopped at its limit keeps its rows."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result: dict[str, Any] = {}

    def save() -> None:
        args.result.write_text(json.dumps(result, indent=2, default=str))

    try:
        CHILDREN[args.stage](result, save, args)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        first = str(exc).strip().splitlines()[:1]
        result.update(status="failed", reason=f"{type(exc).__name__}: {first[0] if first else ''}")
    save()
    return 1 if result.get("status") == "failed" else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, default=ROOT / "gpu-wheels", help="wheels to install where missing")
    parser.add_argument("--json", type=Path, help="results file (default: $OUT/gpu-check.json, else ./)")
    parser.add_argument("--budget-s", type=float, default=460.0,
                        help="the whole check, wheels and stages included (each stage also has its own limit)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {','.join(STAGES)}")
    parser.add_argument("--concurrency", type=int, default=64, help="server stage: closed-loop clients")
    parser.add_argument("--window-s", type=float, default=5.0, help="server stage: seconds per measured window")
    parser.add_argument("--workers", default="auto,4",
                        help="server stage: one run per comma-separated --workers value, where serve has it")
    parser.add_argument("--rounds", type=int, default=3, help="engine stage: interleaved rounds")
    parser.add_argument("--round-s", type=float, default=0.25, help="engine stage: seconds per batch size per round")
    parser.add_argument("--stage", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stage-budget-s", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    return child(args) if args.stage else parent(args)


if __name__ == "__main__":
    sys.exit(main())
