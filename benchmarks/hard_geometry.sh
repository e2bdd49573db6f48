#!/usr/bin/env bash
# The hard-geometry benchmark (benchmarks/hard-geometry/): one-cell baffles, mazes, porous
# media, splashes and closed pockets (deepcd.problems.scenes_hard), every solver on the same
# A and b, rtol 1e-6. CG and MIC(0) need 10^4-10^5 iterations on mazes: they are capped
# (--maxiter), and a capped run is reported as not converged with its final residual.
# Run alone on a quiet machine (timings); needs ./scripts/bootstrap.sh first.
set -eu
cd "$(dirname "$0")/.."
deepcd=.venv/bin/deepcd
out=benchmarks/hard-geometry
scenes=(--scene baffles --scene maze --scene porous --scene splash --scene pockets)
solvers=dcdm,mgpcg,mic0,amg-sa,amg-rs,cg
$deepcd bench "${scenes[@]}" --shape 64 --maxiter 20000 --solvers $solvers --no-progress \
    --out $out/3d-64
$deepcd bench "${scenes[@]}" --shape 128 --maxiter 3000 --solvers $solvers --no-progress \
    --out $out/3d-128
$deepcd bench "${scenes[@]}" --shape 512 --dim 2 --maxiter 20000 --solvers $solvers \
    --no-progress --out $out/2d-512
$deepcd bench "${scenes[@]}" --shape 1024 --dim 2 --maxiter 5000 --solvers $solvers \
    --no-progress --out $out/2d-1024
.venv/bin/python benchmarks/summarize_hard.py $out
