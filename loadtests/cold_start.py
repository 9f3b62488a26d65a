"""Cold start of ``resserve serve``: seconds to liveness, to the first successful classify of one
model, and until every model of the repository is READY or FAILED (from the repository index).

    python loadtests/cold_start.py --model-repo /tmp/fresh-repo --model resnet50 --json out.json

Point it at a repository with nothing built (a fresh clone's ``model_repo/``, or a copy) to
measure a first start; it ends the server (and its build process) when done.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image


def measure(model_repo: Path, model: str, port: int, timeout_s: float, log: Path) -> dict[str, object]:
    """Start ``resserve serve`` and poll it once a second until every model has settled."""
    buffer = io.BytesIO()
    Image.new("RGB", (500, 375), (90, 120, 30)).save(buffer, "JPEG")
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RESSERVE_ALLOW_REPOSITORY_CONTROL": "true"}
    command = [sys.executable, "-m", "resserve", "serve", "--model-repo", str(model_repo), "--port", str(port)]
    started = time.monotonic()
    with log.open("wb") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    live_s = first_s = None
    settled: dict[str, tuple[float, str]] = {}
    try:
        while time.monotonic() - started < timeout_s and server.poll() is None:
            elapsed = lambda: round(time.monotonic() - started, 1)  # noqa: E731
            try:
                if live_s is None and httpx.get(f"{url}/v2/health/live", timeout=1).status_code == 200:
                    live_s = elapsed()
                if live_s is not None and first_s is None:
                    r = httpx.post(f"{url}/v2/models/{model}/classify", content=buffer.getvalue(), timeout=30,
                                   headers={"content-type": "image/jpeg"})
                    first_s = elapsed() if r.status_code == 200 else None
                if live_s is not None:
                    for entry in httpx.post(f"{url}/v2/repository/index", timeout=10).json():
                        if entry["state"] in ("READY", "FAILED"):
                            settled.setdefault(entry["name"], (elapsed(), entry["state"]))
                    if settled and len(settled) == len(httpx.post(f"{url}/v2/repository/index", timeout=10).json()):
                        ready = httpx.get(f"{url}/v2/health/ready", timeout=5).status_code
                        return {"live_s": live_s, "first_classify_s": first_s, "model": model,
                                "all_settled_s": elapsed(), "ready_status": ready, "models": settled}
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        return {"live_s": live_s, "first_classify_s": first_s, "model": model, "models": settled,
                "timed_out": True}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, required=True)
    parser.add_argument("--model", default="resnet50", help="the model whose first classify is timed")
    parser.add_argument("--port", type=int, default=8019)
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    parser.add_argument("--log", type=Path, default=Path("cold-start-server.log"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.model_repo, args.model, args.port, args.timeout_s, args.log)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
