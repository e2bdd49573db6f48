"""Checks of deepcd.petsc under `mpiexec -n N` (run by tests/test_petsc.py).

    mpiexec -n 2 python tests/mpi/petsc_checks.py OUT.json

Every rank: (1) applies the PC to a right-hand side and compares its block with deepcd's own
V-cycle (serial, merge_below=0, float64) built on the whole grid (flag Laplacians and a
two-phase variable-coefficient operator); (2) solves a 32³ scene with
CG + the PC on all ranks and, on rank 0 alone (PETSc.COMM_SELF), the same system with one
process; (3) feeds bad input — flags that do not match the DMDA on one rank only, a 2D model,
a model with local weights, a DMDA whose blocks straddle the V-cycle's — and records the error
each rank raised. Rank 0 writes OUT.json. Objects are destroyed, and `deepcd.petsc.cleanup`
runs on every rank, before exit (a PC left for PetscFinalize crashes the process at exit).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

import deepcd.petsc as dp
from deepcd.nn.multigrid import build_hierarchy
from deepcd.nn.networks import build_network, coarsening_plan
from deepcd.nn.weights import load_solver
from deepcd.petsc import grid as G
from deepcd.problems import scene

PETSc = dp.require()


def reference(net, problem, r_grid: np.ndarray) -> np.ndarray:
    """deepcd's own V-cycle (merge_below=0, float64) on the whole grid."""
    from deepcd.nn.stencil import GridLaplacian

    plan = coarsening_plan(problem.shape, net.coarsest)
    flags = torch.as_tensor(np.array(problem.flags))[None]
    op = GridLaplacian.from_problem(problem, dtype=torch.float64)
    h = build_hierarchy(
        flags,
        problem.boundary,
        plan,
        dtype=torch.float64,
        merge_below=0,
        operator=op if problem.has_coefficients else None,
    )
    with torch.no_grad():
        r = torch.as_tensor(r_grid)[None, None] * h.grid.active
        return net._cycle(h, 0, r).numpy()[0, 0]


def apply_check(net, problem, gather_below: int) -> float:
    """max |PC r − reference| / max |reference| over this rank's unknowns."""
    comm = PETSc.COMM_WORLD
    da = G.create_dmda(problem.shape, comm)
    if problem.has_coefficients:
        A = dp.stencil_matrix(da, *problem.grid_stencil)
    else:
        A = dp.laplacian(da, problem.flags, problem.boundary)
    ksp = PETSc.KSP().create(comm)
    ksp.setOperators(A)
    ksp.setType("cg")
    ctx = dp.set_preconditioner(
        ksp, problem.flags, da=da, boundary=problem.boundary, solver=net, gather_below=gather_below
    )
    pc = ksp.getPC()
    pc.setUp()
    rng = np.random.default_rng(1)
    r_grid = rng.standard_normal(problem.shape)
    sl = tuple(slice(lo, hi) for lo, hi in G.owned_box(da))
    x, y = da.createGlobalVec(), da.createGlobalVec()
    x.array[:] = r_grid[sl].ravel()
    pc.apply(x, y)
    ref = reference(net, problem, r_grid)
    active = ctx.cycle.active
    got = y.array_r.reshape(active.shape)
    err = float(np.abs(got - ref[sl])[active].max() / np.abs(ref).max())
    levels = ctx.cycle.h.stats["gathered_level"]
    for obj in (x, y, ksp, A, da):
        obj.destroy()
    return err, levels


def solve(problem, comm, net) -> tuple[int, np.ndarray, float]:
    """(iterations, the solution on the whole grid (rank 0), true relative residual)."""
    da = G.create_dmda(problem.shape, comm)
    A = dp.laplacian(da, problem.flags, problem.boundary)
    ksp = PETSc.KSP().create(comm)
    ksp.setOperators(A)
    ksp.setType("cg")
    ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
    ksp.setTolerances(rtol=1e-6, atol=0.0, max_it=200)
    dp.set_preconditioner(ksp, problem.flags, da=da, boundary=problem.boundary, solver=net)
    sl = tuple(slice(lo, hi) for lo, hi in G.owned_box(da))
    b = da.createGlobalVec()
    b.array[:] = problem.to_grid(problem.b)[sl].ravel()
    x = b.duplicate()
    ksp.solve(b, x)
    its = ksp.getIterationNumber()
    nat = da.createNaturalVec()
    da.globalToNatural(x, nat)
    scatter, x0 = PETSc.Scatter.toZero(nat)
    scatter.scatter(nat, x0, PETSc.InsertMode.INSERT_VALUES, PETSc.ScatterMode.FORWARD)
    xg = x0.array_r.copy().reshape(problem.shape) if comm.getRank() == 0 else None
    for obj in (scatter, x0, nat, x, b, ksp, A, da):
        obj.destroy()
    rel = float("nan")
    if xg is not None:
        v = problem.from_grid(xg)
        rel = float(np.linalg.norm(problem.b - problem.A @ v) / np.linalg.norm(problem.b))
    return its, xg, rel


