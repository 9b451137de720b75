# OrthoFM. Two commands set everything up themselves:
#   make run    create .venv if needed, then serve the demo studies with MONAI Label on 127.0.0.1:8000
#   make test   create .venv if needed, then run the whole test suite
# Dependencies are pinned in requirements.txt; monailabel==0.8.5 goes on top with --no-deps because its
# declared dependency set is broken (sam2 / CUDA torch / pydicom 3, see docs/index.md).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.orthofm-installed
STUDIES := monailabel_app/sample_studies
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# pydicom 2.4 imports pkg_resources and warns about it on every start; the pin (setuptools<81) is deliberate.
QUIET_PKG_RESOURCES := -W "ignore:pkg_resources is deprecated:UserWarning"

.DEFAULT_GOAL := help
.PHONY: help venv sample-studies run test lint bench clean-demo

help:
	@echo "make run     set up .venv + demo studies, serve them on http://$(HOST):$(PORT) (Ctrl-C stops)"
	@echo "make test    set up .venv + demo studies, run the whole test suite"
	@echo "make lint    ruff check"
	@echo "make bench   run benchmarks/bench_*.py, write docs/benchmarks.md and docs/benchmarks.json"
	@echo "make venv    only create/update .venv (re-runs when requirements.txt or pyproject.toml change)"

venv: $(STAMP)

# One stamp for the whole install: rebuilt when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "OrthoFM needs Python >= 3.10; run: make PYTHON=python3.11 ...")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps monailabel==0.8.5
	$(PIP) install "setuptools<81"
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

sample-studies: $(STAMP)
	$(PY) $(QUIET_PKG_RESOURCES) -m orthofm.utils.sample_studies $(STUDIES)

run: $(STAMP) sample-studies
	$(VENV)/bin/orthofm serve --studies $(STUDIES) --host $(HOST) --port $(PORT)

# pytest exit codes: 0 all passed, 1 failures, 5 no tests collected (also a failure here).
test: $(STAMP) sample-studies
	@rc=0; PYTHONWARNINGS="ignore:pkg_resources is deprecated:UserWarning" $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	case $$rc in \
	  0) echo "make test: all tests passed" ;; \
	  5) echo "make test: FAILED - pytest collected no tests (exit 5)" ;; \
	  *) echo "make test: FAILED (pytest exit $$rc)" ;; \
	esac; \
	exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) $(QUIET_PKG_RESOURCES) benchmarks/run_all.py

# Forget what the demo server recorded (labels, datastore JSON) and the copied pydicom-data files.
clean-demo:
	rm -rf $(STUDIES)/labels $(STUDIES)/datastore_v2.json $(STUDIES)/.lock $(STUDIES)/RG3_UNCR.dcm $(STUDIES)/MR2_UNCR.dcm
