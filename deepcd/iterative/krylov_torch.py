"""Preconditioned CG with every vector on a torch device: the GPU baselines.

Vectors, operator and host checks as in `deepcd.iterative.device`: dot products stay on the
device and the host reads residual norms only at scheduled checks, so an iteration issues no
host sync.
Preconditioners: None (plain CG), "jacobi", or any callable mapping a (1, 1, *grid) residual
to a direction of the same shape — e.g. a classical geometric multigrid V-cycle (`mgpcg`).
Convergence is declared on the true residual, recomputed at the check that first sees the
recurrence residual below the tolerance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from deepcd.iterative.device import F64, DeviceGrid, HostChecks, device_result
from deepcd.iterative.result import BREAKDOWN_INDEFINITE, BREAKDOWN_NONFINITE, History, SolveResult
from deepcd.problems.problem import Problem

GridPreconditioner = Callable[[torch.Tensor], torch.Tensor]


def pcg_torch(
    problem: Problem,
    b: np.ndarray,
    x0: np.ndarray | None = None,
    *,
    device: str | torch.device = "cpu",
    preconditioner: str | GridPreconditioner | None = None,
    preconditioner_dtype: torch.dtype = torch.float32,
    check_every: int = 16,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    scale: float = 1.0,
    method: str = "cg",
) -> SolveResult:
    """Solve scale·L x = b (L: the grid Laplacian of `problem`) by PCG on `device`.

    b, x0: float64 (n,) over the FLUID cells; the solution comes back likewise. A callable
    preconditioner must be symmetric positive definite; it runs in `preconditioner_dtype`.
    """
    if isinstance(preconditioner, str) and preconditioner != "jacobi":
        raise ValueError(
            f"preconditioner must be None, 'jacobi' or a callable, got {preconditioner!r}"
        )
    t0 = time.perf_counter()
    grid = DeviceGrid(problem, device, scale)
    A = grid.A
    maxiter = 10 * problem.n if maxiter is None else int(maxiter)

    def M(r: torch.Tensor) -> torch.Tensor:
        if preconditioner is None:
            return r.clone()
        if preconditioner == "jacobi":
            return r * grid.inv_diag
        z = preconditioner(r.to(preconditioner_dtype)).to(F64)
        return z * grid.fluid

    b_grid = grid.to_grid(b)
    x = grid.to_grid(x0) if x0 is not None else torch.zeros_like(b_grid)
    t_solve = time.perf_counter()
    hist = History(t_solve)
    r = b_grid - A(x)
    tol = max(rtol * float(torch.linalg.vector_norm(b_grid)), atol)
    hist.append(float(torch.linalg.vector_norm(r)), time.perf_counter())
    checks = HostChecks(hist, tol, check_every, grid.device)
    settings = {
        "rtol": rtol,
        "atol": atol,
        "maxiter": maxiter,
        "device": str(grid.device),
        "preconditioner": preconditioner
        if isinstance(preconditioner, str) or preconditioner is None
        else type(preconditioner).__name__,
        "check_every": check_every,
    }

    def finish(converged: bool, info: int, iterations: int, message: str = "") -> SolveResult:
        return device_result(
            grid,
            x,
            b_grid,
            hist,
            converged=converged,
            info=info,
            iterations=iterations,
            setup_s=t_solve - t0,
            method=method,
            settings=settings,
            message=message,
        )

    if hist.residuals[0] <= tol:
        return finish(True, 0, 0)
    bad = torch.zeros((), dtype=torch.bool, device=grid.device)
    with torch.inference_mode():
        z = M(r)
        p = z.clone()
        rz = torch.sum(r * z)
        it = 0
        while it < maxiter:
            it += 1
            ap = A(p)
            pap = torch.sum(p * ap)
            bad |= ~(pap > 0)
            alpha = rz / torch.where(pap > 0, pap, 1.0)
            x.add_(alpha * p)
            r.sub_(alpha * ap)
            check_now = checks.record(it, torch.linalg.vector_norm(r))
            z = M(r)
            rz_new = torch.sum(r * z)
            beta = rz_new / torch.where(rz != 0, rz, 1.0)
            p = z + beta * p
            rz = rz_new
            if not check_now and it < maxiter:
                continue
            batch = checks.read(it)
            if not all(math.isfinite(v) for v in batch):
                return finish(False, BREAKDOWN_NONFINITE, it, "NaN/Inf in the iteration")
            if bool(bad):
                return finish(
                    False, BREAKDOWN_INDEFINITE, it, "breakdown: pᵀAp <= 0 (A or M not SPD)"
                )
            if min(batch) <= tol:
                r = b_grid - A(x)  # never declare convergence on a drifted residual
                if float(torch.linalg.vector_norm(r)) <= tol:
                    return finish(True, 0, it)
                z = M(r)  # restart from the true residual
                p = z.clone()
                rz = torch.sum(r * z)
    converged = float(torch.linalg.vector_norm(b_grid - A(x))) <= tol
    return finish(
        converged,
        0 if converged else maxiter,
        it,
        "" if converged else f"not converged in maxiter={maxiter} iterations",
    )
