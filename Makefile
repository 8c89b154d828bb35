# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Torch and torchvision must come from the same build: install them together first.
TORCH_SPEC ?= "torch>=2.4,<=2.14.1" "torchvision>=0.19,<=0.29.1"

.PHONY: setup demo test test-fast bench gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/eco demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The GPU path end to end on one GPU (pipeline/check_gpu.py). No setup step: GPU machines may have torch but no
# network, so it runs with .venv's Python when there is one, else the machine's python3 (torch, torchvision, numpy).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) -m pipeline.check_gpu $(GPU_CHECK_ARGS)

bench: $(STAMP)
	$(VENV)/bin/eco bench decode

clean:
	rm -rf $(VENV) outputs .pytest_cache
