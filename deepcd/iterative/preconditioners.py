"""Preconditioners z = M⁻¹ r for PCG and Newton: Jacobi, IC(0), MIC(0), pyamg V-cycles, user M.

Each has `apply(r, out)` (writes z into `out`), `apply_dot(r, out) -> r·z`, `name` and
`setup_s` (seconds spent building it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from deepcd.kernels.vector import dot, scale_dot
from deepcd.operators import Operator


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

    def __init__(self, op: Operator, *, modified: bool = False, tau: float = 0.97):
        from deepcd.kernels.ichol import IncompleteCholesky

        t = time.perf_counter()
        self.factor = IncompleteCholesky(op.csr, modified=modified, tau=tau)
        self.name = "mic0" if modified else "ic0"
        self.setup_s = time.perf_counter() - t

    def apply(self, r, out):
        self.factor.solve(r, out=out)

    def settings(self):
        return {
            "preconditioner": self.name,
            "tau": self.factor.tau,
            "safeguarded_pivots": int(self.factor.safeguarded_pivots),
        }


AMG_KINDS = ("sa", "rs")


class AMGPreconditioner(Preconditioner):
    """One pyamg multigrid cycle (smoothed aggregation "sa" or Ruge–Stüben "rs")."""

    def __init__(self, op: Operator, kind: str = "sa", cycle: str = "V", **amg_options):
        import pyamg

        if kind not in AMG_KINDS:
            raise ValueError(f"AMG kind must be one of {AMG_KINDS}, got {kind!r}")
        A = op.csr
        t = time.perf_counter()
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


def make_preconditioner(name: str, op: Operator, **options) -> Preconditioner:
    """Build a preconditioner by name: "none", "jacobi", "ic0", "mic0", "amg-sa", "amg-rs"."""
    if name == "none":
        return Preconditioner()
    if name == "jacobi":
        return Jacobi(op)
    if name == "ic0":
        return IncompleteCholeskyPreconditioner(op, modified=False)
    if name == "mic0":
        return IncompleteCholeskyPreconditioner(op, modified=True, tau=options.pop("tau", 0.97))
    if name.startswith("amg-"):
        return AMGPreconditioner(op, kind=name[4:], **options)
    raise ValueError(f"unknown preconditioner {name!r}")
