"""Incomplete Cholesky IC(0) and modified incomplete Cholesky MIC(0) (numba, sequential).

The factor is computed with the "IKJ" row variant of ILU(0) on the full CSR pattern of a
symmetric matrix ``A`` (no fill-in outside the pattern of ``A``). For a symmetric matrix the
ILU(0) factors are ``L`` (unit lower triangular) and ``U = D L^T``, so the preconditioner
``M = L D L^T`` is symmetric, and positive definite as long as every pivot in ``D`` is positive,
which the pivot safeguard guarantees.

Modified variant (MIC(0)): the fill-in that the zero-fill pattern drops is lumped into the
diagonal, scaled by ``tau``; with ``tau = 1`` the row sums are kept, ``L U 1 = A 1``.

Pivot safeguard: when a pivot after the eliminations of its row falls below ``sigma`` times the
original diagonal entry, it is reset to the original diagonal entry. This keeps singular
(all-Neumann) Laplacians and MIC(0) with ``tau`` close to 1 from producing zero or negative
pivots.

The factored values live in a float64 copy of ``A``'s data array, on ``A``'s (canonical) index
arrays: strictly-lower entries hold ``L``, the diagonal and upper entries hold ``U``.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

__all__ = ["IncompleteCholesky", "ic0", "mic0"]


@nb.njit(cache=True)
def _find_diagonal(indptr, indices, diag_pos):
    """diag_pos[i] = position of entry (i, i) in row i (sorted indices), or -1 when absent."""
    n = indptr.size - 1
    for i in range(n):
        lo = indptr[i]
        hi = indptr[i + 1]
        # binary search for column i in indices[lo:hi]
        while lo < hi:
            mid = (lo + hi) // 2
            if indices[mid] < i:
                lo = mid + 1
            else:
                hi = mid
        if lo < indptr[i + 1] and indices[lo] == i:
            diag_pos[i] = lo
        else:
            diag_pos[i] = -1


@nb.njit(cache=True)
def _factor_ilu0(indptr, indices, data, diag_pos, tau, sigma, iw):
    """In-place ILU(0) (IKJ variant) of the CSR values ``data`` (float64 (nnz,)).

    ``indices`` sorted within each row, ``diag_pos`` (n,) the diagonal positions, ``iw`` (n,)
    a work array of the index dtype filled with -1 (left filled with -1 on return). Fill-in
    outside the pattern is dropped, and with ``tau > 0`` lumped into the diagonal as
    ``a_ii -= tau * a_ik * a_kj``. A pivot below ``sigma * A_ii`` is reset to ``A_ii``.
    Returns the number of pivots so reset.
    """
    n = indptr.size - 1
    replaced = 0
    for i in range(n):
        start = indptr[i]
        end = indptr[i + 1]
        d = diag_pos[i]
        a_ii = data[d]  # original diagonal: row i is untouched until now
        for p in range(start, end):
            iw[indices[p]] = p
        dropped = 0.0
        for p in range(start, d):
            k = indices[p]
            dk = diag_pos[k]
            a_ik = data[p] / data[dk]
            data[p] = a_ik
            for q in range(dk + 1, indptr[k + 1]):
                j = indices[q]
                pos = iw[j]
                if pos != -1:
                    data[pos] -= a_ik * data[q]
                else:
                    dropped += a_ik * data[q]
        pivot = data[d] - tau * dropped
        # "not >=" also catches a NaN pivot
        if not (pivot >= sigma * a_ii):
            pivot = a_ii
            replaced += 1
        data[d] = pivot
        for p in range(start, end):
            iw[indices[p]] = -1
    return replaced


@nb.njit(cache=True)
def _solve_ldu(indptr, indices, data, diag_pos, inv_diag, r, out):
    """out = U^{-1} L^{-1} r with L unit lower (strictly-lower CSR values) and U upper.

    r, out float64 (n,); ``out`` may be ``r`` itself (the solve works in place).
    """
    n = indptr.size - 1
    # forward: L y = r, L unit lower triangular
    for i in range(n):
        s = r[i]
        for p in range(indptr[i], diag_pos[i]):
            s -= data[p] * out[indices[p]]
        out[i] = s
    # backward: U z = y
    for i in range(n - 1, -1, -1):
        s = out[i]
        for p in range(diag_pos[i] + 1, indptr[i + 1]):
            s -= data[p] * out[indices[p]]
        out[i] = s * inv_diag[i]


def _canonical_csr(A) -> sp.csr_array | sp.csr_matrix:
    """A as CSR with sorted, duplicate-free indices; copies only when it has to."""
    if not sp.issparse(A):
        raise TypeError(f"A must be a scipy.sparse matrix or array, got {type(A).__name__}")
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be square, got shape {A.shape}")
    if np.issubdtype(A.dtype, np.complexfloating):
        raise TypeError(f"A must be real, got dtype {A.dtype}")
    if A.format != "csr":
        A = A.tocsr()  # a new matrix: free to canonicalise in place
        A.sum_duplicates()
    elif not A.has_canonical_format:
        A = A.copy()  # never reorder the caller's arrays
        A.sum_duplicates()
    return A


class IncompleteCholesky:
    """z = M^{-1} r for the IC(0)/MIC(0) factor of a symmetric CSR matrix.

    ``M = L D L^T`` with ``L`` unit lower triangular on the strictly-lower pattern of ``A`` and
    ``D`` the (safeguarded) pivots; ``A`` is (n, n), any real dtype (factored in float64), any
    sparse format (converted with ``.tocsr()``). Only the symmetric case gives a symmetric
    preconditioner: symmetry of ``A`` is assumed, not checked.

    Attributes: ``n`` (rows), ``modified`` (MIC(0) or not), ``tau`` (0.0 for IC(0)), ``sigma``,
    ``nnz`` (stored entries of the factor, = those of canonical ``A``), ``safeguarded_pivots``
    (how many pivots the safeguard replaced), ``indptr``/``indices`` (int32, or int64 when nnz
    >= 2**31), ``data`` (float64 (nnz,), the factored values), ``diag_pos`` ((n,), the position
    of each diagonal entry).
    """

    def __init__(
        self,
        A: sp.csr_array | sp.csr_matrix,
        *,
        modified: bool = False,
        tau: float = 0.97,
        sigma: float = 0.25,
    ) -> None:
        tau = float(tau) if modified else 0.0
        sigma = float(sigma)
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must lie in [0, 1], got {tau}")
        if not 0.0 <= sigma <= 1.0:
            raise ValueError(f"sigma must lie in [0, 1], got {sigma}")
        A = _canonical_csr(A)
        n = A.shape[0]
        nnz = int(A.indptr[-1])
        idx = np.int32 if max(nnz, n) < 2**31 else np.int64
        indptr = np.ascontiguousarray(A.indptr, dtype=idx)
        indices = np.ascontiguousarray(A.indices[:nnz], dtype=idx)
        data = np.array(A.data[:nnz], dtype=np.float64, copy=True, order="C")

        diag_pos = np.empty(n, dtype=idx)
        _find_diagonal(indptr, indices, diag_pos)
        missing = np.flatnonzero(diag_pos < 0)
        if missing.size:
            raise ValueError(
                f"A has no diagonal entry in row {int(missing[0])} "
                f"({missing.size} row(s) without one); IC(0) needs a positive diagonal"
            )
        diag = data[diag_pos]
        bad = np.flatnonzero(~(diag > 0.0) | ~np.isfinite(diag))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"A has a non-positive diagonal entry A[{i}, {i}] = {diag[i]!r} in row {i} "
                f"({bad.size} such row(s)); IC(0) needs a positive diagonal (a singular "
                "pressure matrix with isolated cells: factor "
                "deepcd.iterative.nullspace.grounded(A, *closed_components(A))[0] instead)"
            )
        del diag

        iw = np.full(n, -1, dtype=idx)
        replaced = _factor_ilu0(indptr, indices, data, diag_pos, tau, sigma, iw)
        del iw

        self.n: int = n
        self.modified: bool = bool(modified)
        self.tau: float = tau
        self.sigma: float = sigma
        self.nnz: int = nnz
        self.safeguarded_pivots: int = int(replaced)
        self.indptr: np.ndarray = indptr
        self.indices: np.ndarray = indices
        self.data: np.ndarray = data
        self.diag_pos: np.ndarray = diag_pos
        self._inv_diag: np.ndarray = 1.0 / data[diag_pos]

    def solve(self, r: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Return z = M^{-1} r, float64 (n,), for r of shape (n,) (any real dtype).

        With ``out`` (float64, C-contiguous, shape (n,)) z is written there and nothing is
        allocated when r is float64 and contiguous; ``out`` may be ``r`` itself.
        """
        r = np.asarray(r)
        if r.shape != (self.n,):
            raise ValueError(f"r must have shape ({self.n},), got {r.shape}")
        if r.dtype != np.float64 or not r.flags.c_contiguous:
            if np.issubdtype(r.dtype, np.complexfloating):
                raise TypeError(f"r must be real, got dtype {r.dtype}")
            r = np.ascontiguousarray(r, dtype=np.float64)
        if out is None:
            out = np.empty(self.n, dtype=np.float64)
        elif not (
            isinstance(out, np.ndarray)
            and out.dtype == np.float64
            and out.shape == (self.n,)
            and out.flags.c_contiguous
            and out.flags.writeable
        ):
            raise ValueError(
                f"out must be a writeable C-contiguous float64 array of shape ({self.n},)"
            )
        _solve_ldu(self.indptr, self.indices, self.data, self.diag_pos, self._inv_diag, r, out)
        return out

    def __call__(self, r: np.ndarray) -> np.ndarray:
        """Same as :meth:`solve` (float64 (n,))."""
        return self.solve(r)

    def as_linear_operator(self) -> LinearOperator:
        """M^{-1} as an (n, n) float64 LinearOperator (symmetric: rmatvec = matvec)."""

        def apply(x: np.ndarray) -> np.ndarray:
            return self.solve(np.asarray(x).reshape(-1))

        return LinearOperator((self.n, self.n), matvec=apply, rmatvec=apply, dtype=np.float64)

    def factors(self) -> tuple[sp.csr_array, sp.csr_array]:
        """(L, U) as (n, n) float64 CSR arrays: L unit lower, U upper incl. the diagonal.

        M = L U; for symmetric A, U = D L^T with D = diag(U). Meant for tests and small n.
        """
        n = self.n
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(self.indptr))
        cols = self.indices.astype(np.int64)
        lower = cols < rows
        upper = ~lower
        diag = np.arange(n, dtype=np.int64)
        L = sp.csr_array(
            (
                np.concatenate([self.data[lower], np.ones(n)]),
                (np.concatenate([rows[lower], diag]), np.concatenate([cols[lower], diag])),
            ),
            shape=(n, n),
        )
        U = sp.csr_array((self.data[upper], (rows[upper], cols[upper])), shape=(n, n))
        return L, U

    def __repr__(self) -> str:
        kind = f"MIC(0), tau={self.tau}" if self.modified else "IC(0)"
        return (
            f"IncompleteCholesky({kind}, n={self.n}, nnz={self.nnz}, "
            f"safeguarded_pivots={self.safeguarded_pivots})"
        )


def ic0(A: sp.csr_array | sp.csr_matrix, *, sigma: float = 0.25) -> IncompleteCholesky:
    """IC(0) factor of the symmetric (n, n) sparse matrix A."""
    return IncompleteCholesky(A, modified=False, sigma=sigma)


def mic0(
    A: sp.csr_array | sp.csr_matrix, tau: float = 0.97, *, sigma: float = 0.25
) -> IncompleteCholesky:
    """MIC(0) factor of the symmetric (n, n) sparse matrix A (fill lumped into D, scaled by tau)."""
    return IncompleteCholesky(A, modified=True, tau=tau, sigma=sigma)
