# Two commands do everything on a fresh clone:  make demo   and   make test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
DATA ?= $(abspath ../shared/data/fashion-mnist)
# The data: TRAINLAB_DATA if set, else ../shared beside the clone when present, else
# trainlab's own chain (cache, official mirrors, npm package).
export TRAINLAB_DATA ?= $(if $(wildcard $(DATA)/train-images-idx3-ubyte.gz),$(DATA),)

.PHONY: setup demo test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Installs once per change of pyproject.toml. torch is pinned here (the CPU build on disk);
# pyproject declares torch>=2.10 for everyone else.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[report,export,test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m trainlab.demo

test: setup
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
