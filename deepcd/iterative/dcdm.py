"""The Deep Conjugate Direction Method with a safeguard that makes stagnation impossible.

Each iteration (float64 vectors; the direction source may be a network in any precision):

1. q = f(r / ‖r‖): the learned direction; z = M⁻¹ r: the classical one (Jacobi, MIC(0), an AMG
   cycle, or r itself when M is None).
2. Both are A-orthogonalized against the last k search directions (stored with A·p, so this
   costs no matvec): u = q - Σ (qᵀAp_j / p_jᵀAp_j) p_j, v likewise from z.
3. If the network direction alone would reduce the energy at least WIN_MARGIN times as much
   as the classical one, the step minimizes the energy over span{u, v} (a 2×2 Galerkin
   system), p = a·u + c·v; otherwise — or when q is unusable (NaN/Inf, zero, no curvature left
   after the orthogonalization) — the step takes v alone. Then x += p, r -= A p. After
   `patience` losses the network is switched off and the iteration is PCG with M.
4. Slow progress: a network can win every local comparison and still converge more slowly
   than PCG would (seen with a V-cycle network that had turned indefinite in training). If,
   while the network is on, the residual norm has not halved within `stall_window`
   iterations, the network is switched off and the directions are cleared, so the iteration
   restarts as PCG with M from the current x.

Why this cannot stall: by induction r is orthogonal to every stored direction (each new p is
A-orthogonal to them and the Galerkin step makes r ⊥ p), so vᵀr = zᵀr and vᵀAv <= zᵀAz, and the
energy decrease of a step is at least (zᵀr)²/(zᵀAz) — that of preconditioned steepest descent
with M, which converges linearly for any SPD M. Consecutive classical steps are those of
truncated flexible CG with a fixed preconditioner, i.e. PCG with M (for k >= 1): a network that
never wins gives exactly PCG. So convergence never depends on the network; the network only
decides how fast.

A step is a *safeguard step* when the network direction was unusable, switched off, or would
not have reduced the energy at least WIN_MARGIN times as much as the classical direction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from deepcd.iterative.krylov import Monitor, finish_result, start_iteration
from deepcd.iterative.preconditioners import Preconditioner
from deepcd.iterative.result import BREAKDOWN_INDEFINITE, BREAKDOWN_NONFINITE, History, SolveResult
from deepcd.kernels.vector import dot, residual
from deepcd.operators import Operator

Direction = Callable[[np.ndarray], np.ndarray]
# The network's step must reduce the energy this much more than the classical step to be used:
# a direction that merely ties (e.g. -r against Jacobi) would otherwise keep breaking PCG.
WIN_MARGIN = 1.1
REFRESH_EVERY = 50  # recompute the true residual this often (the recurrence drifts slowly)


class _DirectionStore:
    """The last k search directions p_j with A·p_j and p_jᵀA p_j (a ring buffer)."""

    def __init__(self, n: int, k: int):
        self.p = np.empty((k, n))
        self.ap = np.empty((k, n))
        self.pap = np.zeros(k)
        self.k = k
        self.count = 0

    def orthogonalize(self, w: np.ndarray, aw: np.ndarray) -> None:
        """w -= Σ (wᵀAp_j / p_jᵀAp_j) p_j, and A·w alongside (in place)."""
        for j in range(min(self.count, self.k)):
            coef = dot(aw, self.p[j]) / self.pap[j]
            w -= coef * self.p[j]
            aw -= coef * self.ap[j]

    def push(self, p: np.ndarray, ap: np.ndarray, pap: float) -> None:
        if self.k == 0:
            return
        slot = self.count % self.k
        self.p[slot], self.ap[slot], self.pap[slot] = p, ap, pap
        self.count += 1

    def clear(self) -> None:
        self.count = 0


def _usable(u: np.ndarray, au: np.ndarray, scale: float) -> float:
    """uᵀAu when u is a finite direction with curvature relative to `scale`, else 0."""
    uau = dot(u, au)
    if not math.isfinite(uau) or uau <= 1e-28 * scale:
        return 0.0
    return uau


def dcdm(
    op: Operator,
    b: np.ndarray,
    x0: np.ndarray | None = None,
    *,
    direction: Direction,
    M: Preconditioner | None = None,
    k: int = 2,
    patience: int = 3,
    stall_window: int = 30,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    callback: Callable[[np.ndarray], None] | None = None,
    monitor: Monitor | None = None,
    method: str = "dcdm",
) -> SolveResult:
    """Safeguarded DCDM for SPD (or consistent PSD) A; see the module docstring.

    direction: maps the normalized residual (float64 (n,)) to a search direction (n,).
    M: the safeguard's classical preconditioner (None: the residual itself).
    k: how many previous directions each new one is A-orthogonalized against (paper: 2).
    patience: after the network direction has lost to the classical one this many times,
    the network is no longer evaluated and the iteration continues as PCG with M.
    stall_window: the network is also switched off when the residual norm has not halved over
    this many iterations (0: never).
    maxiter defaults to 10·n. settings reports network_steps, safeguard_steps,
    rejected_directions and the time spent in the direction source.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 (the safeguard's guarantee needs it), got {k}")
    t0 = time.perf_counter()
    n = op.n
    maxiter = 10 * n if maxiter is None else int(maxiter)
    settings = {"rtol": rtol, "atol": atol, "maxiter": maxiter, "k": k}
    settings.update(M.settings() if M is not None else {"preconditioner": "none"})
    settings["safeguard"] = settings.pop("preconditioner")
    finish = dict(
        method=method, setup_s=M.setup_s if M is not None else 0.0, t0=t0, settings=settings
    )
    x, r, rr = start_iteration(op, b, x0)
    tol = max(rtol * float(np.linalg.norm(b)), atol)
    hist = History(t0)
    hist.append(math.sqrt(rr), time.perf_counter())

    store = _DirectionStore(n, k)
    u, au, av, z = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    stats = {
        "network_steps": 0,
        "safeguard_steps": 0,
        "rejected_directions": 0,
        "network_losses": 0,
        "network_stalled_at": None,
        "direction_s": 0.0,
    }
    recent = [math.sqrt(rr)]  # residual norms while the network is on
    was_on = True
    events: list[str] = []  # every fallback, in words (settings["events"] and the message)

    def done(**kw) -> SolveResult:
        settings.update(stats)
        settings["events"] = events
        kw["message"] = "; ".join(m for m in (kw.get("message", ""), *events) if m)
        return finish_result(op, b, x, hist, **kw, **finish)

    for it in range(1, maxiter + 1):
        rnorm = math.sqrt(rr)
        if rnorm <= tol:
            rr = residual(b, op.matvec(x), r)  # never declare convergence on a drifted r
            if math.sqrt(rr) <= tol:
                return done(converged=True, info=0, iterations=it - 1)
            store.clear()
            rnorm = math.sqrt(rr)

        # the learned direction, until it has lost to the classical one `patience` times or
        # the residual has stalled under it
        network_on = stats["network_losses"] < patience and stats["network_stalled_at"] is None
        if network_on and stall_window and len(recent) > stall_window:
            if min(recent[-stall_window:]) > 0.5 * recent[-stall_window - 1]:
                stats["network_stalled_at"] = it
                network_on = False
        if was_on and not network_on:
            events.append(
                f"iteration {it}: network switched off: "
                + (
                    f"the residual did not halve in {stall_window} iterations"
                    if stats["network_stalled_at"] == it
                    else f"its direction lost to the classical one {patience} times"
                )
                + "; restarted as PCG"
            )
            # restart: the stored directions came from mixed steps, and PCG's short
            # recurrence needs a history of its own (test_switched_off_network_restarts_as_cg)
            store.clear()
        was_on = network_on
        uau = 0.0
        if network_on:
            t_net = time.perf_counter()
            q = np.asarray(direction(r / rnorm), dtype=np.float64).reshape(-1)
            stats["direction_s"] += time.perf_counter() - t_net
            if q.shape != (n,):
                raise ValueError(f"the direction source returned shape {q.shape}, expected ({n},)")
            if np.all(np.isfinite(q)) and np.any(q):
                u[:] = q
                op.matvec(u, au)
                store.orthogonalize(u, au)
                uau = _usable(u, au, dot(u, u))
        if uau == 0.0:  # unusable or switched off: no NaN/Inf may leak into the step below
            u.fill(0.0)
            au.fill(0.0)

        # the classical direction
        if M is None:
            z[:] = r
        else:
            M.apply(r, z)
        v = z
        op.matvec(v, av)
        store.orthogonalize(v, av)
        vav = dot(v, av)
        if not math.isfinite(vav):
            return done(
                converged=False,
                info=BREAKDOWN_NONFINITE,
                iterations=it - 1,
                message="NaN/Inf in the classical direction",
            )
        if vav <= 0.0:
            return done(
                converged=False,
                info=BREAKDOWN_INDEFINITE,
                iterations=it - 1,
                message=f"breakdown at iteration {it}: vᵀAv = {vav:.3e}, A is not "
                "positive definite (or M is not)",
            )

        ur, vr = dot(u, r), dot(v, r)
        gain_v = vr * vr / vav
        if uau == 0.0:
            if network_on and not stats["rejected_directions"]:
                events.append(
                    f"iteration {it}: the network's direction was unusable (NaN/Inf, zero or "
                    "no curvature left); took the classical step"
                )
            stats["rejected_directions"] += network_on
            stats["safeguard_steps"] += 1
            a, c = 0.0, vr / vav
        else:
            gain_u = ur * ur / uau
            if gain_u < WIN_MARGIN * gain_v:
                stats["network_losses"] += 1
                # The network loses to the classical direction: take the classical step alone.
                # Mixing in a poor direction would break the conjugacy that makes repeated
                # classical steps PCG (measured: a half-trained net took CG from 220 to >600).
                stats["safeguard_steps"] += 1
                a, c = 0.0, vr / vav
            else:
                stats["network_steps"] += 1
                # Galerkin on span{u, v}, in A-normalized coordinates for conditioning
                su, sv = 1.0 / math.sqrt(uau), 1.0 / math.sqrt(vav)
                g12 = dot(u, av) * su * sv
                det = 1.0 - g12 * g12
                if det > 1e-10:
                    gu, gv = ur * su, vr * sv
                    a = (gu - g12 * gv) / det * su
                    c = (gv - g12 * gu) / det * sv
                else:
                    a, c = ur / uau, 0.0
        # p = a u + c v (reuse u's buffer), A p likewise
        u *= a
        u += c * v
        au *= a
        au += c * av
        pap = dot(u, au)
        if not pap > 0.0:
            return done(
                converged=False,
                info=BREAKDOWN_INDEFINITE,
                iterations=it - 1,
                message=f"breakdown at iteration {it}: pᵀAp = {pap:.3e}",
            )
        x += u
        r -= au
        store.push(u, au, pap)
        if it % REFRESH_EVERY == 0:
            rr = residual(b, op.matvec(x), r)
        else:
            rr = dot(r, r)
        hist.append(math.sqrt(rr), time.perf_counter())
        if network_on:
            recent.append(math.sqrt(rr))
        if callback is not None:
            callback(x)
        if monitor is not None:
            monitor(it, math.sqrt(rr))
        if not math.isfinite(rr):
            return done(
                converged=False,
                info=BREAKDOWN_NONFINITE,
                iterations=it,
                message="NaN/Inf in the residual",
            )
    converged = math.sqrt(residual(b, op.matvec(x), r)) <= tol
    return done(
        converged=converged,
        info=0 if converged else maxiter,
        iterations=maxiter,
        message="" if converged else f"not converged in maxiter={maxiter} iterations",
    )
