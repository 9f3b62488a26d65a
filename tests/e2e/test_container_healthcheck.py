"""The image's HEALTHCHECK (``python -m resserve.healthcheck``, issue 30) against a real server:
it passes where health needs a key (it sends the configured one), asks the metrics port when there
is one, and fails, with the reason, when the server cannot answer or refuses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from resserve.healthcheck import configured_key, probe_url
from resserve.perf.server_process import free_port, server_process
from tests.server_harness import write_model

KEY = "k" * 32


def healthcheck(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("RESSERVE_")}
    return subprocess.run([sys.executable, "-m", "resserve.healthcheck", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=30, check=False)


def test_probe_url_and_key_from_the_server_environment(tmp_path: Path) -> None:
    assert probe_url({}) == "http://127.0.0.1:8000/v2/health/ready"
    assert probe_url({"RESSERVE_HOST": "0.0.0.0", "RESSERVE_PORT": "8080"}) == "http://127.0.0.1:8080/v2/health/ready"
    assert probe_url({"RESSERVE_HOST": "::", "RESSERVE_PORT": "8080", "RESSERVE_METRICS_PORT": "8002"},
                     "/v2/health/live") == "http://[::1]:8002/v2/health/live"
    assert configured_key({}) is None
    assert configured_key({"RESSERVE_API_KEYS": " a1 ,b2"}) == "a1"
    assert configured_key({"RESSERVE_API_KEYS": '["j1", "j2"]'}) == "j1"
    keys = tmp_path / "api-keys"
    keys.write_text("\n  f1  \nf2\n")
    assert configured_key({"RESSERVE_API_KEYS_FILE": str(keys)}) == "f1"


def test_healthcheck_sends_the_key_and_uses_the_metrics_port(model_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "r18", model_onnx)
    keys = tmp_path / "api-keys"
    keys.write_text(KEY + "\n")
    metrics_port = free_port()
    env = {"RESSERVE_API_KEYS_FILE": str(keys), "RESSERVE_AUTH_HEALTH": "true",
           "RESSERVE_METRICS_PORT": str(metrics_port)}
    with server_process(repo, log_dir=tmp_path, env=env, kill=True,
                        ready_headers={"x-api-key": KEY}) as server:
        port = server.url.rsplit(":", 1)[1]
        ready = healthcheck({"RESSERVE_PORT": port, **env})
        assert ready.returncode == 0, ready.stderr
        assert f":{metrics_port}/v2/health/ready: 200" in ready.stdout
        assert healthcheck({"RESSERVE_PORT": port, **env}, "--live").returncode == 0

        # Without the key the server refuses it: the check fails and says why.
        keyless = healthcheck({"RESSERVE_PORT": port, "RESSERVE_METRICS_PORT": str(metrics_port)})
        assert keyless.returncode == 1 and "401" in keyless.stderr
        wrong = healthcheck({"RESSERVE_PORT": port, "RESSERVE_METRICS_PORT": str(metrics_port),
                             "RESSERVE_API_KEYS": "not-the-key"})
        assert wrong.returncode == 1 and "401" in wrong.stderr


def test_healthcheck_fails_when_nothing_listens(tmp_path: Path) -> None:
    closed = healthcheck({"RESSERVE_PORT": str(free_port())})
    assert closed.returncode == 1 and "refused" in closed.stderr.lower()
    missing = healthcheck({"RESSERVE_API_KEYS_FILE": str(tmp_path / "absent")})
    assert missing.returncode == 1 and "cannot read the API key" in missing.stderr
