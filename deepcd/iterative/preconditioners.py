"""Preconditioners z = M⁻¹ r for PCG and Newton: Jacobi, IC(0), MIC(0), pyamg V-cycles, user M.

Each has `apply(r, out)` (writes z into `out`), `apply_dot(r, out) -> r·z`, `name` and
`setup_s` (seconds spent building it).

Singular matrices (closed regions, zero rows of isolated cells): IC(0), MIC(0) and AMG are
built from `grounded(A)` — one anchor cell per closed region gets one Dirichlet neighbour's
weight added to its diagonal — so the factor or hierarchy is that of an SPD matrix and the
preconditioner is SPD. For a residual in the range of A (zero mean per closed region, as the
solve path makes it) this changes the answer only by a constant per region.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from deepcd.iterative.nullspace import closed_components, grounded
from deepcd.kernels.vector import dot, scale_dot
from deepcd.operators import Operator

# (labels over the unknowns, count) of the closed regions, as `closed_components` returns them
ClosedRegions = tuple[np.ndarray, int]


def preconditioner_matrix(
    op: Operator, closed: ClosedRegions | None = None
) -> tuple[sp.csr_matrix, int]:
    """The SPD matrix a factored/multigrid preconditioner is built from, and how many regions
    were grounded: op.csr itself, or `grounded(op.csr)` when it has closed regions.

    closed: the closed regions when the caller knows them (a Problem's), else found from the
    matrix (a row-sum check, and connected components only when some row sum vanishes).
    """
    A = op.csr
    labels, count = closed_components(A) if closed is None else closed
    if count:
        A, _ = grounded(A, labels, count)
    return A, int(count)


class Preconditioner:
    name = "identity"
    setup_s = 0.0

    def apply(self, r: np.ndarray, out: np.ndarray) -> None:
        out[:] = r

    def apply_dot(self, r: np.ndarray, out: np.ndarray) -> float:
        self.apply(r, out)
        return dot(r, out)

    def settings(self) -> dict:
        return {"preconditioner": self.name}


class Jacobi(Preconditioner):
    """M = diag(A). Rows with a zero diagonal (isolated cells) are left at zero."""

    name = "jacobi"

    def __init__(self, op: Operator):
        t = time.perf_counter()
        d = np.asarray(op.diagonal(), dtype=np.float64)
        if np.any(d < 0):
            row = int(np.flatnonzero(d < 0)[0])
            raise ValueError(f"A has a negative diagonal entry at row {row}: not SPD")
        self.inv_diag = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
        self.setup_s = time.perf_counter() - t

    def apply(self, r, out):
        np.multiply(self.inv_diag, r, out=out)

    def apply_dot(self, r, out):
        return scale_dot(r, self.inv_diag, out)


class IncompleteCholeskyPreconditioner(Preconditioner):
    """IC(0) (modified=False) or MIC(0) (modified=True) of the assembled matrix."""

    def __init__(
        self,
        op: Operator,
        *,
        modified: bool = False,
        tau: float = 0.97,
        closed: ClosedRegions | None = None,
    ):
        from deepcd.kernels.ichol import IncompleteCholesky

        t = time.perf_counter()
        A, self.grounded_regions = preconditioner_matrix(op, closed)
        self.factor = IncompleteCholesky(A, modified=modified, tau=tau)
        self.name = "mic0" if modified else "ic0"
        self.setup_s = time.perf_counter() - t

    def apply(self, r, out):
        self.factor.solve(r, out=out)

    def settings(self):
        return {
            "preconditioner": self.name,
            "tau": self.factor.tau,
            "safeguarded_pivots": int(self.factor.safeguarded_pivots),
            "grounded_regions": self.grounded_regions,
        }


AMG_KINDS = ("sa", "rs")


class AMGPreconditioner(Preconditioner):
    """One pyamg multigrid cycle (smoothed aggregation "sa" or Ruge–Stüben "rs")."""

    def __init__(
        self,
        op: Operator,
        kind: str = "sa",
        cycle: str = "V",
        closed: ClosedRegions | None = None,
        **amg_options,
    ):
        import pyamg

        if kind not in AMG_KINDS:
            raise ValueError(f"AMG kind must be one of {AMG_KINDS}, got {kind!r}")
        t = time.perf_counter()
        A, self.grounded_regions = preconditioner_matrix(op, closed)
        if kind == "sa":
            self.ml = pyamg.smoothed_aggregation_solver(A, **amg_options)
        else:
            self.ml = pyamg.ruge_stuben_solver(A, **amg_options)
        self.M = self.ml.aspreconditioner(cycle=cycle)
        self.setup_s = time.perf_counter() - t
        self.name = f"amg-{kind}"
        self.cycle = cycle

    def apply(self, r, out):
        out[:] = self.M.matvec(r)

    def settings(self):
        return {
            "preconditioner": self.name,
            "cycle": self.cycle,
            "levels": len(self.ml.levels),
            "operator_complexity": float(self.ml.operator_complexity()),
            "grid_complexity": float(self.ml.grid_complexity()),
            "grounded_regions": self.grounded_regions,
        }


class UserPreconditioner(Preconditioner):
    """A user's M as scipy takes it: an approximation of A⁻¹ (LinearOperator, matrix, callable)."""

    name = "user"

    def __init__(self, M, n: int):
        if isinstance(M, Preconditioner):
            raise TypeError("pass deepcd preconditioners by method name, not as M=")
        if callable(M) and not hasattr(M, "shape"):
            self._apply: Callable = M
        else:
            if getattr(M, "shape", None) != (n, n):
                raise ValueError(f"M must have shape ({n}, {n}), got {getattr(M, 'shape', None)}")
            op = spla.aslinearoperator(M) if not sp.issparse(M) else M
            self._apply = op.dot if sp.issparse(op) else op.matvec

    def apply(self, r, out):
        z = np.asarray(self._apply(r), dtype=np.float64).reshape(-1)
        if z.shape != out.shape:
            raise ValueError(f"M returned shape {z.shape}, expected {out.shape}")
        out[:] = z


def make_preconditioner(
    name: str, op: Operator, closed: ClosedRegions | None = None, **options
) -> Preconditioner:
    """Build a preconditioner by name: "none", "jacobi", "ic0", "mic0", "amg-sa", "amg-rs".

    closed: the closed regions of op, when known (else IC/AMG find them from the matrix).
    """
    if name == "none":
        return Preconditioner()
    if name == "jacobi":
        return Jacobi(op)
    if name == "ic0":
        return IncompleteCholeskyPreconditioner(op, modified=False, closed=closed)
    if name == "mic0":
        tau = options.pop("tau", 0.97)
        return IncompleteCholeskyPreconditioner(op, modified=True, tau=tau, closed=closed)
    if name.startswith("amg-"):
        return AMGPreconditioner(op, kind=name[4:], closed=closed, **options)
    raise ValueError(f"unknown preconditioner {name!r}")
