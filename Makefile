# The README's two commands are `make up` (run everything locally) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help bootstrap services-up services-down test test-fast lint audit crds manifests bench up down kind-up

help:
	@echo "make up        run the whole system locally (control plane, Postgres, Redis, emulator, services)"
	@echo "               make up UP_ARGS=--node: on a real node, every Clarion process in a container (root)"
	@echo "make down      stop what 'make up' started"
	@echo "make test      install what is missing, then lint and run every test tier this machine can run"
	@echo "make lint      ruff and mypy"
	@echo "make audit     check the resolved dependencies against PyPI's published advisories"
	@echo "make crds      render crds/*.yaml from the Python models (and the chart/manifests copies)"
	@echo "make manifests render manifests/ from the Helm chart"
	@echo "make bench     run the benchmarks in bench/"

bootstrap:
	@bash scripts/bootstrap.sh

services-up:
	@bash scripts/local-services.sh start >/dev/null

services-down:
	@bash scripts/local-services.sh stop

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

audit: bootstrap
	$(PY) -m clarion_dev.audit

# A cold Go build runs beside the first tiers (scripts/bootstrap.sh); the tiers that need it run last.
test test-fast: export CLARION_BUILD_IN_BACKGROUND = 1

test: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -m "not kind" $(PYTEST_ARGS)

test-fast: bootstrap
	$(VENV)/bin/pytest -m "unit or integration" $(PYTEST_ARGS)

crds: bootstrap
	$(PY) -m clarion_dev.crdgen
	$(PY) -m clarion_dev.render_manifests

manifests: bootstrap
	$(PY) -m clarion_dev.render_manifests

bench: bootstrap
	$(PY) -m bench

up: bootstrap
	$(VENV)/bin/clarion dev up $(UP_ARGS)

down:
	@if [[ -x $(VENV)/bin/clarion ]]; then $(VENV)/bin/clarion dev down; fi
	@bash scripts/local-services.sh stop

kind-up:
	bash scripts/kind-up.sh
