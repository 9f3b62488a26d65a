"""The most memory the request path may take, computed at start and refused with the arithmetic
when it is more than the process may use (the cgroup's limit, a Kubernetes limit, or the
machine's memory).

Per worker: what the process holds before any model loads, plus the bodies in flight with their
parse copies (the body budget, or every connection's largest body if that is less), plus the
images decoding at once (``preprocess_threads`` of them, each up to ``max_image_pixels``).
The models come on top and are not counted here: the headroom left for them is in the message
(and in the log when the check passes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from resserve.cgroup import cgroup_memory_limit
from resserve.config import ServerSettings
from resserve.errors import ConfigError
from resserve.server.body_budget import JSON_COPIES

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# Decoding one image holds its pixels about five bytes each at the peak (RGB, the converted copy,
# the decoder's own buffers): 64 PNGs of 40 M pixels, two decoding at once, peaked at 399 MiB.
DECODE_BYTES_PER_PIXEL = 5


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes, per worker unless said."""

    workers: int
    before_models: int
    bodies: int
    bodies_why: str
    decoding: int
    decoding_why: str
    limit: int | None
    limit_source: str

    @property
    def per_worker(self) -> int:
        return self.before_models + self.bodies + self.decoding

    @property
    def total(self) -> int:
        return self.workers * self.per_worker

    def arithmetic(self) -> str:
        workers = f"{self.workers} worker(s) x " if self.workers > 1 else ""
        return (f"{workers}({_mib(self.before_models)} before models + bodies {_mib(self.bodies)} "
                f"({self.bodies_why}) + decoding {_mib(self.decoding)} ({self.decoding_why})) = {_mib(self.total)}")


def _mib(size: int) -> str:
    return f"{size / MIB:,.0f} MiB"


def machine_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_rss(status: Path = Path("/proc/self/status")) -> int:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_limit() -> tuple[int | None, str]:
    """The memory this process may use and where that figure comes from."""
    if (limit := cgroup_memory_limit()) is not None:
        return limit, "the cgroup's memory limit"
    if (total := machine_memory()) is not None:
        return total, "the machine's memory"
    return None, "unknown"


def plan(settings: ServerSettings, workers: int, threads: int, before_models: int,
         limit: int | None, limit_source: str) -> MemoryPlan:
    """The worst case of the request path for these settings (pure: tests pass every input)."""
    every_connection = settings.max_connections * settings.max_body_bytes * JSON_COPIES
    if every_connection <= settings.max_body_memory_bytes:
        bodies, bodies_why = every_connection, (
            f"{settings.max_connections} connections x {_mib(settings.max_body_bytes)} x {JSON_COPIES} parse copies")
    else:
        bodies, bodies_why = settings.max_body_memory_bytes, "max_body_memory_bytes"
    decoding = threads * settings.max_image_pixels * DECODE_BYTES_PER_PIXEL
    decoding_why = (f"{threads} preprocess threads x {settings.max_image_pixels:,} pixels (max_image_pixels) "
                    f"x {DECODE_BYTES_PER_PIXEL} bytes")
    return MemoryPlan(workers, before_models, bodies, bodies_why, decoding, decoding_why, limit, limit_source)


def check(memory: MemoryPlan, settings: ServerSettings) -> None:
    """Raise ConfigError when the worst case does not fit, or a JSON body of ``max_body_bytes``
    could never fit in the body budget (it would get 503 and its retries 503 for ever)."""
    one_json = settings.max_body_bytes * JSON_COPIES
    if one_json > settings.max_body_memory_bytes:
        raise ConfigError(
            f"max_body_memory_bytes ({_mib(settings.max_body_memory_bytes)}) is less than one JSON body of "
            f"max_body_bytes parses into ({_mib(settings.max_body_bytes)} x {JSON_COPIES} = {_mib(one_json)}): "
            "raise max_body_memory_bytes or lower max_body_bytes")
    if memory.limit is None:
        log.warning("memory limit unknown: the request path may take %s", memory.arithmetic())
        return
    if memory.total > memory.limit:
        raise ConfigError(
            f"the request path may take more memory than this process may use: {memory.arithmetic()} > "
            f"{_mib(memory.limit)} ({memory.limit_source}), before any model is loaded. Lower "
            "max_body_memory_bytes, max_connections or max_body_bytes, preprocess_threads or max_image_pixels, "
            "or workers; or raise the limit")
    log.info("memory: the request path may take %s of %s (%s); %s left for the models",
             memory.arithmetic(), _mib(memory.limit), memory.limit_source, _mib(memory.limit - memory.total))
