# Two commands for a new machine (see README):  `make run`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
# On CPU-only machines torch==2.13.0 resolves to a local CPU build and no CUDA wheels are pulled.
# On GPU machines the same pin resolves to the CUDA build; override with TORCH_SPEC=... if needed.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: setup run bench test lint docs
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,docs,metaworld,mujoco,wandb,marl,ray]"
	# Procgen: procgen-mirror pins numpy<2 but runs under numpy 2 when installed without its
	# pins, with the few packages it needs at run time
	$(PY) -m pip install -q --no-deps procgen-mirror==0.10.7 gym3==0.3.3 gym==0.26.2
	$(PY) -m pip install -q cffi pycparser cloudpickle
	touch $@

run: setup
	$(VENV)/bin/metarl sequence experiments/configs/sequence_meta_quick.yaml

bench: setup
	$(PY) experiments/bench_ssm.py

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(PY) .ci/import_contracts.py

docs: setup
	$(VENV)/bin/mkdocs build --strict
