# Quick start: `make demo` (train + evaluate + predict on the built-in data), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CORE := $(VENV)/.installed-core
ALL := $(VENV)/.installed-all
EXTRAS := test,deploy,serve,video,cityscapes,docs,mlflow,dist,shards,annotate
DEMO_DIR ?= runs/demo
PLAYGROUND_DIR ?= runs/playground
LS_VENV ?= .venv-label-studio
LS_ENV := $(LS_VENV)/.installed

.PHONY: setup setup-all label-studio-env test demo playground bench docs docs-serve dist clean

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

# Label Studio (its pins clash with ours) in its own environment, for the labelling-loop tests, with a migrated
# empty database in $(LS_VENV)/template that each test server starts from in seconds (no user: the tests make one)
$(LS_ENV): requirements/label-studio.txt
	rm -rf $(LS_VENV)
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet -r requirements/label-studio.txt
	env -u LABEL_STUDIO_USERNAME LABEL_STUDIO_BASE_DATA_DIR=$(LS_VENV)/template COLLECT_ANALYTICS=false \
		LATEST_VERSION_CHECK=false SENTRY_DSN= $(LS_VENV)/bin/label-studio init -q --data-dir $(LS_VENV)/template >/dev/null
	touch $(LS_ENV)

label-studio-env: $(LS_ENV)

test: $(ALL) $(LS_ENV)
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
	rm -rf $(VENV) $(LS_VENV) runs build dist site src/*.egg-info .pytest_cache
