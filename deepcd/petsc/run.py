"""One PETSc solve under MPI — the entry point of the benchmark peers (`deepcd.bench.peers`):

    mpiexec -n N python -m deepcd.petsc.run --problem P.h5 --pc hypre|gamg|mg|deepcd --out R.json

P.h5 holds the grid form of a problem (`write_grid_problem`: datasets `flags` int8 and `b`
float64 of the grid's shape, attribute `boundary`); each rank reads only its DMDA block.
CG with the chosen preconditioner, the convergence test on the unpreconditioned residual
‖b − Ax‖ ≤ rtol·‖b‖ (deepcd's), from x0 = 0, after a warm-up solve on a small grid (JIT and
library loading are not timed). Rank 0 writes R.json (iterations, residual history with times,
setup, solve and assembly seconds, peak memory of every rank, the PETSc options used) and, with
--x-out, the solution on the grid (.npy) for the caller's true-residual check.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

# CG + BoomerAMG tuned for 3D Poisson: HMIS coarsening with ext+i interpolation (P_max 4) and
# one level of aggressive coarsening keep the operator complexity low in 3D; strong threshold
# 0.5 (hypre's advice for 3D); symmetric l1-scaled hybrid Gauss-Seidel smoothing for CG. At
# 64³ (smoke-obstacles, one process) 11 iterations in 0.25 + 0.49 s against PETSc's default
# BoomerAMG's 5 in 0.60 + 0.27 s (and 9 in 0.49 + 0.73 s without the aggressive level).
HYPRE_OPTIONS = {
    "pc_hypre_type": "boomeramg",
    "pc_hypre_boomeramg_strong_threshold": "0.5",
    "pc_hypre_boomeramg_coarsen_type": "HMIS",
    "pc_hypre_boomeramg_interp_type": "ext+i",
    "pc_hypre_boomeramg_P_max": "4",
    "pc_hypre_boomeramg_agg_nl": "1",
    "pc_hypre_boomeramg_relax_type_down": "l1scaled-SOR/Jacobi",
    "pc_hypre_boomeramg_relax_type_up": "l1scaled-SOR/Jacobi",
    "pc_hypre_boomeramg_relax_type_coarse": "Gaussian-elimination",
}
# PETSc's smoothed aggregation with Chebyshev/Jacobi smoothing and no graph filtering
# (threshold -1: a Laplacian has no weak links to drop; at 64³ it halved the setup, 2.4 -> 1.2 s)
GAMG_OPTIONS = {
    "pc_gamg_type": "agg",
    "pc_gamg_agg_nsmooths": "1",
    "pc_gamg_threshold": "-1",
    "mg_levels_ksp_type": "chebyshev",
    "mg_levels_pc_type": "jacobi",
}
# PETSc's geometric multigrid on the DMDA itself: piecewise-constant (Q0, cell-centred)
# interpolation between DMDA levels, Galerkin coarse operators PᵀAP, Chebyshev/Jacobi
# smoothing, a direct solve on the coarsest level (8 cells a side: `mg_levels`)
MG_OPTIONS = {
    "pc_mg_galerkin": "both",
    "mg_levels_ksp_type": "chebyshev",
    "mg_levels_pc_type": "jacobi",
}
PCS = ("hypre", "gamg", "mg", "deepcd")


def mg_levels(shape) -> int:
    """PCMG levels for a grid: halve every axis until the smallest has 8 cells (or is odd)."""
    n, levels = min(shape), 1
    while n % 2 == 0 and n // 2 >= 8:
        n //= 2
        levels += 1
    return levels


def write_grid_problem(path, flags: np.ndarray, b_grid: np.ndarray, boundary, stencil=None) -> Path:
    """The HDF5 file `run` reads: flags (grid, int8), b (grid, float64), boundary, and for a
    variable-coefficient operator its grid stencil (`Problem.grid_stencil`: datasets diag,
    link_0, link_1, link_2)."""
    import h5py

    path = Path(path)
    with h5py.File(path, "w") as f:
        f.create_dataset("flags", data=np.asarray(flags, dtype=np.int8))
        f.create_dataset("b", data=np.asarray(b_grid, dtype=np.float64))
        f.attrs["boundary"] = np.asarray(boundary, dtype=np.int8)
        if stencil is not None:
            f.create_dataset("diag", data=np.asarray(stencil[0], dtype=np.float64))
            for a, w in enumerate(stencil[1]):
                f.create_dataset(f"link_{a}", data=np.asarray(w, dtype=np.float64))
    return path


def pc_options(pc: str) -> dict:
    """The PETSc options (without the leading dash) of a peer's preconditioner."""
    if pc == "hypre":
        return {"pc_type": "hypre", **HYPRE_OPTIONS}
    if pc == "gamg":
        return {"pc_type": "gamg", **GAMG_OPTIONS}
    if pc == "mg":
        return {"pc_type": "mg", **MG_OPTIONS}
    return {"pc_type": "python", "pc_python_type": "deepcd.petsc.VCycle"}


