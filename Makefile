# Two commands set everything up on a fresh machine:
#   make serve   install, build the default model repo, and serve it on 127.0.0.1:8000
#   make test    install and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# constraints.txt pins the CPU torch build these machines have; drop it to choose your own.
PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt
MODEL_REPO ?= model_repo
DEFAULT_MODEL := $(MODEL_REPO)/resnet50/1/model.onnx

.PHONY: install serve build test test-slow bench gpu-wheels gpu-check image-smoke k8s-validate lock clean

$(BIN)/resserve: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[export,test]'
	touch $@

install: $(BIN)/resserve

HOST ?= 127.0.0.1
PORT ?= 8000

# Builds what is missing or stale (official weights when they can be downloaded; seeded random
# weights, announced, when offline), then serves every model of the repository.
serve: install
	$(BIN)/resserve serve --model-repo $(MODEL_REPO) --host $(HOST) --port $(PORT)

build: install
	$(BIN)/resserve build $(MODEL_REPO)

test: install
	$(BIN)/ruff check resserve tests loadtests
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

test-slow: install
	RESSERVE_SLOW=1 $(BIN)/python -m pytest

bench: install
	$(BIN)/resserve build $(MODEL_REPO) --model resnet50
	$(BIN)/resserve bench engine $(DEFAULT_MODEL) --batch-sizes 1,8,16,32 --json bench-engine.json
	$(BIN)/resserve bench server $(MODEL_REPO) --model resnet50 --json bench-server.json

# A lent GPU machine (docs/benchmarks.md, "On a lent GPU machine"): its python3 has CUDA torch
# and torchvision but few of our dependencies, and no network. `make gpu-wheels` (here) downloads
# the rest, at this venv's versions, into gpu-wheels/ (ignored; a run carries it); `make gpu-check`
# (there) installs what is missing into a temporary folder and runs the check: one table, under
# 8 minutes. Where there is no GPU it skips each stage with the reason and exits 0.
PY_VERSION ?= 3.12
GPU_WHEELS ?= gpu-wheels
GPU_WHEELS_MAX_MIB ?= 55
GPU_WHEELS_PACKAGES := pydantic pydantic-settings pyyaml typer rich fastapi 'uvicorn[standard]' \
  python-multipart orjson prometheus-client opentelemetry-api opentelemetry-sdk python-json-logger \
  httpx aiohttp onnx onnxscript safetensors pytest pytest-asyncio 'cuda-python>=12.6,<13' 
# e.g. onnxruntime: 28 MiB, over the limit with the rest (the GPU machine has its own); grpcio: 6 MiB
GPU_WHEELS_EXTRA ?=
MANYLINUX := manylinux1 manylinux2014 $(foreach n,5 17 24 27 28 31 34,manylinux_2_$(n))
# Pulled in as dependencies but the GPU machine's own (numpy, Pillow, torch and its needs): removed.
GPU_MACHINE_OWN := numpy pillow torch torchvision triton sympy mpmath nvidia_*
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)

gpu-wheels: install
	mkdir -p $(GPU_WHEELS)
	constraints=$$(mktemp) && $(BIN)/pip freeze --exclude-editable | grep -v ' @ ' >$$constraints && \
	$(BIN)/pip download --quiet --disable-pip-version-check --only-binary=:all: --implementation cp \
	  --python-version $(PY_VERSION) $(foreach p,$(MANYLINUX),--platform $(p)_x86_64) -c $$constraints \
	  -d $(GPU_WHEELS) $(GPU_WHEELS_PACKAGES) $(GPU_WHEELS_EXTRA); status=$$?; rm -f $$constraints; exit $$status
	rm -f $(addprefix $(GPU_WHEELS)/,$(addsuffix -*.whl,$(GPU_MACHINE_OWN)))
	@size=$$(du -sm $(GPU_WHEELS) | cut -f1); \
	echo "$(GPU_WHEELS)/: $$(ls $(GPU_WHEELS)/*.whl | wc -l) wheels, $$size MiB (limit $(GPU_WHEELS_MAX_MIB) MiB of the 64 MiB a run carries)"; \
	test $$size -le $(GPU_WHEELS_MAX_MIB) || { echo "over $(GPU_WHEELS_MAX_MIB) MiB: drop GPU_WHEELS_EXTRA or a PY_VERSION"; exit 1; }

gpu-check:
	$(GPU_PYTHON) loadtests/gpu_check --wheels $(GPU_WHEELS) $(GPU_CHECK_ARGS)

# Build the CPU image with podman (local debootstrap base where no registry is reachable), run it,
# classify one image, SIGTERM it and require exit 0. Needs root (installs podman when missing).
image-smoke: install
	bash deploy/container/smoke.sh

# The CPU runtime image's hashed lock file (its Dockerfile installs it with --require-hashes): the
# runtime dependencies and the otlp extra, plus the build backend, at the versions this venv's
# tests ran (pip freeze as constraints), for CPython 3.11 on x86_64 manylinux, hashes from PyPI.
# Run it after changing pyproject.toml's dependencies; tests/integration/test_deploy.py checks that
# every dependency is in it.
RUNTIME_LOCK := deploy/container/requirements-cpu.lock
lock: install
	$(BIN)/pip install --quiet --disable-pip-version-check 'uv>=0.5'
	constraints=$$(mktemp) && $(BIN)/pip freeze --exclude-editable | grep -v ' @ ' >$$constraints && \
	printf 'setuptools>=68\nwheel\n' | $(BIN)/uv pip compile pyproject.toml - --extra otlp --extra remote -c $$constraints \
	  --generate-hashes --no-annotate --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --index-url https://pypi.org/simple --custom-compile-command 'make lock' -o $(RUNTIME_LOCK); \
	  status=$$?; rm -f $$constraints; exit $$status

# Render every kustomize overlay and validate it offline against the Kubernetes schemas (KServe's
# objects against KServe's CRD schemas, deploy/kserve/schemas).
k8s-validate: install
	for overlay in deploy/overlays/cpu deploy/overlays/gpu deploy/monitoring; do \
	  kubectl kustomize $$overlay | $(BIN)/kubernetes-validate --strict --quiet - || exit 1; done
	kubectl kustomize deploy/kserve | $(BIN)/python deploy/kserve/validate_kserve.py -

clean:
	rm -rf $(VENV) $(MODEL_REPO)/*/[0-9]*/ .pytest_cache
