# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
TORCH ?= torch==2.13.0   # the CPU build; an unpinned torch may pull a multi-GB CUDA build
VENV := .venv
BIN := $(VENV)/bin
PIPELINE ?= pipelines/mnist-lenet300.yaml

.PHONY: setup data run test typecheck lint docs clean gpu-carry

$(BIN)/vib-deploy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,ray]"  # ray: the studies' executor (tests/studies/test_executor.py)
	# TensorRT's type stubs only (its runtime deps come from NVIDIA's index): pyright checks the TensorRT code
	$(BIN)/pip install -q --no-deps tensorrt-stubs
	# a real tritonserver 2.51 + Python backend for `vib-deploy serve` (55 MB wheel); --no-deps: it pins numpy<2,
	# and only its bundled server is used
	$(BIN)/pip install -q --no-deps "nvidia-pytriton==0.7.0"
	touch $@

setup: $(BIN)/vib-deploy

data: setup
	$(BIN)/vib-deploy data fetch mnist

run: data
	$(BIN)/vib-deploy run $(PIPELINE)
	$(BIN)/vib-deploy package runs/$(basename $(notdir $(PIPELINE))) --repo models

# Fashion-MNIST (a Debian package) for the GPU-day dry run: best effort, its test says why it skips without it
test: data typecheck lint docs
	-$(BIN)/vib-deploy data fetch fashion-mnist
	# two workers, each test file on one (its module fixtures are built once), the slowest files first
	# (tests/conftest.py SLOW_FIRST), each worker's processes on its share of the cores (wall times: docs/benchmarks.md)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

typecheck: setup
	$(BIN)/pyright --pythonpath $(BIN)/python

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# the documentation site: the CLI reference is generated from the typer app first; --strict fails on a broken link
# (NO_MKDOCS_2_WARNING: mkdocs-material's banner about its successor, printed on every build)
docs: setup
	$(BIN)/python scripts/cli_reference.py && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

# what scripts/gpu-day.sh needs on a GPU machine that reaches no registry (wheels + IDX files); fails over 64 MiB
gpu-carry: setup
	PYTHON=$(BIN)/python scripts/gpu-carry.sh

clean:
	rm -rf $(VENV) runs models site docs/cli.md
