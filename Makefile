# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) a virtual environment in .venv and install skutag into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.skutag-installed
DEMO_OUT ?= demo-out

.PHONY: venv test test-slow test-edge lint demo bench-cpu clean device-bundle

$(STAMP): pyproject.toml .ci/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' -c .ci/constraints.txt
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

test-slow: venv
	$(PY) -m pytest -m slow

# The edge-format converters (ExecuTorch, LiteRT, OpenVINO, Core ML) are heavy optional extras:
# installed into the same venv only by this target, tested apart from `make test`.
EDGE_STAMP := $(VENV)/.skutag-edge-installed
$(EDGE_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,edge]' -c .ci/constraints.txt -c .ci/edge-constraints.txt
	touch $(EDGE_STAMP)

test-edge: $(EDGE_STAMP)
	$(PY) -m pytest -m edge tests/exporter

demo: venv
	$(PY) -m pip install -q -e ".[insight]" -c .ci/constraints.txt
	$(VENV)/bin/skutag demo --out $(DEMO_OUT)

bench-cpu: venv
	mkdir -p bench-out
	$(PY) -m benchmarks.cpu_suite | tee bench-out/cpu-suite.md

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build *.egg-info

# What a GPU session carries to the device machine (see benchmarks/device/README.md).
device-bundle:
	bash benchmarks/device/prepare.sh --ort-gpu
