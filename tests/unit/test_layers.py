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
    assert not [m for m in modules if m == "resserve.build" or m.startswith("resserve.build.")]
