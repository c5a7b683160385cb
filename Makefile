# Entry points: `make demo` (the whole pipeline on the embedded sample), `make test`, and `make rehearsal` (the
# whole pipeline at the paper's shapes in an isolated copy: the check before real data, README, Real data).
# Each creates .venv when it is missing and installs the project into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
INSTALLED := $(VENV)/.installed

# Stage commands run `python` from the project's environment. Nothing reports usage to outside services:
# .dvc/config turns DVC's analytics off, eva02at.core.tracking MLflow's telemetry, flows/common.py the rest.
export PATH := $(BIN):$(PATH)

.PHONY: demo test lint install rehearsal

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(INSTALLED)
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

rehearsal: $(INSTALLED)
	$(BIN)/python -m rehearsal

# two processes: most tests wait on one single-threaded process (a stage, a server, a cluster) at a time
test: $(INSTALLED)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
