"""Linear operators the solvers iterate with: CSR (numba), matrix-free stencil, any LinearOperator.

All share one small interface: `n`, `matvec(x, out)`, `matvec_dot(x, out) -> x·Ax`,
`matvec_dots(x, out, p0, p1, use1, r)` (the dots of DCDM's projection and step with the
matvec), `diagonal()` and `csr` (the scipy matrix, or a TypeError where there is none).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from deepcd.kernels.csr import csr_matvec, csr_matvec_dot
from deepcd.kernels.stencil import (
    stencil_index_3d,
    stencil_matvec,
    stencil_matvec_dot,
    stencil_matvec_dots,
    weighted_stencil_matvec_dot,
    weighted_stencil_matvec_dots,
)
from deepcd.kernels.vector import direction_dots, inner


class Operator:
    """Base of the solver-facing operators: y = A x on float64 (n,) vectors."""

    n: int
    kind: str = "operator"

    def matvec(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def matvec_dot(self, x: np.ndarray, out: np.ndarray) -> float:
        """out = A x; return x·out."""
        self.matvec(x, out)
        return inner(x, out)

    def matvec_dots(
        self,
        x: np.ndarray,
        out: np.ndarray,
        p0: np.ndarray,
        p1: np.ndarray,
        use1: bool,
        r: np.ndarray,
    ) -> tuple[float, float, float, float, float, float]:
        """out = A x; returns (x·Ax, p0·Ax, p1·Ax, x·r, p0·r, p1·r), p1's two 0 unless use1
        (`deepcd.kernels.vector.direction_dots`; the stencils take them in the matvec's own
        pass). All float64 (n,)."""
        self.matvec(x, out)
        return direction_dots(x, out, p0, p1, use1, r)

    def diagonal(self) -> np.ndarray:
        raise TypeError(
            f"the diagonal of a {self.kind} operator is unknown: pass a sparse matrix or a Problem"
        )

    @property
    def csr(self) -> sp.csr_matrix:
        raise TypeError(
            f"this method needs the assembled matrix, and a {self.kind} operator has none: "
            "pass a scipy sparse matrix or a deepcd Problem"
        )

    def as_linear_operator(self) -> spla.LinearOperator:
        return spla.LinearOperator((self.n, self.n), matvec=self.matvec, dtype=np.float64)


class CSROperator(Operator):
    """A scipy CSR matrix applied by the numba kernel (float64 data, int32/int64 indices)."""

    kind = "CSR"

    def __init__(self, A: sp.spmatrix | sp.sparray):
        A = sp.csr_matrix(A, dtype=np.float64)
        self._csr = A
        self.n = A.shape[0]
        self._arrays = (A.indptr, A.indices, A.data)

    def matvec(self, x, out=None):
        out = np.empty(self.n) if out is None else out
        csr_matvec(*self._arrays, np.ascontiguousarray(x, dtype=np.float64), out)
        return out

    def matvec_dot(self, x, out):
        return csr_matvec_dot(*self._arrays, x, out)

    def diagonal(self):
        return self._csr.diagonal()

    @property
    def csr(self):
        return self._csr


class StencilOperator(Operator):
    """The pressure Laplacian applied matrix-free from a fluid-index grid and a uint8 diagonal.

    `csr_factory`, when given, assembles the equivalent CSR matrix on demand (for IC, AMG).
    """

    kind = "stencil"

    def __init__(self, index: np.ndarray, diag: np.ndarray, csr_factory=None):
        self.index = stencil_index_3d(np.ascontiguousarray(index))
        self.diag = np.ascontiguousarray(diag, dtype=np.uint8)
        self.n = self.diag.size
        self._csr_factory = csr_factory

    def matvec(self, x, out=None):
        out = np.empty(self.n) if out is None else out
        stencil_matvec(self.index, self.diag, np.ascontiguousarray(x, dtype=np.float64), out)
        return out

    def matvec_dot(self, x, out):
        return stencil_matvec_dot(self.index, self.diag, x, out)

    def matvec_dots(self, x, out, p0, p1, use1, r):
        return stencil_matvec_dots(self.index, self.diag, x, out, p0, p1, use1, r)

    def diagonal(self):
        return self.diag.astype(np.float64)

    @property
    def csr(self):
        if self._csr_factory is None:
            return super().csr
        return self._csr_factory()


class WeightedStencilOperator(StencilOperator):
    """A variable-coefficient pressure operator applied matrix-free from its grid stencil
    (`Problem.grid_stencil`: a diagonal and per-axis face weights) — the matrix
    `coefficients.stencil_csr` assembles, in ~40 % of its bytes per row.

    `csr_factory`, when given, assembles the equivalent CSR matrix on demand (for IC, AMG).
    """

    kind = "weighted stencil"

    def __init__(self, index: np.ndarray, diag_grid: np.ndarray, links, csr_factory=None):
        index = np.ascontiguousarray(index)
        self.index = stencil_index_3d(index)
        self.diag = np.ascontiguousarray(np.asarray(diag_grid, dtype=np.float64)[index >= 0])
        faces = [np.ascontiguousarray(w, dtype=np.float64) for w in links]
        if index.ndim == 2:  # the (1, nx, ny) view: no x-faces
            faces = [np.zeros((0, *index.shape))] + [w[None] for w in faces]
        self.faces = tuple(faces)
        self.n = self.diag.size
        self._csr_factory = csr_factory

    def matvec(self, x, out=None):
        out = np.empty(self.n) if out is None else out
        self.matvec_dot(np.ascontiguousarray(x, dtype=np.float64), out)
        return out

    def matvec_dot(self, x, out):
        return weighted_stencil_matvec_dot(self.index, self.diag, *self.faces, x, out)

    def matvec_dots(self, x, out, p0, p1, use1, r):
        args = (self.index, self.diag, *self.faces, x, out, p0, p1, use1, r)
        return weighted_stencil_matvec_dots(*args)

    def diagonal(self):
        return self.diag.copy()


class LinearOperatorAdapter(Operator):
    """Any scipy LinearOperator (or object with matvec) applied through its own matvec."""

    kind = "LinearOperator"

    def __init__(self, A: spla.LinearOperator):
        self._op = A
        self.n = A.shape[0]

    def matvec(self, x, out=None):
        y = np.asarray(self._op.matvec(x), dtype=np.float64).reshape(-1)
        if out is None:
            return y
        out[:] = y
        return out
