#!/usr/bin/env bash
# Install (idempotent) and run the whole test suite: lint and the format check, the import
# layers (setup.cfg's import-linter contracts), unit and end-to-end tests, and the benchmark
# suites in quick mode as smoke tests. Extra arguments go to pytest.
# The real-data tests read CIFAR-10 from $FASTRES_CIFAR10 (skipped without it, except in CI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check fastres tests benchmarks
.venv/bin/ruff format --check fastres tests benchmarks
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest "$@"
