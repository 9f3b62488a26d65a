"""``loadtests/gpu_check/`` must start on a lent machine that has python3 and CUDA torch alone: every
module of the package imports with the standard library only (a stage's child imports resserve,
torch and the rest when it runs). Each module is imported in ``python -I -S`` (no site-packages, no
PYTHONPATH) behind a meta-path finder that refuses, and records, any import outside the standard
library: one guarded by ``try`` fails the check too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "loadtests" / "gpu_check"

CHECK = r"""
import importlib, importlib.abc, json, sys

root, modules = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, root)
refused = []


class StandardLibraryOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in sys.stdlib_module_names or name.partition(".")[0] == "loadtests":
            return None
        refused.append(name)
        raise ImportError(f"{name} is not in the standard library")


sys.meta_path.insert(0, StandardLibraryOnly())
failed = {}
for module in modules:
    try:
        importlib.import_module(module)
    except BaseException as exc:
        failed[module] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"failed": failed, "refused": refused}))
"""


def _modules(root: Path, package: Path) -> list[str]:
    return [".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            for path in sorted(package.rglob("*.py"))]


def _import_isolated(root: Path, modules: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-I", "-S", "-c", CHECK, str(root), json.dumps(modules)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_every_module_imports_with_the_standard_library_alone() -> None:
    modules = _modules(ROOT, PACKAGE)
    expected = {"cli", "wheels", "supervisor", "table", "resserve_modules", "__main__", "stages", "stages.env",
                "stages.tests", "stages.engine", "stages.preprocess", "stages.server"}
    assert {f"loadtests.gpu_check.{name}" for name in expected} <= set(modules)
    assert _import_isolated(ROOT, modules) == {"failed": {}, "refused": []}


def test_the_check_fails_on_a_third_party_import(tmp_path: Path) -> None:
    package = tmp_path / "loadtests" / "fake_check"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "plain.py").write_text("import json\n")
    (package / "numeric.py").write_text("import numpy\n")
    (package / "guarded.py").write_text("try:\n    import yaml\nexcept ImportError:\n    yaml = None\n")
    result = _import_isolated(tmp_path, _modules(tmp_path, package))
    assert list(result["failed"]) == ["loadtests.fake_check.numeric"]
    assert result["refused"] == ["yaml", "numpy"]


def test_every_resserve_module_a_stage_names_exists() -> None:
    """The stages name resserve's modules as strings (imported on the GPU machine only): a module
    that moved would fail there, minutes into a lent machine's time, not here."""
    import ast
    import importlib.util

    source = (PACKAGE / "resserve_modules.py").read_text()
    names = [node.value.value for node in ast.parse(source).body
             if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
             and isinstance(node.value.value, str) and node.value.value.startswith("resserve")]
    assert len(names) >= 10
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    assert not missing, f"gpu_check names modules that do not exist: {missing}"
