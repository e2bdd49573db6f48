"""The benchmark's solver catalogue: a name -> how to run it on a Problem."""

from __future__ import annotations

import math
import time

import scipy.sparse.linalg as spla

from deepcd.api import solve_result
from deepcd.iterative.krylov import Monitor
from deepcd.iterative.result import History, SolveResult
from deepcd.kernels.vector import norm
from deepcd.problems.problem import Problem

# name -> (solve() method, options); every entry is one line of the benchmark table.
SOLVERS: dict[str, tuple[str, dict]] = {
    # the shipped trained solver; the safeguard direction alone is "cg" (none) / "mic0"
    "dcdm": ("dcdm", {"safeguard": "none"}),
    "dcdm-mic0": ("dcdm", {"safeguard": "mic0"}),
    # the same network with classical weights: the shipped architecture at its initialization
    # (what training has to beat)
    "dcdm-untrained": ("dcdm", {"safeguard": "none", "model": lambda ndim: _untrained(ndim)}),
    "cg": ("cg", {}),
    # torch paths (GPU where one is, else CPU): CG, Jacobi-PCG, geometric-multigrid PCG
    "cg-torch": ("cg", {"device": "auto"}),
    "jacobi-torch": ("jacobi", {"device": "auto"}),
    "mgpcg": ("mgpcg", {}),
    "jacobi": ("jacobi", {}),
    "ic0": ("ic0", {}),
    "mic0": ("mic0", {}),
    "amg-sa": ("amg-sa", {}),
    "amg-rs": ("amg-rs", {}),
    "amg-sa-cycle": ("amg-sa", {"accel": None}),
    "amg-rs-cycle": ("amg-rs", {"accel": None}),
    "newton-jacobi": ("newton", {"hessian": "jacobi"}),
    "newton-ic0": ("newton", {"hessian": "ic0"}),
    "newton-amg": ("newton", {"hessian": "amg-sa"}),
    # PETSc peers (`deepcd.bench.peers`): CG on PETSc's assembled flag Laplacian under mpiexec
    # with `--np` processes — hypre BoomerAMG tuned for 3D Poisson, PETSc's smoothed
    # aggregation, PETSc's geometric multigrid on the DMDA (PCMG, Galerkin), and deepcd's
    # V-cycle as a PETSc preconditioner (`deepcd.petsc`)
    "petsc-hypre": ("petsc", {"pc": "hypre"}),
    "petsc-gamg": ("petsc", {"pc": "gamg"}),
    "petsc-mg": ("petsc", {"pc": "mg"}),
    "petsc-deepcd": ("petsc", {"pc": "deepcd"}),
}
REFERENCE_SOLVERS = ("scipy-cg",)  # measured for comparison, not deepcd methods
DEFAULT_SOLVERS = ("dcdm", "cg", "ic0", "mic0", "amg-sa", "amg-rs", "newton-amg")


def _untrained(ndim: int):
    """The shipped solver's architecture and configuration at its initialization."""
    from deepcd.nn.networks import build_network
    from deepcd.nn.weights import default_solver, read_card, resolve_solver

    card = read_card(resolve_solver(default_solver(ndim)))
    return build_network(card["arch"], **card["config"])


def solver_names() -> list[str]:
    return [*SOLVERS, *REFERENCE_SOLVERS]


# methods that iterate on the matrix-free stencil or the grid (a MIC(0) safeguard assembles
# its own CSR inside its setup)
_STENCIL_METHODS = ("cg", "jacobi", "dcdm", "mgpcg")


def needs_csr(name: str) -> bool:
    """Whether the solver works on the assembled matrix (else the matrix-free stencil; the
    PETSc peers assemble their own, timed in their settings)."""
    return SOLVERS.get(name, ("",))[0] not in (*_STENCIL_METHODS, "petsc")


def runs_vcycle(name: str) -> bool:
    """Whether the solver applies a V-cycle network (DCDM, or MGPCG's classical one)."""
    return SOLVERS.get(name, ("",))[0] in ("dcdm", "mgpcg")


def is_peer(name: str) -> bool:
    """Whether `name` runs in PETSc under mpiexec (and takes `nprocs`)."""
    return SOLVERS.get(name, ("",))[0] == "petsc"


def run_solver(
    name: str,
    problem: Problem,
    *,
    rtol: float,
    maxiter: int | None,
    monitor: Monitor | None = None,
    nprocs: int = 1,
) -> SolveResult:
    """Run catalogue solver `name` on `problem` from x0 = 0 (`nprocs`: MPI processes of a
    PETSc peer; the other solvers run in this process)."""
    if name == "scipy-cg":
        return _scipy_cg(problem, rtol=rtol, maxiter=maxiter, monitor=monitor)
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose from {', '.join(solver_names())}")
    method, options = SOLVERS[name]
    if method == "petsc":
        from deepcd.bench.peers import run_peer

        return run_peer(name, problem, pc=options["pc"], rtol=rtol, maxiter=maxiter, nprocs=nprocs)
    options = {k: (v(problem.ndim) if callable(v) else v) for k, v in options.items()}
    result = solve_result(
        problem, rtol=rtol, maxiter=maxiter, method=method, monitor=monitor, **options
    )
    result.method = name
    return result


def _scipy_cg(problem: Problem, *, rtol: float, maxiter: int | None, monitor) -> SolveResult:
    """scipy.sparse.linalg.cg on the CSR matrix. The residual history is computed inside the
    callback, and the callback's own time is subtracted from the timestamps and the total."""
    A, b = problem.A, problem.b
    bnorm = norm(b)
    t0 = time.perf_counter()
    hist = History(t0)
    hist.append(bnorm, t0)
    excluded = 0.0

    def callback(xk):
        nonlocal excluded
        t_in = time.perf_counter()
        rnorm = norm(b - A @ xk)
        hist.append(rnorm, t_in - excluded)
        if monitor is not None:
            monitor(hist.size - 1, rnorm)
        excluded += time.perf_counter() - t_in

    x, info = spla.cg(A, b, rtol=rtol, maxiter=maxiter, callback=callback)
    solve_s = time.perf_counter() - t0 - excluded
    final = norm(b - A @ x) / bnorm
    return SolveResult(
        x=x,
        converged=info == 0,
        info=int(info),
        iterations=hist.size - 1,
        residuals=hist.residuals,
        times=hist.times,
        setup_s=0.0,
        solve_s=solve_s,
        final_relres=final,
        method="scipy-cg",
        settings={"rtol": rtol, "maxiter": maxiter},
        message="" if math.isfinite(final) else "non-finite result",
    )
