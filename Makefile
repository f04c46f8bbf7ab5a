# Two commands matter: `make demo` (the local demo station) and `make test` (everything CI
# runs). Both bootstrap a fresh Debian machine first (apt packages + .venv).
SHELL := /bin/bash
PY := .venv/bin/python
DEMO_SECONDS ?= 120
export DEMO_SECONDS

.PHONY: setup test lint typecheck pytest demo bench detect-bench clean

setup:
	@deploy/dev/bootstrap.sh

lint: setup
	.venv/bin/ruff check .

typecheck: setup
	.venv/bin/mypy stationseal agent ingest sim dashboards demo evidence stack

pytest: setup
	$(PY) -m pytest

test: lint typecheck pytest

demo: setup
	$(PY) -m demo --seconds $(DEMO_SECONDS) --out demo-output

bench: setup
	$(PY) -m benchmarks.run_all

detect-bench: setup
	$(PY) -m benchmarks.run_all --only detect

clean:
	rm -rf demo-output bench-output .pytest_cache .mypy_cache .ruff_cache
