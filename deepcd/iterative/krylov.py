"""Conjugate gradients (optionally preconditioned) and the stationary preconditioned iteration.

Both run on the numba kernels with preallocated vectors. Convergence means the *true*
residual satisfies ‖b - Ax‖ <= max(rtol·‖b‖, atol): when the recurrence says converged, the
residual is recomputed, and the iteration restarts from it if rounding made them drift apart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from deepcd.iterative.preconditioners import Preconditioner
from deepcd.iterative.result import (
    BREAKDOWN_INDEFINITE,
    BREAKDOWN_NONFINITE,
    BREAKDOWN_PRECONDITIONER,
    History,
    SolveResult,
)
from deepcd.kernels.vector import (
    inner,
    norm,
    residual,
    update_direction,
    update_solution_residual,
)
from deepcd.operators import Operator

Monitor = Callable[[int, float], None]


def start_iteration(op: Operator, b: np.ndarray, x0: np.ndarray | None):
    """x (a fresh copy), r = b - A x, and ‖r‖²."""
    if x0 is None:
        x = np.zeros(op.n)
        r = b.copy()
        return x, r, inner(r, r)
    x = np.array(x0, dtype=np.float64, copy=True)
    r = np.empty(op.n)
    rr = residual(b, op.matvec(x), r)
    return x, r, rr


def finish_result(
    op, b, x, hist, *, converged, info, iterations, method, setup_s, t0, settings, message=""
) -> SolveResult:
    solve_s = time.perf_counter() - t0
    bnorm = norm(b)
    true_res = norm(b - op.matvec(x))
    return SolveResult(
        x=x,
        converged=converged,
        info=info,
        iterations=iterations,
        residuals=hist.residuals,
        times=hist.times,
        setup_s=setup_s,
        solve_s=solve_s,
        final_relres=true_res / bnorm if bnorm > 0 else true_res,
        method=method,
        settings=settings,
        message=message,
    )


def cg(
    op: Operator,
    b: np.ndarray,
    x0: np.ndarray | None = None,
    *,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    M: Preconditioner | None = None,
    callback: Callable[[np.ndarray], None] | None = None,
    monitor: Monitor | None = None,
    method: str = "cg",
) -> SolveResult:
    """(Preconditioned) conjugate gradients for SPD (or consistent PSD) A.

    op: the operator; b: float64 (n,); M: a preconditioner (None: plain CG).
    callback(xk) runs once per iteration, monitor(k, ‖r_k‖) too (progress bars).
    Breakdowns: p·Ap <= 0 (info -1, A not positive definite), r·M⁻¹r <= 0 (info -2),
    NaN/Inf (info -3).
    """
    t0 = time.perf_counter()
    maxiter = 10 * op.n if maxiter is None else int(maxiter)
    setup_s = M.setup_s if M is not None else 0.0
    settings = {"rtol": rtol, "atol": atol, "maxiter": maxiter}
    settings.update(M.settings() if M is not None else {"preconditioner": "none"})
    x, r, rr = start_iteration(op, b, x0)
    tol = max(rtol * norm(b), atol)
    hist = History(t0)
    hist.append(math.sqrt(rr), time.perf_counter())
    finish = dict(method=method, setup_s=setup_s, t0=t0, settings=settings)
    if math.sqrt(rr) <= tol:
        return finish_result(op, b, x, hist, converged=True, info=0, iterations=0, **finish)

    ap = np.empty(op.n)
    z = r if M is None else np.empty(op.n)

    def precondition() -> float:
        return rr if M is None else M.apply_dot(r, z)

    rz = precondition()
    p = z.copy()
    restarts = 0
    for k in range(1, maxiter + 1):
        pap = op.matvec_dot(p, ap)
        if not math.isfinite(pap) or pap <= 0.0:
            code = BREAKDOWN_NONFINITE if not math.isfinite(pap) else BREAKDOWN_INDEFINITE
            msg = f"breakdown at iteration {k}: p·Ap = {pap:.3e}; " + (
                "NaN/Inf in the iteration"
                if code == BREAKDOWN_NONFINITE
                else "A is not positive definite (or not symmetric)"
            )
            return finish_result(
                op, b, x, hist, converged=False, info=code, iterations=k - 1, message=msg, **finish
            )
        alpha = rz / pap
        rr = update_solution_residual(x, r, p, ap, alpha)
        rnorm = math.sqrt(rr)
        hist.append(rnorm, time.perf_counter())
        if callback is not None:
            callback(x)
        if monitor is not None:
            monitor(k, rnorm)
        if not math.isfinite(rr):
            return finish_result(
                op,
                b,
                x,
                hist,
                converged=False,
                info=BREAKDOWN_NONFINITE,
                iterations=k,
                message="NaN/Inf in the residual",
                **finish,
            )
        if rnorm <= tol:
            rr = residual(b, op.matvec(x), r)  # the recurrence may have drifted: check
            if math.sqrt(rr) <= tol:
                settings["restarts"] = restarts
                return finish_result(op, b, x, hist, converged=True, info=0, iterations=k, **finish)
            restarts += 1
            rz = precondition()
            p[:] = z
            continue
        rz_new = precondition()
        if not rz_new > 0.0:
            return finish_result(
                op,
                b,
                x,
                hist,
                converged=False,
                info=BREAKDOWN_PRECONDITIONER,
                iterations=k,
                message=f"breakdown at iteration {k}: r·M⁻¹r = "
                f"{rz_new:.3e}, the preconditioner is not positive definite",
                **finish,
            )
        update_direction(p, z, rz_new / rz)
        rz = rz_new
    settings["restarts"] = restarts
    return finish_result(
        op,
        b,
        x,
        hist,
        converged=False,
        info=maxiter,
        iterations=maxiter,
        message=f"not converged in maxiter={maxiter} iterations",
        **finish,
    )


def stationary(
    op: Operator,
    b: np.ndarray,
    x0: np.ndarray | None = None,
    *,
    M: Preconditioner,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    callback: Callable[[np.ndarray], None] | None = None,
    monitor: Monitor | None = None,
    method: str = "stationary",
) -> SolveResult:
    """x ← x + M⁻¹(b - Ax): a multigrid cycle used standalone (M = one V-cycle).

    maxiter defaults to 500 (a stationary method that has not converged by then will not).
    """
    t0 = time.perf_counter()
    maxiter = 500 if maxiter is None else int(maxiter)
    settings = {"rtol": rtol, "atol": atol, "maxiter": maxiter, **M.settings()}
    finish = dict(method=method, setup_s=M.setup_s, t0=t0, settings=settings)
    x, r, rr = start_iteration(op, b, x0)
    tol = max(rtol * norm(b), atol)
    hist = History(t0)
    hist.append(math.sqrt(rr), time.perf_counter())
    z = np.empty(op.n)
    ax = np.empty(op.n)
    for k in range(1, maxiter + 1):
        if math.sqrt(rr) <= tol:
            return finish_result(op, b, x, hist, converged=True, info=0, iterations=k - 1, **finish)
        M.apply(r, z)
        x += z
        rr = residual(b, op.matvec(x, ax), r)
        hist.append(math.sqrt(rr), time.perf_counter())
        if callback is not None:
            callback(x)
        if monitor is not None:
            monitor(k, math.sqrt(rr))
        if not math.isfinite(rr):
            return finish_result(
                op,
                b,
                x,
                hist,
                converged=False,
                info=BREAKDOWN_NONFINITE,
                iterations=k,
                message="the iteration diverged (NaN/Inf)",
                **finish,
            )
    if math.sqrt(rr) <= tol:
        return finish_result(op, b, x, hist, converged=True, info=0, iterations=maxiter, **finish)
    return finish_result(
        op,
        b,
        x,
        hist,
        converged=False,
        info=maxiter,
        iterations=maxiter,
        message=f"not converged in maxiter={maxiter} cycles",
        **finish,
    )