def _solve(
    PETSc,
    da,
    flags,
    b_block,
    boundary,
    pc: str,
    rtol,
    maxiter,
    solver,
    record,
    stencil=None,
    gather_below=None,
):
    """Assemble, set up and solve; fills `record` (rank-local timings) and returns x.
    stencil: (diag, links) of a variable-coefficient operator on the whole grid (arrays or
    h5py datasets; each rank reads its block), else the flags' Laplacian."""
    import deepcd.petsc as dp
    from deepcd.petsc import grid as G

    t = time.perf_counter()
    if stencil is None:
        A = dp.laplacian(da, flags, boundary)
    else:
        A = dp.stencil_matrix(da, *stencil)
    record["assembly_s"] = time.perf_counter() - t
    b = da.createGlobalVec()
    b.array[:] = b_block.ravel()
    x = b.duplicate()
    x.set(0.0)
    ksp = PETSc.KSP().create(da.comm)
    ksp.setOperators(A)
    ksp.setType("cg")
    ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
    ksp.setTolerances(rtol=rtol, atol=0.0, max_it=maxiter or 10000)
    opts = PETSc.Options()
    ctx = None
    if pc == "deepcd":  # one call (what -pc_type python -pc_python_type deepcd.petsc.VCycle
        # selects, with the flags attached to the DMDA)
        extra = {} if gather_below is None else {"gather_below": gather_below}
        ctx = dp.set_preconditioner(ksp, flags, da=da, boundary=boundary, solver=solver, **extra)
    else:
        options = pc_options(pc)
        if pc == "mg":  # the levels come from the DMDA (coarsened by 2 per axis)
            da.setInterpolationType(PETSc.DMDA.InterpolationType.Q0)
            ksp.setDM(da)
            ksp.setDMActive(False)
            options["pc_mg_levels"] = str(mg_levels(G.grid_shape(da)))
            record["mg_levels"] = int(options["pc_mg_levels"])
        for k, v in options.items():
            opts.setValue(k, v)
        ksp.setFromOptions()
        for k in options:
            opts.delValue(k)
    history: list[tuple[float, float]] = []
    t0 = [0.0]
    ksp.setMonitor(lambda k, it, rnorm: history.append((time.perf_counter() - t0[0], rnorm)))
    comm = da.comm.tompi4py()
    comm.Barrier()
    t = time.perf_counter()
    ksp.setUp()
    comm.Barrier()
    record["setup_s"] = time.perf_counter() - t
    t0[0] = time.perf_counter()
    ksp.solve(b, x)
    comm.Barrier()
    record["solve_s"] = time.perf_counter() - t0[0]
    record["iterations"] = ksp.getIterationNumber()
    record["reason"] = int(ksp.getConvergedReason())
    record["residuals"] = [r for _, r in history]
    record["times"] = [s for s, _ in history]
    record["bnorm"] = b.norm()
    if ctx is not None and ctx.cycle is not None:
        record["deepcd"] = ctx.cycle.h.stats
        record["deepcd"]["halo_calls"] = ctx.cycle.h.grid.halo.calls
        record["deepcd"]["applications"] = ctx.applications
    nat = da.createNaturalVec()
    da.globalToNatural(x, nat)
    scatter, x0 = PETSc.Scatter.toZero(nat)
    scatter.scatter(nat, x0, PETSc.InsertMode.INSERT_VALUES, PETSc.ScatterMode.FORWARD)
    out = x0.array_r.copy() if comm.Get_rank() == 0 else None
    for obj in (scatter, x0, nat, ksp, x, b, A):
        obj.destroy()
    return out


def _block(path, da, key: str) -> np.ndarray:
    import h5py

    from deepcd.petsc import grid as G

    with h5py.File(path, "r") as f:
        return f[key][tuple(slice(lo, hi) for lo, hi in G.owned_box(da))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deepcd.petsc.run", description=__doc__)
    p.add_argument("--problem", required=True)
    p.add_argument("--pc", choices=PCS, required=True)
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--maxiter", type=int, default=None)
    p.add_argument("--solver", default=None, help="deepcd model (default: the shipped 3D one)")
    p.add_argument("--out", required=True)
    p.add_argument("--x-out", default=None)
    p.add_argument("--no-warmup", action="store_true")
    args = p.parse_args(argv)

    import h5py

    import deepcd.petsc as dp
    from deepcd import threads
    from deepcd.petsc import grid as G

    PETSc = dp.require()
    threads.ensure()
    comm = PETSc.COMM_WORLD
    with h5py.File(args.problem, "r") as f:
        shape = tuple(f["flags"].shape)
        boundary = tuple(int(v) for v in f.attrs["boundary"])
    if not args.no_warmup:
        # deepcd: with a distributed graph level (gather_below 64), so its kernels are loaded
        # before the timed solve (the V-cycle loads both copies of each: `warm_kernels`)
        small = np.zeros((16, 16, 16), dtype=np.int8)
        small[:, :, -1] = 2
        da = G.create_dmda(small.shape, comm)
        sl = tuple(slice(lo, hi) for lo, hi in G.owned_box(da))
        warm: dict = {}
        b = np.ones(small.shape)[sl] * (small[sl] == 0)
        _solve(PETSc, da, small, b, 1, args.pc, args.rtol, 20, args.solver, warm, None, 64)
        da.destroy()
    da = G.create_dmda(shape, comm)
    flags = _block(args.problem, da, "flags")
    b_block = _block(args.problem, da, "b")
    record: dict = {}
    with h5py.File(args.problem, "r") as f:
        stencil = None
        if "diag" in f:
            stencil = (f["diag"], [f[f"link_{a}"] for a in range(3)])
        x = _solve(
            PETSc,
            da,
            flags,
            b_block,
            boundary,
            args.pc,
            args.rtol,
            args.maxiter,
            args.solver,
            record,
            stencil,
        )
    mpi = comm.tompi4py()
    peak = mpi.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    own = mpi.gather(int(np.prod(G.box_shape(G.owned_box(da)))))
    if mpi.Get_rank() == 0:
        record.update(
            np=mpi.Get_size(),
            pc=args.pc,
            options=pc_options(args.pc),
            peak_rss_mb_per_rank=peak,
            cells_per_rank=own,
            threads_per_rank=threads.settings().get("threads"),
            versions=dp.versions(),
        )
        Path(args.out).write_text(json.dumps(record, indent=1))
        if args.x_out:
            np.save(args.x_out, x.reshape(shape), allow_pickle=False)
    da.destroy()
    dp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
