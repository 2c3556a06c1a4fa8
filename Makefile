# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch comes from pip's configured indexes. Plain PyPI serves the multi-GB CUDA build on Linux: on a machine
# without a GPU add TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU build (the image does).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# onnxruntime (CPU) or onnxruntime-gpu: never both in one environment.
ORT_EXTRA ?= cpu
# The model repository: REPO=..., or the MODEL_REPOSITORY the service itself reads.
REPO ?= $(or $(MODEL_REPOSITORY),model_repository)

TOOLS  := .tools
PROMETHEUS := $(TOOLS)/prometheus/usr/bin/prometheus

.PHONY: run test observe install install-test export proto train clean help prometheus gpu-bundle

help:
	@echo "make run    install (if needed) and start what the project serves"
	@echo "make test   install with test extras (if needed) and run the test suite"
	@echo "make observe  make run plus a local Prometheus (deploy/prometheus/) on :9090"
	@echo "make export export the ONNX model repository again (make run does it when missing or older than the export code or weights)"
	@echo "make train  retrain all three models into models/checkpoints/ (~25 min on 2 CPU cores)"
	@echo "make gpu-bundle  build .gpu/ for the GPU check (tests/gpu/check.sh; BENCHMARKS.md, GPU check)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip >/dev/null

$(VENV)/.torch: | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[$(ORT_EXTRA)]"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[test,$(ORT_EXTRA)]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Exported again when the export code or the weights change (a repository from an older export lacks what the
# service now feeds its graphs, e.g. the decoder's in-graph cache reorder and top-k).
EXPORT_SOURCES := $(wildcard export/*.py) $(wildcard models/checkpoints/*/*)
$(REPO)/.complete: $(EXPORT_SOURCES) | $(VENV)/.installed
	$(PY) -m export --out $(REPO)
	touch $@

run: install $(REPO)/.complete
	MODEL_REPOSITORY=$(REPO) $(PY) -m service.app

# Debian's prometheus package (server + promtool), unpacked without root or install scripts.
$(PROMETHEUS):
	rm -rf $(TOOLS)/prometheus $(TOOLS)/dl && mkdir -p $(TOOLS)/dl
	cd $(TOOLS)/dl && apt-get download prometheus && dpkg -x prometheus_*.deb ../prometheus
	rm -rf $(TOOLS)/dl
	$(PROMETHEUS) --version | head -1

prometheus: $(PROMETHEUS)

# The monitoring tests need Prometheus; where apt-get cannot fetch it they skip (CI sets REQUIRE_PROMETHEUS=1).
test: install-test
	-@$(MAKE) --no-print-directory $(PROMETHEUS)
	$(PY) -m pytest

observe: install $(REPO)/.complete $(PROMETHEUS)
	MODEL_REPOSITORY=$(REPO) $(PY) -m service.observe

export: install
	$(PY) -m export --out $(REPO)
	touch $(REPO)/.complete

proto: install-test
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. proto/inference.proto proto/open_inference.proto

train: install
	$(PY) -m models.train classifier
	$(PY) -m models.train captioner
	$(PY) -m models.train translator

# What tests/gpu/check.sh needs on a GPU machine without internet: repositories, expected outputs, wheels in parts.
gpu-bundle: install-test $(REPO)/.complete
	$(PY) tests/gpu/bundle.py --repository $(REPO) --out .gpu

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(REPO) $(TOOLS) .gpu
