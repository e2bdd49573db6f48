#!/usr/bin/env bash
# The cases where DCDM and the best classical solver are closest in the hard-geometry,
# variable-coefficient and DCDM-against-every-solver benchmarks (maze, splash and the
# ghost-fluid splash at 64³ and 512², the pool at 64³),
# each solver 5 times, round by round, each run in its own process (--repeats 5 --isolate):
# the tables show the median run, results.md every run's total. Results in
# benchmarks/close-cases/. Run alone on a quiet machine; needs ./scripts/bootstrap.sh first.
set -u
cd "$(dirname "$0")/.."
deepcd=.venv/bin/deepcd
out=benchmarks/close-cases
run() {  # NAME SCENE SHAPE DIM SOLVERS
    $deepcd bench --scene "$2" --shape "$3" --dim "$4" --solvers "$5" --repeats 5 --isolate \
        --no-progress --out "$out/$1"
}
run 3d-64-maze maze 64 3 dcdm,amg-sa,amg-rs
run 3d-64-splash splash 64 3 dcdm,mic0,amg-sa,amg-rs
run 3d-64-ghost-splash ghost-splash 64 3 dcdm,mic0,amg-rs
run 3d-64-pool pool 64 3 dcdm,mic0,amg-rs
run 2d-512-maze maze 512 2 dcdm,amg-sa,amg-rs
run 2d-512-splash splash 512 2 dcdm,mic0,amg-rs
run 2d-512-ghost-splash ghost-splash 512 2 dcdm,mic0,amg-rs
.venv/bin/python benchmarks/summarize.py $out
