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
   than PCG would (seen with a V-cycle network that had turned indefinite in training). If
   the residual norm has not halved within `stall_window` iterations, the alternative is
   *measured*: the iteration restarts as PCG with M for `stall_window` iterations, and keeps
   whichever of the two reduced the residual faster per iteration (`SourceSwitch`). A switch
   is never made on a rule alone: on a maze, where no preconditioner halves ‖r‖ in 30
   steps, a rule that dropped an SPD V-cycle for CG turned 500 iterations into 25,000.

A symmetric positive definite direction source (`direction.spd`, e.g. the vcycle network:
linear and SPD for any weights) *is* a preconditioner: then every step is a PCG step with the
network as M (q = f(r), A-orthogonalized against the last k directions), with all of PCG's
guarantees, and the safeguard's M is only the measured alternative of rule 4. Mixing an SPD
V-cycle's directions with a classical one loses PCG's conjugacy (as reported: 163 iterations
against PCG's 110 on a 2D density-jump problem), and a one-step comparison switches it off on
right-hand sides near an eigenvector (156 iterations against 3). Such a step is two passes
over memory besides the network: the matvec, which takes the dots of the projection in its
pass (`Operator.matvec_dots`), and one that projects v and steps (`project_step`); the
projected vᵀAv and vᵀr come by algebra from those dots, exact for A-orthogonal stored
directions (where cancellation would leave rounding only, they are computed as before).

Why this cannot stall: by induction r is orthogonal to every stored direction (each new p is
A-orthogonal to them and the Galerkin step makes r ⊥ p), so vᵀr = zᵀr and vᵀAv <= zᵀAz, and the
energy decrease of a step is at least (zᵀr)²/(zᵀAz) — that of preconditioned steepest descent
with M, which converges linearly for any SPD M. Consecutive classical steps are those of
truncated flexible CG with a fixed preconditioner, i.e. PCG with M (for k >= 1): a network that
never wins gives exactly PCG. So convergence never depends on the network; the network only
decides how fast.

A step is a *safeguard step* when the network direction was unusable, switched off, or would
not have reduced the energy at least WIN_MARGIN times as much as the classical direction.
Every switch is written to `settings["events"]` with its reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from deepcd.iterative.krylov import Monitor, finish_result, start_iteration
from deepcd.iterative.preconditioners import Preconditioner
from deepcd.iterative.result import BREAKDOWN_INDEFINITE, BREAKDOWN_NONFINITE, History, SolveResult
from deepcd.kernels.vector import (
    dcdm_step,
    dot,
    dots2,
    norm,
    project_step,
    residual,
    step_along,
    subtract2,
    subtract_scaled,
)
from deepcd.operators import Operator

Direction = Callable[[np.ndarray], np.ndarray]
# The network's step must reduce the energy this much more than the classical step to be used:
# a direction that merely ties (e.g. -r against Jacobi) would otherwise keep breaking PCG.
WIN_MARGIN = 1.1
REFRESH_EVERY = 50  # recompute the true residual this often (the recurrence drifts slowly)
# `_DirectionStore.project_dots` takes the projected vᵀAv by algebra while it keeps more than
# this share of vᵀAv (its rounding error is ~1e-16 / share of the result)
PROJECTED_CANCEL = 1e-8


class _DirectionStore:
    """The last k search directions p_j with A·p_j and p_jᵀA p_j, in k + 1 rows: the spare
    row (`slot`) is where the next direction is built or written, so a step never has to copy
    one in."""

    def __init__(self, n: int, k: int):
        self.p = np.empty((k + 1, n))
        self.ap = np.empty((k + 1, n))
        self.pap = np.zeros(k + 1)
        self.k = k
        self.order: list[int] = []  # the stored rows, oldest first

    def orthogonalize(self, w: np.ndarray, aw: np.ndarray) -> None:
        """w -= Σ (wᵀAp_j / p_jᵀAp_j) p_j, and A·w alongside (in place)."""
        for j in self.order:
            coef = dot(aw, self.p[j]) / self.pap[j]
            subtract_scaled(w, aw, coef, self.p[j], self.ap[j])

    def orthogonalize_dots(self, w: np.ndarray, aw: np.ndarray, r: np.ndarray):
        """`orthogonalize`, then (wᵀAw, wᵀr): two passes for k <= 2 (every coefficient from
        one pass, then one update that also takes the dots). The coefficients come from the
        original A·w: for A-orthogonal stored directions that is the same projection."""
        if len(self.order) > 2:
            self.orthogonalize(w, aw)
            return dot(w, aw), dot(w, r)
        use0, use1, p0, ap0, p1, ap1 = self._pair(w, aw)
        c0 = c1 = 0.0
        if use0:
            d0, d1 = dots2(aw, p0, p1, use1)
            c0, c1 = self._coefficients(d0, d1)
        return subtract2(w, aw, c0, p0, ap0, c1, p1, ap1, use1, r)

    def _pair(self, w: np.ndarray, aw: np.ndarray):
        """(use0, use1, p0, Ap0, p1, Ap1) of at most two stored directions, oldest first, for
        the two-direction kernels: w and Aw stand in for a missing p0, p0 for a missing p1
        (read with a zero coefficient, or not at all unless use1)."""
        rows = self.order
        use0, use1 = len(rows) >= 1, len(rows) == 2
        p0, ap0 = (self.p[rows[0]], self.ap[rows[0]]) if use0 else (w, aw)
        p1, ap1 = (self.p[rows[1]], self.ap[rows[1]]) if use1 else (p0, ap0)
        return use0, use1, p0, ap0, p1, ap1

    def _coefficients(self, d0: float, d1: float) -> tuple[float, float]:
        """The projection's coefficients p_jᵀAw / p_jᵀAp_j from d_j = p_jᵀAw (0 for a
        direction not stored)."""
        rows = self.order
        c0 = d0 / self.pap[rows[0]] if len(rows) >= 1 else 0.0
        c1 = d1 / self.pap[rows[1]] if len(rows) == 2 else 0.0
        return c0, c1

    def project_dots(self, op: Operator, w: np.ndarray, aw: np.ndarray, r: np.ndarray):
        """aw = A w, and (c0, c1, wᵀAw, wᵀr) of w projected off the stored directions
        (w −= c0 p0 + c1 p1, `project_step` applies it) from the matvec's own pass
        (`Operator.matvec_dots`): the projected dots by algebra, wᵀAw − Σ c_j (p_jᵀAw) and
        wᵀr − Σ c_j (p_jᵀr), exact for A-orthogonal stored directions. None (aw computed,
        w as it was) where that is not safe: more than two stored, or the projection
        cancels all but 1e-8 of wᵀAw (then `orthogonalize_dots` computes them)."""
        if len(self.order) > 2:
            op.matvec(w, aw)
            return None
        _, use1, p0, _, p1, _ = self._pair(w, aw)
        waw, d0, d1, wr, e0, e1 = op.matvec_dots(w, aw, p0, p1, use1, r)
        c0, c1 = self._coefficients(d0, d1)
        vav = waw - c0 * d0 - c1 * d1
        if not vav > PROJECTED_CANCEL * waw:  # NaN too: the computed dots decide
            return None
        return c0, c1, vav, wr - c0 * e0 - c1 * e1

    def project_step(self, w, aw, c0: float, c1: float, c: float, x, r, b):
        """`project_dots`' projection of w (and Aw) applied, then x += c w, r −= c Aw in one
        pass (`deepcd.kernels.vector.project_step`); returns (wᵀAw, r·r, x·b + x·r)."""
        _, use1, p0, ap0, p1, ap1 = self._pair(w, aw)
        return project_step(w, aw, c0, p0, ap0, c1, p1, ap1, use1, c, x, r, b)

    def _spare(self) -> int:
        return next(j for j in range(self.k + 1) if j not in self.order)

    def slot(self) -> tuple[np.ndarray, np.ndarray]:
        """The spare (p, Ap) rows, which the next `push` stores: a step writes its direction
        there directly."""
        j = self._spare()
        return self.p[j], self.ap[j]

    def push(self, p: np.ndarray, ap: np.ndarray, pap: float) -> None:
        j = self._spare()
        if p.ctypes.data != self.p[j].ctypes.data:  # not already written in place (`slot`)
            self.p[j], self.ap[j] = p, ap
        self.pap[j] = pap
        self.order.append(j)
        if len(self.order) > self.k:
            self.order.pop(0)

    def clear(self) -> None:
        self.order.clear()


class SourceSwitch:
    """Chooses between the loop's direction source and its alternative by measurement.

    `record(it, rnorm, energy)` is called after every iteration with the residual norm and
    the energy f(x) = ½xᵀAx − bᵀx = −½xᵀ(b + r), which both sources lower monotonically. When
    the residual has not halved over `window` iterations of the primary source (and it has
    run ≥ 2·window iterations), the loop is told to switch to the alternative (it restarts
    its directions). After `window` iterations of the alternative, its energy decrease D_alt
    is compared with what the primary would have achieved in the same window, extrapolated
    from its last two windows (D₁, D₂: a linear rate ρ^w = D₂/D₁ gives D₃ = D₂²/D₁); the
    alternative is kept only if D_alt > D₃. Energy, not the residual norm, is compared: a
    freshly restarted PCG's residual often grows for a while as its error energy falls.
    At most one probe per solve.
    """

    def __init__(self, primary: str, alternative: str | None, window: int):
        self.primary, self.alternative, self.window = primary, alternative, int(window)
        self.source = primary
        self.state = "primary" if alternative is not None and self.window > 0 else "final"
        self.norms: list[float] = []
        self.energies: list[float] = []
        self.expected = 0.0
        self.events: list[str] = []

    def fix(self, source: str, it: int, reason: str) -> None:
        """Switch for good (e.g. the network lost `patience` comparisons)."""
        self.source, self.state = source, "final"
        self.events.append(f"iteration {it}: {reason}; continuing with {source}")

    def record(self, it: int, rnorm: float, energy: float) -> str | None:
        """The source to switch to now (the caller clears its directions), or None."""
        if self.state == "final":
            return None
        self.norms.append(rnorm)
        self.energies.append(energy)
        w, norms, f = self.window, self.norms, self.energies
        if self.state == "primary":
            if len(norms) > 2 * w and min(norms[-w:]) > 0.5 * norms[-w - 1]:
                d1, d2 = f[-2 * w - 1] - f[-w - 1], f[-w - 1] - f[-1]
                self.expected = d2 * d2 / d1 if d1 > 0 else 0.0
                self.state, self.source = "probe", self.alternative
                self.norms, self.energies = [rnorm], [energy]
                self.events.append(
                    f"iteration {it}: residual did not halve in {w} iterations of "
                    f"{self.primary}; measuring {self.alternative} for {w} iterations"
                )
                return self.alternative
            return None
        if len(norms) <= w:  # probing the alternative
            return None
        gained = f[0] - f[-1]
        # no measurable difference at this precision: keep the primary
        floor = 1e-12 * max(abs(f[0]), abs(f[-1]))
        keep = gained > self.expected and gained > floor
        self.source = self.alternative if keep else self.primary
        self.state = "final"
        self.events.append(
            f"iteration {it}: {self.alternative} lowered the energy by {gained:.3e} in {w} "
            f"iterations, {self.primary} would have by {self.expected:.3e}: keeping "
            f"{self.source}"
        )
        return None if keep else self.primary


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
    spd: bool | None = None,
) -> SolveResult:
    """Safeguarded DCDM for SPD (or consistent PSD) A; see the module docstring.

    direction: maps the normalized residual (float64 (n,)) to a search direction (n,).
    M: the safeguard's classical preconditioner (None: the residual itself).
    k: how many previous directions each new one is A-orthogonalized against (paper: 2).
    patience: after the network direction has lost to the classical one this many times,
    the network is no longer evaluated and the iteration continues as PCG with M.
    stall_window: when the residual norm has not halved over this many iterations, PCG with
    M is measured for as many and the faster of the two is kept (0: never).
    spd: the direction source is symmetric positive definite (default: its `spd` attribute),
    so the loop is PCG with it as M.
    maxiter defaults to 10·n. settings reports network_steps, safeguard_steps,
    rejected_directions, the time spent in the direction source and `events` (every switch
    and its reason).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 (the safeguard's guarantee needs it), got {k}")
    t0 = time.perf_counter()
    n = op.n
    # read-only, always: numba compiles a kernel once per array writability, and a problem
    # file's b is read-only where a projected one is not (the first solve of the other kind
    # compiled in its timed run)
    b = np.asarray(b).view()
    b.flags.writeable = False
    maxiter = 10 * n if maxiter is None else int(maxiter)
    spd = bool(getattr(direction, "spd", False)) if spd is None else bool(spd)
    settings = {"rtol": rtol, "atol": atol, "maxiter": maxiter, "k": k, "network_as": None}
    settings.update(M.settings() if M is not None else {"preconditioner": "none"})
    settings["safeguard"] = settings.pop("preconditioner")
    settings["network_as"] = "preconditioner" if spd else "direction"
    finish = dict(
        method=method, setup_s=M.setup_s if M is not None else 0.0, t0=t0, settings=settings
    )
    x, r, rr = start_iteration(op, b, x0)
    tol = max(rtol * norm(b), atol)
    hist = History(t0)
    hist.append(math.sqrt(rr), time.perf_counter())

    store = _DirectionStore(n, k)
    u, au, av_buf, z = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    stats = {
        "network_steps": 0,
        "safeguard_steps": 0,
        "rejected_directions": 0,
        "network_losses": 0,
        "network_stalled_at": None,
        "direction_s": 0.0,
    }
    # the sources: "network" (its direction mixed with the classical one), "network-pcg"
    # (PCG with an SPD network as M) and "safeguard" (PCG with M, or CG without one)
    if spd:
        switch = SourceSwitch("network-pcg", "safeguard" if M is not None else None, stall_window)
    else:
        switch = SourceSwitch("network", "safeguard", stall_window)

    def done(**kw) -> SolveResult:
        settings.update(stats)
        settings["events"] = list(switch.events)
        if switch.events and kw.get("message") is not None:
            kw["message"] = "; ".join(filter(None, [kw["message"], *switch.events]))
        elif switch.events:
            kw["message"] = "; ".join(switch.events)
        return finish_result(op, b, x, hist, **kw, **finish)

    def network(res: np.ndarray, rnorm: float) -> np.ndarray | None:
        """The network's direction for the residual, or None when it is unusable."""
        t_net = time.perf_counter()
        q = np.asarray(direction(res / rnorm), dtype=np.float64).reshape(-1)
        stats["direction_s"] += time.perf_counter() - t_net
        if q.shape != (n,):
            raise ValueError(f"the direction source returned shape {q.shape}, expected ({n},)")
        return q if np.all(np.isfinite(q)) and np.any(q) else None

    into = getattr(direction, "into", None)

    def network_into(res: np.ndarray, rnorm: float, out: np.ndarray) -> bool:
        """out = the network's direction for res / rnorm; whether it is usable."""
        if into is None:
            q = network(res, rnorm)
            if q is not None:
                out[:] = q
            return q is not None
        t_net = time.perf_counter()
        ok = into(res, 1.0 / rnorm, out)
        stats["direction_s"] += time.perf_counter() - t_net
        return ok

    def conjugated(w: np.ndarray, aw: np.ndarray, values: np.ndarray | None = None) -> None:
        """w (= values, if given) and A·w, A-orthogonalized against the stored directions."""
        if values is not None:
            w[:] = values
        op.matvec(w, aw)
        store.orthogonalize(w, aw)

    for it in range(1, maxiter + 1):
        rnorm = math.sqrt(rr)
        if rnorm <= tol:
            rr = residual(b, op.matvec(x), r)  # never declare convergence on a drifted r
            if math.sqrt(rr) <= tol:
                return done(converged=True, info=0, iterations=it - 1)
            store.clear()
            rnorm = math.sqrt(rr)

        if switch.source == "network" and stats["network_losses"] >= patience:
            # restart when the stored directions came from mixed steps: PCG's short
            # recurrence needs a history of its own (test_switched_off_network_restarts_as_cg)
            if stats["network_steps"]:
                store.clear()
            switch.fix(
                "safeguard",
                it,
                f"the network's direction lost {patience} one-step comparisons to the safeguard's",
            )
        source = switch.source
        uau = 0.0
        if source == "network":
            q = network(r, rnorm)
            if q is not None:
                conjugated(u, au, q)
                uau = _usable(u, au, dot(u, u))
        # uau == 0 (unusable or switched off): u is not read below (a = 0), so no NaN/Inf
        # in it can leak into the step

        # the classical direction: PCG's, with the SPD network or the safeguard's M
        v, av = z, av_buf
        vav = vr = projected = None
        if source == "network-pcg":
            # built in the store's spare row, so the step keeps it without a copy
            v, av = store.slot()
            usable = network_into(r, rnorm, v)
            if usable:
                # the projection's dots from the matvec's pass; it is applied in the step's
                projected = store.project_dots(op, v, av, r)
                if projected is None:
                    vav, vr = store.orthogonalize_dots(v, av, r)
                else:
                    _, _, vav, vr = projected
            if not usable or not vav > 0.0 or not vr > 0.0:
                # not positive definite after all (NaN, zeros, a broken net): PCG with M
                # from here, which converges whatever the network was
                store.clear()
                switch.fix(
                    "safeguard",
                    it,
                    "the network's direction was unusable (NaN/Inf, zero or not positive definite)",
                )
                source = "safeguard"
                stats["rejected_directions"] += 1
                v, av = z, av_buf
                vav = vr = projected = None
        if source != "network-pcg":
            if M is None:
                v[:] = r
            else:
                M.apply(r, v)
            conjugated(v, av)
        if vav is None:
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

        if vr is None:
            vr = dot(v, r)
        ur = dot(u, r) if uau != 0.0 else 0.0
        gain_v = vr * vr / vav
        if source == "network-pcg":
            stats["network_steps"] += 1
            a, c = 0.0, vr / vav
        elif uau == 0.0:
            if source == "network":  # an unusable direction has lost too
                if not stats["rejected_directions"]:
                    switch.events.append(
                        f"iteration {it}: the network's direction was unusable (NaN/Inf, zero "
                        "or no curvature left); took the classical step"
                    )
                stats["rejected_directions"] += 1
                stats["network_losses"] += 1
            stats["safeguard_steps"] += 1
            a, c = 0.0, vr / vav
        else:
            gain_u = ur * ur / uau
            if gain_u < WIN_MARGIN * gain_v:
                stats["network_losses"] += 1
                # The network loses to the classical direction: take the classical step alone.
                # Mixing in a poor direction would break the conjugacy that makes repeated
                # classical steps PCG.
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
        # p = a u + c v and A p, x += p, r -= A p in one pass; p goes straight into the
        # direction store's next slot (u's buffer when there is none)
        if source == "network-pcg":  # the direction is v itself (scaled by c in the step)
            p_out, ap_out, pap = v, av, vav
            if projected is None:
                rr, xbr = step_along(x, r, v, av, c, b)
            else:  # project v and step in one pass; the store keeps v's computed vᵀAv
                pap, rr, xbr = store.project_step(v, av, projected[0], projected[1], c, x, r, b)
        else:
            p_out, ap_out = store.slot()
            pap, rr, xbr = dcdm_step(x, r, u, au, v, av, a, c, b, p_out, ap_out)
        if not pap > 0.0:
            return done(
                converged=False,
                info=BREAKDOWN_INDEFINITE,
                iterations=it - 1,
                message=f"breakdown at iteration {it}: pᵀAp = {pap:.3e}",
            )
        store.push(p_out, ap_out, pap)
        if it % REFRESH_EVERY == 0:
            rr = residual(b, op.matvec(x), r)
            xbr = dot(x, b) + dot(x, r)
        hist.append(math.sqrt(rr), time.perf_counter())
        energy = -0.5 * xbr if switch.state != "final" else 0.0
        if switch.record(it, math.sqrt(rr), energy) is not None:
            store.clear()  # a new source: PCG restarts with a history of its own
            if switch.state == "probe":
                stats["network_stalled_at"] = it
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
