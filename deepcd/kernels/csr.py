"""CSR sparse matrix-vector products (numba, parallel over rows)."""

from __future__ import annotations

import numba as nb


@nb.njit(parallel=True, cache=True)
def csr_matvec(indptr, indices, data, x, out):
    """out = A x for A in CSR (indptr (n+1,), indices (nnz,), data (nnz,)); x, out float64."""
    n = indptr.size - 1
    for i in nb.prange(n):
        s = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            s += data[p] * x[indices[p]]
        out[i] = s


@nb.njit(parallel=True, cache=True)
def csr_matvec_dot(indptr, indices, data, x, out):
    """out = A x and return x·(A x) in the same pass."""
    n = indptr.size - 1
    total = 0.0
    for i in nb.prange(n):
        s = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            s += data[p] * x[indices[p]]
        out[i] = s
        total += x[i] * s
    return total
