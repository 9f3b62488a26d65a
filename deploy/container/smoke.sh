#!/usr/bin/env bash
# Build the CPU image with podman and smoke-run it: start with host networking and a model
# repository mounted read-only, wait for readiness, classify one JPEG, check the health check and
# the non-root user, send SIGTERM, and require a clean exit (code 0).
#
#   bash deploy/container/smoke.sh            (root, Debian; installs podman etc. if missing)
# Env: IMAGE (default localhost/resserve:cpu), PORT (default 18000), PYTHON (a Python with resserve
# and torch to build the test model repository; default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-localhost/resserve:cpu}
PORT=${PORT:-18000}
PYTHON=${PYTHON:-.venv/bin/python}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/container/containers.conf}
WORK=$(mktemp -d /tmp/resserve-smoke.XXXXXX)
NAME=resserve-smoke-$$

cleanup() {
  podman rm -f "$NAME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  step "installing podman, buildah, debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah fuse-overlayfs slirp4netns runc \
    debootstrap uidmap >/dev/null
fi

step "base image"
bash deploy/container/make-base-image.sh

step "building $IMAGE"
# These machines reach PyPI through a TLS-inspecting proxy: pip inside the build needs the host's
# CA bundle. That is a property of the machine, not of the Dockerfile.
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$WORK/pip.conf"
# The Dockerfile pins its base by digest; no registry is reachable here, so the local base built
# above stands in for it by tag.
podman build --quiet --format docker --network=host \
  -v /etc/ssl/certs:/etc/ssl/certs:ro -v "$WORK/pip.conf:/etc/pip.conf:ro" \
  --build-arg BASE_IMAGE=docker.io/library/python:3.11-slim \
  --target runtime -t "$IMAGE" . >/dev/null
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = "10001:10001" ] || {
  echo "image does not run as the non-root user 10001"; exit 1; }
if podman run --rm --entrypoint python3 "$IMAGE" -c "import torch" 2>/dev/null; then
  echo "the runtime image must not carry torch"; exit 1
fi

step "model repository (ResNet-18, seeded random weights, built on the host)"
mkdir -p "$WORK/models/resnet18"
cat > "$WORK/models/resnet18/config.yaml" <<'YAML'
source: {arch: resnet18, random_weights: true, seed: 0}
max_batch_size: 8
dynamic_batching: {max_queue_delay_ms: 2, preferred_batch_sizes: [4, 8]}
YAML
"$PYTHON" -m resserve.cli --log-level warning build "$WORK/models"
chmod -R a+rX "$WORK/models"

step "starting the container (API keys from a mounted file; health needs a key too)"
KEY=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$KEY" > "$WORK/api-keys" && chmod a+r "$WORK/api-keys"
podman run -d --name "$NAME" --network host -v "$WORK/models:/models:ro" \
  -v "$WORK/api-keys:/etc/resserve/api-keys:ro" -e RESSERVE_API_KEYS_FILE=/etc/resserve/api-keys \
  -e RESSERVE_AUTH_HEALTH=true \
  -e RESSERVE_PORT="$PORT" -e RESSERVE_HOST=127.0.0.1 --read-only --tmpfs /tmp \
  --cap-drop ALL --security-opt no-new-privileges --health-interval=disable "$IMAGE" >/dev/null
for _ in $(seq 1 120); do
  if "$PYTHON" - "$PORT" "$KEY" <<'PY' 2>/dev/null; then break; fi
import sys, httpx
sys.exit(0 if httpx.get(f"http://127.0.0.1:{sys.argv[1]}/v2/health/ready", timeout=1,
                        headers={"x-api-key": sys.argv[2]}).status_code == 200 else 1)
PY
  if [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" != "true" ]; then
    podman logs "$NAME"; echo "container exited before it was ready"; exit 1
  fi
  sleep 1
done

step "classifying one image"
"$PYTHON" - "$PORT" "$KEY" <<'PY'
import io, sys, httpx
from resserve.synthetic import synthetic_image
buffer = io.BytesIO()
synthetic_image(500, 375, 1).save(buffer, format="JPEG")
url = f"http://127.0.0.1:{sys.argv[1]}/v2/models/resnet18/classify?top_k=3"
keyless = httpx.post(url, content=buffer.getvalue(), headers={"content-type": "image/jpeg"}, timeout=30)
assert keyless.status_code == 401, (keyless.status_code, keyless.text)
r = httpx.post(url, content=buffer.getvalue(), headers={"content-type": "image/jpeg", "x-api-key": sys.argv[2]},
               timeout=30)
assert r.status_code == 200, (r.status_code, r.text)
predictions = r.json()["results"][0]["predictions"]
assert len(predictions) == 3, predictions
print("classified:", predictions[0])
PY
# The image's HEALTHCHECK reads the key file as the server does (health needs a key here).
podman healthcheck run "$NAME" && echo "HEALTHCHECK passes (with the configured key)"

step "SIGTERM"
podman kill --signal TERM "$NAME" >/dev/null
code=$(podman wait "$NAME")
podman logs "$NAME" 2>&1 | tail -5
[ "$code" = "0" ] || { echo "container exited with $code after SIGTERM"; exit 1; }
echo "container drained and exited 0"
step "smoke test passed"