def bad_inputs(problem, net) -> dict:
    """The error each bad input raised on this rank ('' when none: a failed check)."""
    comm = PETSc.COMM_WORLD
    rank = comm.getRank()
    out = {}

    def attempt(key, fn):
        try:
            fn()
            out[key] = ""
        except ValueError as err:
            out[key] = str(err)

    def with_flags(flags, model, da=None):
        da_ = da if da is not None else G.create_dmda(problem.shape, comm)
        A = dp.laplacian(da_, problem.flags, problem.boundary) if da is None else None
        ksp = PETSc.KSP().create(comm)
        if A is not None:
            ksp.setOperators(A)
        try:
            dp.set_preconditioner(ksp, flags, da=da_, boundary=problem.boundary, solver=model)
        finally:
            for obj in (ksp, A, da_ if da is None else None):
                if obj is not None:
                    obj.destroy()

    wrong = problem.flags if rank == 0 else problem.flags[:, :, :-1]  # one rank only
    attempt("flags_shape", lambda: with_flags(wrong, net))
    attempt("model_2d", lambda: with_flags(problem.flags, build_network("vcycle", 2)))
    attempt("local_weights", lambda: with_flags(problem.flags, build_network("vcycle", 3, local=8)))

    def straddling():
        n = problem.shape[0]
        size = comm.getSize()
        parts = [n // size + (1 if p < n % size else 0) for p in range(size)]
        if size > 1:
            parts[0] += 1
            parts[-1] -= 1  # an odd boundary
        da = PETSc.DMDA().create(
            dim=3,
            sizes=problem.shape[::-1],
            proc_sizes=(1, 1, size),
            ownership_ranges=([problem.shape[2]], [problem.shape[1]], parts),
            stencil_width=1,
            comm=comm,
        )
        A = ksp = None
        try:
            A = dp.laplacian(da, problem.flags, problem.boundary)
            ksp = PETSc.KSP().create(comm)
            ksp.setOperators(A)
            dp.set_preconditioner(ksp, problem.flags, da=da, boundary=problem.boundary, solver=net)
        finally:
            for obj in (ksp, A, da):
                if obj is not None:
                    obj.destroy()

    if comm.getSize() > 1:
        attempt("straddling_blocks", straddling)
    return out


def main() -> int:
    comm = PETSc.COMM_WORLD
    net, _ = load_solver("vcycle-3d")
    net = net.double()
    rank = comm.getRank()
    report: dict = {"np": comm.getSize()}
    small = scene("smoke-obstacles", (16, 16, 16), seed=3)
    report["apply_err_gathered"], report["gathered_level"] = apply_check(net, small, 4096)
    report["apply_err_distributed"], report["distributed_gathered_level"] = apply_check(
        net, scene("pool", (32, 32, 32), seed=1), 64
    )
    report["apply_err_weighted"], _ = apply_check(net, scene("two-phase", (32, 32, 32), seed=0), 64)
    problem = scene("smoke-obstacles", (32, 32, 32), seed=0)
    its, xg, rel = solve(problem, comm, net)
    report.update(iterations=its, relres=rel)
    if rank == 0:
        its1, xg1, rel1 = solve(problem, PETSc.COMM_SELF, net)
        report.update(
            iterations_1=its1,
            relres_1=rel1,
            solution_diff=float(np.abs(xg - xg1).max() / np.abs(xg1).max()),
        )
    errors = bad_inputs(problem, net)
    gathered = comm.tompi4py().gather(
        {"apply_err": report["apply_err_distributed"], "errors": errors}
    )
    if rank == 0:
        report["ranks"] = gathered
        with open(sys.argv[1], "w") as f:
            json.dump(report, f, indent=1)
    dp.cleanup()  # every rank: nothing of ours left for PetscFinalize
    return 0


if __name__ == "__main__":
    sys.exit(main())
