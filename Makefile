# Two commands matter: `make demo` (the local demo station) and `make test` (everything CI
# runs). Both bootstrap a fresh Debian machine first (apt packages + .venv).
SHELL := /bin/bash
PY := .venv/bin/python
DEMO_SECONDS ?= 120
export DEMO_SECONDS

.PHONY: setup test lint typecheck pytest demo bench detect-bench chaos fuzz clean

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

# Fault and attack scenarios against real processes, one table (docs/reliability.md);
# ~1 h at full length. CHAOS_ARGS=--short for the same faults in seconds.
chaos: setup
	$(PY) -m tests.chaos $(CHAOS_ARGS)

# Coverage-guided fuzzing (atheris) of every target in tests/fuzz/targets.py;
# FUZZ_SECONDS per target. Crashers land in tests/fuzz/corpus/TARGET/crash-*.
FUZZ_SECONDS ?= 60
fuzz: setup
	$(PY) -m tests.fuzz.atheris_run --seconds $(FUZZ_SECONDS)

clean:
	rm -rf demo-output bench-output chaos-output .pytest_cache .mypy_cache .ruff_cache
