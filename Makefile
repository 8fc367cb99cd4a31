# Quick start: `make demo` (train + evaluate + predict on the built-in data), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CORE := $(VENV)/.installed-core
ALL := $(VENV)/.installed-all
EXTRAS := test,deploy,serve,video,cityscapes,docs,mlflow,dist
DEMO_DIR ?= runs/demo
PLAYGROUND_DIR ?= runs/playground

.PHONY: setup setup-all test demo playground bench docs docs-serve dist clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"

# the package and its core dependencies, pinned by the tested stack
$(CORE): $(PY) pyproject.toml requirements/constraints.txt
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e .
	touch $(CORE)

# every extra, so that every test runs
$(ALL): $(PY) pyproject.toml requirements/constraints.txt
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[$(EXTRAS)]"
	touch $(CORE) $(ALL)

setup: $(CORE)

setup-all: $(ALL)

test: $(ALL)
	$(PY) -m pytest -q

demo: $(CORE)
	$(PY) -m pspnet.demo --out $(DEMO_DIR)

# the playground on the demo's workspace: http://127.0.0.1:8080/
playground: $(ALL)
	$(PY) -m pspnet playground $(PLAYGROUND_DIR)

bench: $(ALL)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/context_ablation.py

# the documentation site (mkdocs.yml, docs/) into site/; --strict turns every warning into an error
docs: $(ALL)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# the same site with live reload: http://127.0.0.1:8001/
docs-serve: $(ALL)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --dev-addr 127.0.0.1:8001

# an sdist and a wheel in dist/, checked by twine
dist: $(ALL)
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*

clean:
	rm -rf $(VENV) runs build dist site src/*.egg-info .pytest_cache
