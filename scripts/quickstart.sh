#!/usr/bin/env bash
# Set up the environment, then benchmark the shipped trained solver (DCDM) against the
# classical solvers on the default scene (64³ smoke with obstacles, rtol 1e-6).
# Writes bench-out/quickstart/{results.json,results.md,*.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
venv="${DEEPCD_VENV:-.venv}"
rc=0
"$venv/bin/deepcd" bench --scene smoke-obstacles --shape 64 \
    --solvers dcdm,cg,jacobi,ic0,mic0,amg-sa,amg-rs,newton-amg --rtol 1e-6 \
    --out bench-out/quickstart "$@" || rc=$?
echo
echo "deepcd is installed in $venv/: run 'source $venv/bin/activate' to put the deepcd command on PATH"
exit "$rc"
