"""The start-up memory check (issue 30, finding 7): the request path's worst case against the
memory the process may use, refused with the arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from resserve.config import ServerSettings
from resserve.errors import ConfigError
from resserve.server.memory_plan import check, machine_memory, plan

MIB = 1024 * 1024
GIB = 1024 * MIB


def test_the_defaults_fit_in_four_gib_with_two_threads() -> None:
    settings = ServerSettings(model_repo=Path("unused"))
    memory = plan(settings, workers=1, threads=2, before_models=200 * MIB, limit=4 * GIB, limit_source="test")
    assert memory.bodies == settings.max_body_memory_bytes  # 512 connections x 20 MiB x 18 is far more
    assert memory.decoding == 2 * settings.max_image_pixels * 5
    check(memory, settings)  # does not raise
    assert memory.total == 200 * MIB + GIB + 400_000_000


def test_a_worst_case_over_the_limit_is_refused_with_its_arithmetic() -> None:
    settings = ServerSettings(model_repo=Path("unused"), max_body_memory_bytes=3 * GIB)
    memory = plan(settings, workers=2, threads=1, before_models=100 * MIB, limit=4 * GIB,
                  limit_source="the cgroup's memory limit")
    with pytest.raises(ConfigError) as refused:
        check(memory, settings)
    message = str(refused.value)
    assert "2 worker(s) x (100 MiB before models + bodies 3,072 MiB (max_body_memory_bytes)" in message
    assert "1 preprocess threads x 40,000,000 pixels (max_image_pixels) x 5 bytes" in message
    assert f"> {4 * 1024:,} MiB (the cgroup's memory limit)" in message


def test_few_connections_count_their_bodies_not_the_budget() -> None:
    settings = ServerSettings(model_repo=Path("unused"), max_connections=2)
    memory = plan(settings, workers=1, threads=1, before_models=0, limit=None, limit_source="unknown")
    assert memory.bodies == 2 * settings.max_body_bytes * 18
    assert "2 connections x 20 MiB x 18 parse copies" in memory.arithmetic()
    check(memory, settings)  # no limit known: logged, not refused


def test_a_budget_below_one_json_body_is_refused() -> None:
    settings = ServerSettings(model_repo=Path("unused"), max_body_memory_bytes=100 * MIB)
    memory = plan(settings, workers=1, threads=1, before_models=0, limit=GIB, limit_source="test")
    with pytest.raises(ConfigError, match=r"less than one JSON body of max_body_bytes parses into \(20 MiB x 18"):
        check(memory, settings)


def test_machine_memory_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684000 kB\nMemFree:  1 kB\n")
    assert machine_memory(meminfo) == 24684000 * 1024
    assert machine_memory(tmp_path / "missing") is None
