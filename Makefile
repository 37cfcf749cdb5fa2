# `make train` and `make test` create .venv and install what they need on first use:
# `make install` (which `make train` runs) only what training needs, requirements.txt;
# `make install-test` (which `make test` runs) adds requirements-test.txt, the test extras.
# TensorFlow is not in the training install: requirements-prepare.txt has it (the tests too).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
CONFIG ?= configs/shapes_cnn.py
WORKDIR ?= runs/shapes_cnn

.PHONY: install install-test train test test-slow clean

install: $(STAMP)

install-test: $(TEST_STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# requirements-test.txt includes requirements-prepare.txt (TensorFlow), which includes
# requirements.txt, so pip resolves them together with the same pins.
$(TEST_STAMP): $(STAMP) requirements-test.txt requirements-prepare.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $(TEST_STAMP)

train: install
	$(PY) -m vision_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: install-test
	$(PY) -m pytest -q

test-slow: install-test
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
