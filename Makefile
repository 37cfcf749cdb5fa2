# `make train` and `make test` create .venv and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/shapes_cnn.py
WORKDIR ?= runs/shapes_cnn

.PHONY: install train test test-slow clean

install: $(STAMP)

# requirements-test.txt: test-only extras (torch/torchvision, pycocoevalcap).
$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

train: install
	$(PY) -m vision_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
