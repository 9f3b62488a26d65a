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

.PHONY: install serve build test test-slow bench image-smoke k8s-validate clean

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

# Build the CPU image with podman (local debootstrap base where no registry is reachable), run it,
# classify one image, SIGTERM it and require exit 0. Needs root (installs podman when missing).
image-smoke: install
	bash deploy/container/smoke.sh

# Render every kustomize overlay and validate it offline against the Kubernetes schemas (KServe's
# objects against KServe's CRD schemas, deploy/kserve/schemas).
k8s-validate: install
	for overlay in deploy/overlays/cpu deploy/overlays/gpu deploy/monitoring; do \
	  kubectl kustomize $$overlay | $(BIN)/kubernetes-validate --strict --quiet - || exit 1; done
	kubectl kustomize deploy/kserve | $(BIN)/python deploy/kserve/validate_kserve.py -

clean:
	rm -rf $(VENV) $(MODEL_REPO)/*/[0-9]*/ .pytest_cache
