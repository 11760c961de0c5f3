# The two entry points the README documents; each runs the set-up first.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.slstm-installed

.PHONY: setup test experiment lint

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

# The main job: the paper's MNIST comparison on real Fashion-MNIST.
experiment: setup
	$(BIN)/slstm experiment fashion-mnist

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
