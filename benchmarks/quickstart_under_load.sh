#!/usr/bin/env bash
# The quick start (64³ smoke with obstacles, every solver, rtol 1e-6) while a competing CPU
# load runs: one busy-loop process, which takes one core of this project's 2-core machine.
# Writes benchmarks/quickstart-under-load/{results.json,results.md,*.png,load.json}.
# results.json's environment holds the thread settings and os.getloadavg() before and after;
# load.json the load before the busy loop started (other work on the machine counts too).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${DEEPCD_VENV:-.venv}/bin/python"
out="${1:-benchmarks/quickstart-under-load}"
mkdir -p "$out"
before=$(cut -d' ' -f1-3 /proc/loadavg)
"$py" -c "while True: pass" &
busy=$!
trap 'kill "$busy" 2>/dev/null || true' EXIT
sleep 2
rc=0
"$py" -m deepcd.cli bench --scene smoke-obstacles --shape 64 \
    --solvers dcdm,cg,jacobi,ic0,mic0,amg-sa,amg-rs,newton-amg --rtol 1e-6 \
    --out "$out" --no-progress || rc=$?
after=$(cut -d' ' -f1-3 /proc/loadavg)
cat > "$out/load.json" <<JSON
{"busy_loop_processes": 1, "loadavg_before_busy_loop": "$before", "loadavg_after_run": "$after",
 "command": "benchmarks/quickstart_under_load.sh"}
JSON
exit "$rc"
