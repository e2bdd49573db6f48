"""The safeguarded DCDM iteration with every vector on a torch device (the GPU path).

The same method as `deepcd.iterative.dcdm` (read its docstring for the safeguard and why it
cannot stall), laid out for a GPU: the vectors are float64 fields on the cell grid (zeros off
FLUID cells), A is the matrix-free `GridLaplacian`, the network reads the residual grid
directly (no gather/scatter), and every decision of an iteration — the network's
usability, its win against the classical direction, the Galerkin coefficients — is taken on
the device with `torch.where`. The host synchronizes only at checks, at most `check_every`
iterations apart and scheduled by extrapolating the convergence rate to the tolerance, to
test convergence (on the true residual), count the network's losses and detect a stall.

An SPD network (vcycle) is PCG's M, as on the numpy path. Differences from the numpy path,
all from batching the host checks: a switch of source (the `patience`-th loss, a stall and its
measured probe) takes effect at the first check after it, and convergence is noticed at the
first check after it happened, so a few extra iterations may run (each can only lower the
energy).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from deepcd.iterative.dcdm import REFRESH_EVERY, WIN_MARGIN, SourceSwitch
from deepcd.iterative.device import F64, DeviceGrid, HostChecks, device_result
from deepcd.iterative.result import BREAKDOWN_INDEFINITE, BREAKDOWN_NONFINITE, History, SolveResult
from deepcd.nn.direction import apply_network
from deepcd.problems.problem import Problem

SAFEGUARDS = ("none", "jacobi")


def dcdm_torch(
    problem: Problem,
    b: np.ndarray,
    x0: np.ndarray | None = None,
    *,
    network: torch.nn.Module,
    device: str | torch.device = "cpu",
    network_dtype: torch.dtype = torch.float32,
    safeguard: str = "none",
    k: int = 2,
    patience: int = 3,
    stall_window: int = 30,
    check_every: int = 8,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    scale: float = 1.0,
    method: str = "dcdm",
) -> SolveResult:
    """Solve scale·L x = b for the grid Laplacian L of `problem` on `device`.

    b, x0: float64 (n,) over the FLUID cells (numpy); x is returned likewise. network: maps
    (1, 1, *grid) residuals (with the flags and boundary) to directions. safeguard: the
    classical direction, "none" (the residual: alone, CG) or "jacobi". scale: a positive
    factor of A over the grid Laplacian (e.g. 1/h²). See the module docstring.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 (the safeguard's guarantee needs it), got {k}")
    if safeguard not in SAFEGUARDS:
        raise ValueError(
            f"safeguard {safeguard!r} has no device path; choose from {', '.join(SAFEGUARDS)}"
        )
    t0 = time.perf_counter()
    grid = DeviceGrid(problem, device, scale)
    A, device = grid.A, grid.device
    maxiter = 10 * problem.n if maxiter is None else int(maxiter)

    def inner(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.sum(a * c)

    spd = bool(getattr(network, "spd", False))
    flags = torch.tensor(problem.flags, device=device)
    boundary = tuple(problem.boundary)
    # a variable-coefficient A: the network builds its levels from A's own stencil
    operator = grid.lap if grid.lap.weighted else None
    b_grid = grid.to_grid(b)
    x = grid.to_grid(x0) if x0 is not None else torch.zeros_like(b_grid)
    t_solve = time.perf_counter()
    r = b_grid - A(x)
    tol = max(rtol * float(torch.linalg.vector_norm(b_grid)), atol)
    hist = History(t_solve)
    rnorm0 = float(torch.linalg.vector_norm(r))
    hist.append(rnorm0, time.perf_counter())
    checks = HostChecks(hist, tol, check_every, device)

    P = torch.zeros((k, *grid.shape[1:]), dtype=F64, device=device)
    AP = torch.zeros_like(P)
    PAP = torch.ones(k, dtype=F64, device=device)
    count = 0
    axes = tuple(range(1, P.ndim))
    losses = torch.zeros((), dtype=torch.int64, device=device)
    wins = torch.zeros((), dtype=torch.int64, device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    if spd:
        switch = SourceSwitch(
            "network-pcg", "safeguard" if safeguard != "none" else None, stall_window
        )
    else:
        switch = SourceSwitch("network", "safeguard", stall_window)
    stats = {
        "network_steps": 0,
        "safeguard_steps": 0,
        "network_losses": 0,
        "network_stalled_at": None,
        "direction_s": 0.0,
    }
    tiny = torch.finfo(F64).tiny
    energies: list[torch.Tensor] = []

    def orthogonalize(w: torch.Tensor, aw: torch.Tensor, m: int) -> None:
        if m == 0:
            return
        coef = (AP[:m] * w).sum(dim=axes) / PAP[:m]  # wᵀA p_j / p_jᵀA p_j
        c = coef.view(-1, *([1] * (P.ndim - 1)))
        w -= (c * P[:m]).sum(dim=0, keepdim=True)
        aw -= (c * AP[:m]).sum(dim=0, keepdim=True)

    def settings() -> dict:
        return {
            "rtol": rtol,
            "atol": atol,
            "maxiter": maxiter,
            "k": k,
            "safeguard": safeguard,
            "device": str(device),
            "network_dtype": str(network_dtype).replace("torch.", ""),
            "check_every": check_every,
            "network_as": "preconditioner" if spd else "direction",
            **stats,
            "events": list(switch.events),
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
            settings=settings(),
            message="; ".join(filter(None, [message, *switch.events])),
        )

    if rnorm0 <= tol:
        return finish(True, 0, 0)
    rnorm_dev = torch.linalg.vector_norm(r)
    it = 0
    with torch.inference_mode():
        while it < maxiter:
            it += 1
            m = min(count, k)
            source = switch.source
            # the classical direction: PCG's, with the SPD network or the safeguard's M
            if source == "network-pcg":
                t_net = time.perf_counter()
                v = apply_network(
                    network, (r / rnorm_dev).to(network_dtype), flags, boundary, operator
                ).to(F64)
                stats["direction_s"] += time.perf_counter() - t_net
                v = v * grid.fluid
                wins += 1
            else:
                v = r * grid.inv_diag if safeguard == "jacobi" else r.clone()
            av = A(v)
            orthogonalize(v, av, m)
            vav, vr = inner(v, av), inner(v, r)
            if source == "network":
                t_net = time.perf_counter()
                q = apply_network(
                    network, (r / rnorm_dev).to(network_dtype), flags, boundary, operator
                ).to(F64)
                stats["direction_s"] += time.perf_counter() - t_net
                q = q * grid.fluid
                finite = torch.isfinite(q).all()
                u = torch.where(finite, q, torch.zeros_like(q))
                au = A(u)
                orthogonalize(u, au, m)
                uau, ur, uav = inner(u, au), inner(u, r), inner(u, av)
                usable = torch.isfinite(uau) & (uau > 1e-28 * inner(u, u)) & (uau > tiny)
                gain_u = ur * ur / torch.where(usable, uau, torch.ones_like(uau))
                gain_v = vr * vr / vav
                win = usable & (gain_u >= WIN_MARGIN * gain_v)
                losses += (~win).to(torch.int64)  # an unusable direction has lost too
                wins += win.to(torch.int64)
                # Galerkin on span{u, v} in A-normalized coordinates (as the numpy path)
                su = torch.where(win, uau, torch.ones_like(uau)).rsqrt()
                sv = vav.rsqrt()
                g12 = uav * su * sv
                det = 1.0 - g12 * g12
                gu, gv = ur * su, vr * sv
                ok = win & (det > 1e-10)
                det_safe = torch.where(ok, det, torch.ones_like(det))
                a = torch.where(ok, (gu - g12 * gv) / det_safe * su, torch.zeros_like(gu))
                c = torch.where(ok, (gv - g12 * gu) / det_safe * sv, vr / vav)
                a = torch.where(win & ~ok, ur / torch.where(win, uau, 1.0), a)
                c = torch.where(win & ~ok, torch.zeros_like(c), c)
                p = a * u + c * v
                ap = a * au + c * av
            else:
                p = (vr / vav) * v
                ap = (vr / vav) * av
            pap = inner(p, ap)
            bad |= ~(pap > 0) | ~torch.isfinite(vav)
            x += p
            r -= ap
            if it % REFRESH_EVERY == 0:
                r = b_grid - A(x)  # the recurrence drifts slowly
            slot = count % k
            P[slot], AP[slot], PAP[slot] = p[0], ap[0], torch.where(pap > 0, pap, 1.0)
            count += 1
            rnorm_dev = torch.linalg.vector_norm(r)
            if switch.state != "final":  # f(x) = −½xᵀ(b + r), for a measured switch
                energies.append(-0.5 * (inner(x, b_grid) + inner(x, r)))
            if not checks.record(it, rnorm_dev) and it < maxiter:
                continue
            # -- the batched host check ---------------------------------------------------
            batch = checks.read(it)
            if bool(bad):
                nonfinite = not all(math.isfinite(v) for v in batch)
                return finish(
                    False,
                    BREAKDOWN_NONFINITE if nonfinite else BREAKDOWN_INDEFINITE,
                    it,
                    "NaN/Inf in the iteration"
                    if nonfinite
                    else "breakdown: a search direction had pᵀAp <= 0 (A is not positive definite)",
                )
            if switch.source == "network":
                stats["network_losses"] = int(losses)
                if stats["network_losses"] >= patience:
                    switch.fix(
                        "safeguard",
                        it,
                        f"the network's direction lost {patience} one-step comparisons to "
                        "the safeguard's",
                    )
                    count = 0  # restart: from here on the steps are PCG with the safeguard
            f_batch = torch.stack(energies).tolist() if energies else [0.0] * len(batch)
            energies.clear()
            for j, value in enumerate(batch):
                if switch.record(it - len(batch) + 1 + j, value, f_batch[j]) is not None:
                    count = 0  # a new source: PCG restarts with a history of its own
                    if switch.state == "probe":
                        stats["network_stalled_at"] = it
                    break  # the rest of the batch ran under the previous source
            if min(batch) <= tol:
                r = b_grid - A(x)  # never declare convergence on a drifted residual
                rnorm_dev = torch.linalg.vector_norm(r)
                if float(rnorm_dev) <= tol:
                    stats["network_steps"] = int(wins)
                    stats["safeguard_steps"] = it - stats["network_steps"]
                    return finish(True, 0, it)
                count = 0
    stats["network_steps"] = int(wins)
    stats["safeguard_steps"] = it - stats["network_steps"]
    converged = float(torch.linalg.vector_norm(b_grid - A(x))) <= tol
    return finish(
        converged,
        0 if converged else maxiter,
        it,
        "" if converged else f"not converged in maxiter={maxiter} iterations",
    )
