# ScaleBox appliance. Quick start on a fresh Debian 12 machine, as root:
#   make run    set up everything, then start the appliance in the foreground
#   make test   set up everything, then run every check and test (Podman end-to-end included)

VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup run test lint unit e2e bench clean

setup:
	bash scripts/setup.sh

run: setup
	$(VENV)/bin/scalebox serve

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check appliance gateway controlplane
	$(VENV)/bin/mypy

test: setup lint
	$(VENV)/bin/pytest

unit: setup
	$(VENV)/bin/pytest tests/unit

e2e: setup
	$(VENV)/bin/pytest tests/e2e

# Side by side with nginx and raw Podman (about 8 minutes); writes bench/RESULTS.md.
bench: setup
	bash scripts/bench-setup.sh
	$(PY) -m bench --results bench/RESULTS.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
