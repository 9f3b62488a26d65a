"""Fuzzed uploads and HTTP abuse against a real ``resserve serve`` process: 4xx, never 5xx, bounded memory."""

from __future__ import annotations

import random
from pathlib import Path

import httpx

from resserve.perf.server_process import server_process
from resserve.perf.overload import rss_mib
from tests.fuzz_seeds import SEEDS
from tests.server_harness import jpeg, write_model

CLIENT_ERRORS = {400, 404, 413, 415, 422}
CONTENT_TYPES = ["image/jpeg", "image/png", "image/webp", "image/gif", "image/tiff", "application/octet-stream",
                 "text/plain", "multipart/form-data; boundary=x", "image/jpeg; charset=utf-8", ""]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(max(len(buf), 1))
        kind = rng.choice(["truncate", "flip", "splice", "overwrite"])
        if kind == "truncate":
            del buf[at:]
        elif kind == "flip" and buf:
            buf[at] ^= 1 << rng.randrange(8)
        elif kind == "splice":
            buf[at:at] = rng.randbytes(rng.randint(1, 64))
        else:
            chunk = rng.randbytes(rng.randint(1, 16))
            buf[at:at + len(chunk)] = chunk
    return bytes(buf)


def test_fuzzed_uploads_get_4xx_and_memory_stays_bounded(model_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx)
    rng = random.Random(7)
    with server_process(repo, log_dir=tmp_path, env={"RESSERVE_MAX_BODY_BYTES": "1000000"}, kill=True) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        def blast(count: int) -> dict[int, int]:
            seen: dict[int, int] = {}
            for _ in range(count):
                body = mutate(rng, rng.choice(SEEDS)) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 3000))
                headers = {"content-type": rng.choice(CONTENT_TYPES)}
                r = client.post("/v2/models/r18/classify", content=body, headers=headers,
                                params={"top_k": rng.choice(["1", "5", "-1", "0", "1001", "abc", "3"])})
                assert r.status_code < 500, (r.status_code, r.text, headers)
                seen[r.status_code] = seen.get(r.status_code, 0) + 1
            return seen

        blast(100)  # warm-up: allocator arenas and Pillow's plugins settle
        before = rss_mib(server.process.pid)
        seen = blast(300)
        after = rss_mib(server.process.pid)
        assert before is not None and after is not None
        assert set(seen) <= {200, *CLIENT_ERRORS} and len(seen) >= 3, seen
        assert after - before < 40, f"RSS grew {before:.0f} -> {after:.0f} MiB over 300 fuzzed requests"
        ok = client.post("/v2/models/r18/classify", content=jpeg(), headers={"content-type": "image/jpeg"})
        assert ok.status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
