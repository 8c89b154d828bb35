# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Torch and torchvision must come from the same build: install them together first.
TORCH_SPEC ?= "torch>=2.4,<=2.14.1" "torchvision>=0.19,<=0.29.1"

.PHONY: setup demo test test-fast bench gpu-check ray-compat clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/eco demo

# Two test files at a time (pytest-xdist, a whole file per process: a file's Ray instance and cluster stay in one
# process). Every test is isolated from other Ray instances on the machine (private temp dirs, free ports). Files
# start in collection order (tests/conftest.py puts the long ones first), not xdist's most-tests-first.
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

# The GPU path end to end on one GPU (pipeline/bench/check_gpu.py). No setup step: GPU machines may have torch but no
# network, so it runs with .venv's Python when there is one, else the machine's python3 (torch, torchvision, numpy).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) -m pipeline.bench.check_gpu $(GPU_CHECK_ARGS)

# Another supported Ray minor (pyproject.toml's range), without a second copy of torch: a venv that installs only
# that Ray (and this project) and reads every other package from .venv through a .pth file. Runs the Ray contract
# tests and a short training run (tests/test_train.py) on it.
RAY_VERSION ?= 2.58.1
COMPAT := .venv-ray$(RAY_VERSION)
ray-compat: $(STAMP)
	test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > $(COMPAT)/eco-base-site.txt
	$(COMPAT)/bin/python -c "import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()['purelib'], 'eco_base_venv.pth').write_text(pathlib.Path('$(COMPAT)/eco-base-site.txt').read_text())"
	$(COMPAT)/bin/python -m pip install -q --no-deps "ray==$(RAY_VERSION)"
	$(COMPAT)/bin/python -m pip install -q --no-deps -e .
	$(COMPAT)/bin/python -c "import ray; assert ray.__version__ == '$(RAY_VERSION)', ray.__version__; print('ray', ray.__version__)"
	$(COMPAT)/bin/python -m pytest -q -p no:cacheprovider tests/test_ray_contract.py tests/test_train.py

bench: $(STAMP)
	$(VENV)/bin/eco bench decode

clean:
	rm -rf $(VENV) .venv-ray* outputs .pytest_cache
