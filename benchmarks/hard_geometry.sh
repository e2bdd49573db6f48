#!/usr/bin/env bash
# The hard-geometry benchmark (benchmarks/hard-geometry/): one-cell baffles, mazes, porous
# media, splashes and closed pockets (deepcd.problems.scenes_hard), every solver on the same
# A and b, rtol 1e-6, one `deepcd bench` per grid size. CG and MIC(0) need 10^4-10^5
# iterations on mazes: they are capped (--maxiter), and a capped run is reported as not
# converged with its final residual. Each solver runs in its own process (--isolate: its own
# peak memory). Run alone on a quiet machine (timings); needs ./scripts/bootstrap.sh first.
set -u
cd "$(dirname "$0")/.."
deepcd=.venv/bin/deepcd
out=benchmarks/hard-geometry
scenes=(--scene baffles --scene maze --scene porous --scene splash --scene pockets)
solvers=dcdm,mgpcg,mic0,amg-sa,amg-rs,cg
run() {  # NAME SHAPE DIM MAXITER
    $deepcd bench "${scenes[@]}" --shape "$2" --dim "$3" --maxiter "$4" --solvers $solvers \
        --isolate --no-progress --out "$out/$1" ||
        echo "hard_geometry: $1: deepcd bench exited $? (a capped run did not converge)" >&2
}
run 3d-64 64 3 20000
run 3d-128 128 3 3000
run 2d-512 512 2 20000
run 2d-1024 1024 2 5000
.venv/bin/python benchmarks/summarize.py $out
