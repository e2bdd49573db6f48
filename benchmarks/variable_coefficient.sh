#!/usr/bin/env bash
# The variable-coefficient benchmark (benchmarks/variable-coefficient/): two-phase density
# jumps at ratios 1, 10, 1000 and 10^4, a ghost-fluid free surface and cut-cell solids
# (deepcd.problems.scenes_coefficients), every solver on the same A and b, rtol 1e-6, one
# `deepcd bench` per (grid size, ratio). dcdm is the shipped solver, dcdm-untrained the same
# architecture with its classical initial weights. CG needs 10^4+ iterations at high ratios:
# it is capped (--maxiter) and a capped run is reported as not converged with its final
# residual. Run alone on a quiet machine (timings); needs ./scripts/bootstrap.sh first.
set -u
cd "$(dirname "$0")/.."
deepcd=.venv/bin/deepcd
out=benchmarks/variable-coefficient
solvers=dcdm,dcdm-untrained,mic0,amg-sa,amg-rs,cg
run() {  # NAME SHAPE DIM MAXITER [deepcd bench arguments...]
    local name=$1 shape=$2 dim=$3 maxiter=$4
    shift 4
    $deepcd bench "$@" --shape "$shape" --dim "$dim" --maxiter "$maxiter" --solvers $solvers \
        --no-progress --out "$out/$name" ||
        echo "variable_coefficient: $name: deepcd bench exited $? (a capped run did not converge)" >&2
}
for size in "3d-64 64 3 20000" "3d-128 128 3 3000" "2d-512 512 2 20000" "2d-1024 1024 2 3000"; do
    set -- $size
    for ratio in 1 10 1000 10000; do
        run "$1-ratio$ratio" "$2" "$3" "$4" --scene two-phase --param "ratio=$ratio"
    done
    run "$1-surfaces" "$2" "$3" "$4" --scene ghost-splash --scene cut-cells
done
.venv/bin/python benchmarks/summarize.py $out
