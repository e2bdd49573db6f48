#!/usr/bin/env bash
# PETSc peers beside deepcd at 128³ on 1 and 2 MPI processes, then the scaling runs and the
# projection to 1024³ (benchmarks/petsc/). Needs ./scripts/bootstrap.sh --petsc (.venv-petsc);
# the benchmark itself runs from the default .venv and starts mpiexec for the peers.
# Peers run one thread per rank (DEEPCD_THREADS=1, as hypre and GAMG); dcdm and mgpcg run
# in-process with the machine's threads, for reference.
set -euo pipefail
cd "$(dirname "$0")/.."
test -x .venv-petsc/bin/python || ./scripts/bootstrap.sh --petsc
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
scenes=(--scene smoke-plume --scene smoke-obstacles --scene bunny --scene pool)
.venv/bin/deepcd bench "${scenes[@]}" --shape 128 --np 1 --no-progress \
    --solvers petsc-deepcd,petsc-hypre,petsc-gamg,dcdm,mgpcg --out benchmarks/petsc/np1
.venv/bin/deepcd bench "${scenes[@]}" --shape 128 --np 2 --no-progress \
    --solvers petsc-deepcd,petsc-hypre,petsc-gamg --out benchmarks/petsc/np2
# a variable-coefficient scene (two-phase, density ratio 1000) at 64³, both process counts
for np in 1 2; do
    .venv/bin/deepcd bench --scene two-phase --shape 64 --np $np --no-progress \
        --solvers petsc-deepcd,petsc-hypre,petsc-gamg,dcdm --out benchmarks/petsc/two-phase-np$np
done
# scaling runs, the projection, and benchmarks/petsc/results.md from all of the above
.venv/bin/python benchmarks/petsc_scaling.py --out benchmarks/petsc
