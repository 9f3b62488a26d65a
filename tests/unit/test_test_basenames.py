"""Test folders have no __init__.py, so two test files with one basename stop pytest's collection
of the whole suite ("import file mismatch"): keep every basename unique."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_file_has_a_basename_of_its_own() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert names, "no test files found"
    assert not [name for name, count in names.items() if count > 1]
