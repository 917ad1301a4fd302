# SkyTorch developer entry points.
#   make demo   set up .venv and run the demo on the embedded local backend
#   make test   set up .venv (with test extras, Chromium) and run the whole test suite
#
# Setup keeps a torch you already have: if `$(PYTHON)` can import torch, the
# virtual environment sees it (--system-site-packages). Otherwise the CPU build
# of torch is installed before anything else, so that pip never resolves the
# multi-GB CUDA build on its own.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0

.PHONY: setup setup-test demo test bench browser-deps proto crd clean deploy-kind

$(VENV)/.setup: pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "Using the torch that $(PYTHON) already has"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_CPU)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.setup-test: $(VENV)/.setup
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

setup: $(VENV)/.setup

setup-test: $(VENV)/.setup-test browser-deps

# Debian's Chromium for the browser tests; never a browser downloaded by a tool.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

demo: setup
	$(PY) -m skytorch.demo

test: setup-test
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup-test
	$(PY) benchmarks/bench_transport.py
	$(PY) benchmarks/bench_ready.py

proto: setup-test
	$(PY) scripts/gen_proto.py

clean:
	rm -rf $(VENV) build *.egg-info artifacts

KIND_CLUSTER ?= kind
# Build the server and operator images, load them into a kind cluster, install
# CRD + RBAC + operator. Needs kind, kubectl and podman or docker; not run in CI.
# TORCH_VARIANT=cu128 builds a CUDA server image.
deploy-kind:
	deploy/kind.sh $(KIND_CLUSTER)

# Regenerate the CRD after editing deploy/crds/generate.py.
crd: setup-test
	$(PY) deploy/crds/generate.py > deploy/crds/compute.skytorch.dev_computes.yaml
