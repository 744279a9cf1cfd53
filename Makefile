# drsn-serve: set-up, tests and the model study. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQS := models/training/requirements.txt

.PHONY: help test lint pytest reproduce venv

help:
	@echo "make test       lint and run every test (what CI runs)"
	@echo "make reproduce  retrain every model of the study, ship the DRSN and rewrite models/reports/"
	@echo "make venv       create .venv with the pinned Python requirements"

venv: $(VENV)/.installed

$(VENV)/.installed: $(REQS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(REQS)
	touch $@

lint: venv
	$(VENV)/bin/ruff check models/training
	$(VENV)/bin/ruff format --check models/training

pytest: venv
	cd models/training && ../../$(PY) -m pytest -q

test: lint pytest

reproduce: venv
	cd models/training && ../../$(PY) -m drsntrain reproduce
