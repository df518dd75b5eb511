#!/usr/bin/env bash
# Install (idempotent) and run the whole test suite: lint, unit and end-to-end tests, and the
# benchmark suites in quick mode as smoke tests. Extra arguments go to pytest.
# The real-data tests read CIFAR-10 from $FASTRES_CIFAR10 (skipped without it, except in CI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check fastres tests benchmarks
exec .venv/bin/python -m pytest "$@"
