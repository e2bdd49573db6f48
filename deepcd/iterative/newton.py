"""Approximate-Hessian Newton with gradient regularization (Semenov, Jaggi, Doikov 2025).

Minimizes f(x) = ½xᵀAx - bᵀx, gradient g = Ax - b = -r. With an approximate Hessian H
(a preconditioner M ≈ A, applied as H⁻¹) and the norm matrix B = H, a step is

    x⁺ = x - (H + λH)⁻¹ g = x + d / (1 + λ),  d = H⁻¹ r,  λ = ‖g‖_* / γ,  ‖g‖_*² = r·d,

accepted when f(x) - f(x⁺) >= ‖g⁺‖_*² / (8λ) (then γ doubles for the next step), otherwise
γ halves and the step is retried. On a quadratic every trial is a function of four scalars
(r·d, d·Ad, (Ad)·H⁻¹(Ad)), so a step costs one matvec and one H⁻¹ application however many
trials it takes. Without Krylov acceleration this is a damped preconditioned Richardson
iteration: expect many more iterations than PCG with the same H.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from deepcd.iterative.krylov import Monitor, finish_result, start_iteration
from deepcd.iterative.preconditioners import Preconditioner
from deepcd.iterative.result import (
    BREAKDOWN_NONFINITE,
    BREAKDOWN_STAGNATION,
    History,
    SolveResult,
)
from deepcd.kernels.vector import dot, norm, residual, update_solution_residual
from deepcd.operators import Operator

REFRESH_EVERY = 50  # recompute r = b - Ax and d = H⁻¹r to stop the recurrences drifting


def newton(
    op: Operator,
    b: np.ndarray,
    x0: np.ndarray | None = None,
    *,
    H: Preconditioner,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    gamma0: float | None = None,
    max_trials: int = 100,
    callback: Callable[[np.ndarray], None] | None = None,
    monitor: Monitor | None = None,
    method: str = "newton",
) -> SolveResult:
    """Gradient-regularized approximate-Hessian Newton; one iteration = one accepted step.

    H: the approximate Hessian as a preconditioner (Jacobi, IC(0), an AMG cycle).
    gamma0: the initial γ (default: λ = 1 on the first step). maxiter defaults to 1000.
    """
    t0 = time.perf_counter()
    maxiter = 1000 if maxiter is None else int(maxiter)
    settings = {"rtol": rtol, "atol": atol, "maxiter": maxiter, **H.settings(), "norm": "B = H"}
    finish = dict(method=method, setup_s=H.setup_s, t0=t0, settings=settings)
    x, r, rr = start_iteration(op, b, x0)
    tol = max(rtol * norm(b), atol)
    hist = History(t0)
    hist.append(math.sqrt(rr), time.perf_counter())
    d = np.empty(op.n)
    w = np.empty(op.n)
    t = np.empty(op.n)
    rd = H.apply_dot(r, d)
    gamma = math.sqrt(max(rd, 0.0)) if gamma0 is None else float(gamma0)
    trials = rejected = 0

    for k in range(1, maxiter + 1):
        if math.sqrt(rr) <= tol:
            rr = residual(b, op.matvec(x), r)
            if math.sqrt(rr) <= tol:
                settings.update(trials=trials, rejected=rejected, final_gamma=gamma)
                return finish_result(
                    op, b, x, hist, converged=True, info=0, iterations=k - 1, **finish
                )
            rd = H.apply_dot(r, d)
        if not rd > 0.0:
            return finish_result(
                op,
                b,
                x,
                hist,
                converged=False,
                info=BREAKDOWN_STAGNATION,
                iterations=k - 1,
                message=f"‖g‖_*² = r·H⁻¹r = {rd:.3e} <= 0: H is not positive definite",
                **finish,
            )
        dw = op.matvec_dot(d, w)  # w = A d
        H.apply(w, t)  # t = H⁻¹ A d
        wt = dot(w, t)
        gnorm = math.sqrt(rd)
        for _ in range(max_trials):
            trials += 1
            lam = gnorm / gamma
            c = 1.0 / (1.0 + lam)
            decrease = c * rd - 0.5 * c * c * dw
            next_gnorm2 = max(rd - 2.0 * c * dw + c * c * wt, 0.0)
            if decrease >= next_gnorm2 / (8.0 * lam):
                gamma *= 2.0
                break
            rejected += 1
            gamma *= 0.5
        else:
            return finish_result(
                op,
                b,
                x,
                hist,
                converged=False,
                info=BREAKDOWN_STAGNATION,
                iterations=k - 1,
                message=f"no step accepted in {max_trials} trials of the γ search",
                **finish,
            )
        rr = update_solution_residual(x, r, d, w, c)  # x += c d, r -= c A d
        if k % REFRESH_EVERY == 0:
            rr = residual(b, op.matvec(x), r)
            rd = H.apply_dot(r, d)
        else:
            d -= c * t
            rd = dot(r, d)
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
                message="NaN/Inf in the iteration",
                **finish,
            )
    settings.update(trials=trials, rejected=rejected, final_gamma=gamma)
    converged = math.sqrt(rr) <= tol
    return finish_result(
        op,
        b,
        x,
        hist,
        converged=converged,
        info=0 if converged else maxiter,
        iterations=maxiter,
        message="" if converged else f"not converged in maxiter={maxiter} steps",
        **finish,
    )
