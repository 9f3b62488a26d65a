# Two commands set everything up on a fresh machine:
#   make serve   install, build the default model repo, and run it
#   make test    install and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# constraints.txt pins the CPU torch build these machines have; drop it to choose your own.
PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt
MODEL_REPO ?= model_repo
DEFAULT_MODEL := $(MODEL_REPO)/resnet50/1/model.onnx

.PHONY: install serve test test-slow lint bench clean

$(BIN)/resserve: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[export,test]'
	touch $@

install: $(BIN)/resserve

# Official weights when they can be downloaded; seeded random weights (announced) when offline.
$(DEFAULT_MODEL): | $(BIN)/resserve
	$(BIN)/resserve export resnet50 --weights torchvision:ResNet50_Weights.IMAGENET1K_V2 \
		--fallback-random --seed 0 --output $@

serve: $(DEFAULT_MODEL)
	$(BIN)/resserve describe $(DEFAULT_MODEL)
	$(BIN)/resserve bench engine $(DEFAULT_MODEL) --batch-sizes 1,8,32

test: install
	$(BIN)/python -m pytest

test-slow: install
	RESSERVE_SLOW=1 $(BIN)/python -m pytest

bench: $(DEFAULT_MODEL)
	$(BIN)/resserve bench engine $(DEFAULT_MODEL) --batch-sizes 1,8,32 --json bench-engine.json

clean:
	rm -rf $(VENV) $(MODEL_REPO)/*/[0-9]*/ .pytest_cache
