"""The server imports neither torch nor the build code, so the runtime image needs neither.

``lint-imports`` checks the import graph statically (pyproject.toml); this checks what a real
import of the server loads, in a fresh interpreter so no other test's imports count.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import resserve.server.app
import resserve.server.serve
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_the_server_imports_no_torch_and_no_build_code() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert "resserve.server.app" in modules  # the probe imported what it should
    assert not [m for m in modules if m == "torch" or m.startswith("torch.")]
    assert not [m for m in modules if m == "resserve.builder" or m.startswith("resserve.builder.")]


# torch made unimportable, as in the GPU runtime image: the TensorRT engine, its CUDA runtime and
# the plan builder still import, and the availability probe names what is missing without torch.
NO_TORCH_PROBE = """
import importlib.abc, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not in this image")
        return None

sys.meta_path.insert(0, NoTorch())
import resserve.engines.tensorrt, resserve.engines.cuda_runtime, resserve.builder.compile_tensorrt
from resserve.engines.hardware import tensorrt_available
from resserve.engines.tensorrt import TensorRTEngine
engine = TensorRTEngine("missing.plan")
try:
    engine.load()
    loaded = "loaded"
except Exception as exc:
    loaded = type(exc).__name__ + ": " + str(exc)
print(json.dumps({"available": tensorrt_available(), "load": loaded,
                  "torch": [m for m in sys.modules if m == "torch" or m.startswith("torch.")]}))
"""


def test_the_tensorrt_path_imports_and_reports_without_torch() -> None:
    done = subprocess.run([sys.executable, "-c", NO_TORCH_PROBE], capture_output=True, text=True, timeout=120,
                          check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["torch"] == []
    ok, why = result["available"]
    assert not ok and "torch" not in why  # here: no TensorRT, or no cuda-python, or no GPU; never "no torch"
    assert result["load"].startswith("EngineUnavailableError: cannot load the TensorRT plan")
