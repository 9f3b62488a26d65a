"""deploy/kserve: resserve as a KServe serving runtime, rendered by kustomize and validated offline
against KServe's own CRD schemas (pinned release), then checked against the server itself: the
arguments are real `resserve serve` options, the env names real settings, the probes real routes."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from resserve.cli import app as cli_app
from resserve.config import ServerSettings
from resserve.server.app import create_app
from resserve.server.memory_plan import check, plan

ROOT = Path(__file__).parents[2]
KSERVE = ROOT / "deploy" / "kserve"
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (it renders kustomize offline)")


def _validator():  # deploy/ is not a package: load the script as the Makefile runs it
    spec = importlib.util.spec_from_file_location("validate_kserve", KSERVE / "validate_kserve.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render() -> list[dict[str, Any]]:
    out = subprocess.run([KUBECTL or "kubectl", "kustomize", str(KSERVE)], check=True, capture_output=True,
                         text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def runtimes(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterServingRuntime"}


def test_schemas_are_kserves_pinned_release() -> None:
    for path in sorted((KSERVE / "schemas").glob("*.json")):
        source = json.loads(path.read_text())["x-source"]
        assert source["kserve"] == "v0.20.0" and len(source["sha256"]) == 64
        assert source["apiVersion"].startswith("serving.kserve.io/")
    assert {p.stem for p in (KSERVE / "schemas").glob("*.json")} == {
        "clusterservingruntime-v1alpha1", "inferenceservice-v1beta1"}


@needs_kubectl
def test_renders_and_validates_strictly() -> None:
    docs = render()
    assert sorted(d["kind"] for d in docs) == ["ClusterServingRuntime"] * 2 + ["InferenceService"] * 2
    assert _validator().validate(docs) == []


@needs_kubectl
def test_the_validator_rejects_what_the_api_server_would() -> None:
    validator, docs = _validator(), render()
    isvc = copy.deepcopy(next(d for d in docs if d["kind"] == "InferenceService"))
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    isvc["spec"]["predictor"]["minReplicas"] = "one"
    runtime = copy.deepcopy(next(d for d in docs if d["kind"] == "ClusterServingRuntime"))
    del runtime["spec"]["containers"]
    found = validator.validate([isvc, runtime])
    assert any("storageURI" in p and "not allowed" in p for p in found), found
    assert any("minReplicas" in p and "integer" in p for p in found), found
    assert any("'containers' is a required property" in p for p in found), found
    unknown = {"apiVersion": "serving.kserve.io/v1alpha2", "kind": "InferenceService", "metadata": {"name": "x"}}
    assert "no schema" in validator.validate([unknown])[0]


@needs_kubectl
def test_runtimes_run_what_the_server_accepts(tmp_path: Path) -> None:
    docs = render()
    found = runtimes(docs)
    assert set(found) == {"resserve", "resserve-onnx"}
    formats = {name: [f["name"] for f in r["spec"]["supportedModelFormats"]] for name, r in found.items()}
    assert formats == {"resserve": ["resserve"], "resserve-onnx": ["onnx"]}
    paths = set(create_app(ServerSettings(model_repo=tmp_path)).openapi()["paths"])
    fields = {f"RESSERVE_{name.upper()}" for name in ServerSettings.model_fields}
    serve_help = CliRunner().invoke(cli_app, ["serve", "--help"], terminal_width=400).output
    for runtime in found.values():
        spec = runtime["spec"]
        assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
        (container,) = spec["containers"]
        assert container["name"] == "kserve-container"  # the name KServe's storage initializer mounts into
        assert container["image"] == "registry.example.com/resserve:0.1.0-cpu"
        options = [a for a in container["args"] if a.startswith("--")]
        assert all(o in serve_help for o in options), [o for o in options if o not in serve_help]
        args = dict(zip(container["args"][::2], container["args"][1::2], strict=False))
        assert args["--port"] == "8080" and args["--host"] == "0.0.0.0"
        env = {e["name"]: e["value"] for e in container["env"]}
        assert set(env) <= fields, set(env) - fields
        # The API keys come from the Secret resserve-api-keys, mounted where the setting reads them.
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        keys_dir, keys_file = env["RESSERVE_API_KEYS_FILE"].rsplit("/", 1)
        assert mounts[keys_dir]["readOnly"] is True
        secret = volumes[mounts[keys_dir]["name"]]["secret"]
        assert secret["secretName"] == "resserve-api-keys" and secret["items"] == [{"key": "api-keys", "path": keys_file}]
        assert not secret.get("optional", False)  # no Secret, no pod: it never serves without keys
        keys = tmp_path / "api-keys"
        keys.write_text("a-key\n")
        env["RESSERVE_API_KEYS_FILE"] = str(keys)
        settings = ServerSettings(**{k.removeprefix("RESSERVE_").lower(): v for k, v in env.items()})
        assert settings.api_keys == ["a-key"]
        assert settings.grpc_port == 9000
        limit = int(container["resources"]["limits"]["memory"].removesuffix("Gi")) << 30
        check(plan(settings, 1, settings.preprocess_threads or 0, 300 << 20, limit, "the pod's limit"), settings)
        assert settings.preprocess_threads == 2
        for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                            ("livenessProbe", "/v2/health/live")):
            assert container[probe]["httpGet"] == {"path": path, "port": 8080} and path in paths
        assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics" and "/metrics" in paths
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0 and sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert "memory" in container["resources"]["limits"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/tmp"]]["emptyDir"] and volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        for isvc in (d for d in docs if d["kind"] == "InferenceService"):
            assert isvc["spec"]["predictor"]["terminationGracePeriodSeconds"] > pause + settings.graceful_shutdown_s
    assert "--no-build-missing" in found["resserve"]["spec"]["containers"][0]["args"]
    onnx_args = found["resserve-onnx"]["spec"]["containers"][0]["args"]
    assert onnx_args[onnx_args.index("--model-file") + 1] == "/mnt/models"
    assert onnx_args[onnx_args.index("--work-dir") + 1].startswith("/tmp/")


@needs_kubectl
def test_example_inference_services_name_their_runtime_and_ports() -> None:
    docs = render()
    found = runtimes(docs)
    for isvc in (d for d in docs if d["kind"] == "InferenceService"):
        model = isvc["spec"]["predictor"]["model"]
        runtime = found[model["runtime"]]
        assert model["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
        if model["protocolVersion"] == "grpc-v2":
            env = {e["name"]: e["value"] for e in runtime["spec"]["containers"][0]["env"]}
            assert model["ports"] == [{"name": "h2c", "containerPort": int(env["RESSERVE_GRPC_PORT"]),
                                       "protocol": "TCP"}]
        assert isvc["spec"]["predictor"]["securityContext"]["runAsNonRoot"] is True


def test_the_validator_script_runs_as_the_makefile_runs_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                                   "metadata": {"name": "x"}, "spec": {"predictor": {"minReplicas": "one"}}}))
    result = subprocess.run([sys.executable, str(KSERVE / "validate_kserve.py"), str(bad)], capture_output=True,
                            text=True)
    assert result.returncode == 1 and "minReplicas" in result.stderr
