# resserve container images. One set of build steps, two bases:
#
#   CPU (default):  podman build -t resserve:cpu .
#   GPU:            docker build -t resserve:gpu \
#                     --build-arg BASE_IMAGE=nvcr.io/nvidia/tensorrt:24.10-py3 --build-arg VARIANT=gpu .
#   model builder:  docker build -t resserve-builder:cpu --target builder .   (torch + NNCF: `resserve build`)
#
# The runtime image carries no torch: ONNX Runtime (or onnxruntime-gpu + TensorRT on the GPU base),
# OpenVINO, numpy, Pillow, FastAPI. It serves a model repository mounted at /models, built
# beforehand by the builder target (a Kubernetes Job does that in deploy/).
#
# The base is pinned by digest (a tag moves; a digest is one image). The digest below is the one
# public Dockerfiles pin for python:3.11-slim-bookworm; these machines reach no image registry, so
# it was not pulled here. Refresh it with
#   skopeo inspect --format '{{.Digest}}' docker://docker.io/library/python:3.11-slim-bookworm
# deploy/container/smoke.sh builds FROM a local Debian base instead (--build-arg BASE_IMAGE=...).
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# ---- install: a virtual environment with resserve and its runtime dependencies -----------------
FROM ${BASE_IMAGE} AS install
# VARIANT=cpu: ONNX Runtime CPU + OpenVINO; VARIANT=gpu: onnxruntime-gpu and TensorRT instead.
ARG VARIANT=cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt deploy/container/requirements-cpu.lock ./
COPY resserve ./resserve
# The venv is copied whole into the runtime stage, so build-time files never reach it.
# CPU: every dependency from the hashed lock (`make lock`), --require-hashes and --no-deps, so
# pip installs exactly those files or fails; then resserve itself, built with the locked setuptools.
# GPU: the lock is CPU-only (the CUDA wheels and the NGC base's Python are not these machines'),
# so the GPU variant resolves against constraints.txt. onnxruntime-gpu and onnxruntime install the
# same module, so the CPU wheel is removed and the GPU one reinstalled over it; the import check
# proves the CUDA provider, TensorRT and cuda-python (the TensorRT engine's CUDA memory and
# streams) are there, and torch is not.
# hadolint ignore=DL3013
RUN python3 -m venv /opt/resserve \
 && if [ "${VARIANT}" = "cpu" ]; then \
      /opt/resserve/bin/pip install --require-hashes --no-deps -r requirements-cpu.lock \
      && /opt/resserve/bin/pip install --no-deps --no-build-isolation . ; \
    else \
      /opt/resserve/bin/pip install -c constraints.txt ".[gpu,remote]" \
      && /opt/resserve/bin/pip uninstall -y onnxruntime \
      && /opt/resserve/bin/pip install -c constraints.txt --force-reinstall --no-deps onnxruntime-gpu \
      && /opt/resserve/bin/python -c "import importlib.util, onnxruntime, tensorrt, cuda.bindings.runtime; assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers(); assert importlib.util.find_spec('torch') is None; print(tensorrt.__version__)"; \
    fi \
 && /opt/resserve/bin/resserve --help > /dev/null

# ---- builder: adds torch and NNCF to export weights and quantize (`resserve build /models`) ------
FROM install AS builder
# torch's CPU wheels live on their own index (PyPI's torch is the multi-GB CUDA build).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN /opt/resserve/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" -c constraints.txt ".[export]"
ENV PATH=/opt/resserve/bin:${PATH} PYTHONUNBUFFERED=1
ENTRYPOINT ["resserve"]
CMD ["build", "/models"]

# ---- runtime: non-root, no build tools, the server as PID 1 (it handles SIGTERM and drains) ---
FROM ${BASE_IMAGE} AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin resserve
COPY --from=install /opt/resserve /opt/resserve
ENV PATH=/opt/resserve/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RESSERVE_HOST=0.0.0.0 \
    RESSERVE_PORT=8000 \
    RESSERVE_MODEL_REPO=/models \
    RESSERVE_BUILD_MISSING=false
USER 10001:10001
WORKDIR /tmp
# 8001: OIP v2 over gRPC, when RESSERVE_GRPC_PORT=8001 (the Kubernetes base sets it)
EXPOSE 8000 8001
# Readiness on loopback (resserve/healthcheck.py, standard library only): on RESSERVE_METRICS_PORT
# when set, else RESSERVE_PORT, with the first configured API key (RESSERVE_API_KEYS or
# RESSERVE_API_KEYS_FILE) so it passes where RESSERVE_AUTH_HEALTH=true. It reads the environment:
# give the port as RESSERVE_PORT, not as --port. Kubernetes ignores it and runs its own probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python3", "-m", "resserve.healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["resserve", "serve"]
