#!/usr/bin/env bash
# Set up the environment, lint, and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
venv="${DEEPCD_VENV:-.venv}"
"$venv/bin/ruff" check deepcd tests benchmarks
"$venv/bin/ruff" format --check deepcd tests benchmarks
exec "$venv/bin/python" -m pytest "$@"
