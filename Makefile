# Quick start: `make demo` (train + evaluate + predict on the built-in data), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: setup test demo bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m pspnet.demo --out $(DEMO_DIR)

bench: setup
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/context_ablation.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache
