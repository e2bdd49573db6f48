"""Preconditioned CG with every vector on a torch device: the GPU baselines.

Vectors are float64 fields on the cell grid (zeros off FLUID), A is the matrix-free
`GridLaplacian`, dot products stay on the device, and the host reads the residual norms only
at checks — at most `check_every` iterations apart, scheduled by extrapolating the convergence
rate to the tolerance (`next_check`) — in one batched transfer, so an iteration issues no
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

from deepcd.iterative.result import (
    BREAKDOWN_INDEFINITE,
    BREAKDOWN_NONFINITE,
    History,
    SolveResult,
    next_check,
)
from deepcd.nn.stencil import GridLaplacian
from deepcd.problems.flags import FLUID
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
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")
    if isinstance(preconditioner, str) and preconditioner != "jacobi":
        raise ValueError(
            f"preconditioner must be None, 'jacobi' or a callable, got {preconditioner!r}"
        )
    t0 = time.perf_counter()
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    f64 = torch.float64
    n = problem.n
    maxiter = 10 * n if maxiter is None else int(maxiter)
    lap = GridLaplacian(problem.flags, problem.boundary, device=device, dtype=f64)
    index = torch.as_tensor(np.flatnonzero(problem.flags.ravel() == FLUID), device=device)
    shape = (1, 1, *problem.shape)
    inv_diag = torch.where(lap.diag > 0, 1.0 / (scale * lap.diag.clamp_min(1)), 0.0)

    def to_grid(v: np.ndarray) -> torch.Tensor:
        g = torch.zeros(shape, dtype=f64, device=device)
        g.view(-1)[index] = torch.as_tensor(v, dtype=f64, device=device)
        return g

    def A(v: torch.Tensor) -> torch.Tensor:
        return lap(v) * scale

    def M(r: torch.Tensor) -> torch.Tensor:
        if preconditioner is None:
            return r.clone()
        if preconditioner == "jacobi":
            return r * inv_diag
        z = preconditioner(r.to(preconditioner_dtype)).to(f64)
        return z * lap.fluid

    b_grid = to_grid(b)
    x = to_grid(x0) if x0 is not None else torch.zeros_like(b_grid)
    t_solve = time.perf_counter()
    setup_s = t_solve - t0
    hist = History(t_solve)
    r = b_grid - A(x)
    bnorm = float(torch.linalg.vector_norm(b_grid))
    tol = max(rtol * bnorm, atol)
    hist.append(float(torch.linalg.vector_norm(r)), time.perf_counter())
    settings = {
        "rtol": rtol,
        "atol": atol,
        "maxiter": maxiter,
        "device": str(device),
        "preconditioner": preconditioner
        if isinstance(preconditioner, str) or preconditioner is None
        else type(preconditioner).__name__,
        "check_every": check_every,
    }

    def finish(converged: bool, info: int, iterations: int, message: str = "") -> SolveResult:
        true = float(torch.linalg.vector_norm(b_grid - A(x)))
        if device.type == "cuda":
            settings["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        return SolveResult(
            x=x.reshape(-1)[index].cpu().numpy(),
            converged=converged,
            info=info,
            iterations=iterations,
            residuals=hist.residuals,
            times=hist.times,
            setup_s=setup_s,
            solve_s=time.perf_counter() - t_solve,
            final_relres=true / bnorm if bnorm > 0 else true,
            method=method,
            settings=settings,
            message=message,
        )

    if hist.residuals[0] <= tol:
        return finish(True, 0, 0)
    norms = torch.zeros(check_every, dtype=f64, device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    with torch.inference_mode():
        z = M(r)
        p = z.clone()
        rz = torch.sum(r * z)
        it, last_check, check_at = 0, 0, 1
        while it < maxiter:
            it += 1
            ap = A(p)
            pap = torch.sum(p * ap)
            bad |= ~(pap > 0)
            alpha = rz / torch.where(pap > 0, pap, 1.0)
            x.add_(alpha * p)
            r.sub_(alpha * ap)
            norms[it - last_check - 1] = torch.linalg.vector_norm(r)
            z = M(r)
            rz_new = torch.sum(r * z)
            beta = rz_new / torch.where(rz != 0, rz, 1.0)
            p = z + beta * p
            rz = rz_new
            if it < check_at and it < maxiter:
                continue
            batch = norms[: it - last_check].tolist()
            initial = float(hist.residuals[0])
            last_check, check_at = it, next_check(it, initial, min(batch), tol, check_every)
            now = time.perf_counter()
            for value in batch:
                hist.append(value, now)
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
