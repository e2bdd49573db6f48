#!/usr/bin/env bash
# PETSc's compiled geometric multigrid (CG + PCMG on the DMDA: Q0 transfers, Galerkin coarse
# operators, Chebyshev/Jacobi smoothing; one process) beside DCDM and deepcd's PETSc PC, at
# 128³ (four scenes) and 256³ (smoke-obstacles): the CPU-speed issue's PETSc comparison.
# Results in benchmarks/petsc/mg-128 and mg-256. Needs ./scripts/bootstrap.sh --petsc.
set -euo pipefail
cd "$(dirname "$0")/.."
test -x .venv-petsc/bin/python || ./scripts/bootstrap.sh --petsc
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
.venv/bin/deepcd bench --scene smoke-plume --scene smoke-obstacles --scene bunny --scene pool \
    --shape 128 --np 1 --no-progress --solvers dcdm,petsc-mg,petsc-deepcd \
    --out benchmarks/petsc/mg-128
.venv/bin/deepcd bench --scene smoke-obstacles --shape 256 --np 1 --isolate --no-progress \
    --solvers dcdm,petsc-mg --out benchmarks/petsc/mg-256
