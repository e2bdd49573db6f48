"""Closed (all-Neumann) regions: constant null vectors of a pressure matrix, and what to do.

A region is a set of unknowns decoupled from the rest; it is closed when A·1 vanishes on it.
Singular systems are solved in the least-squares sense of the pressure problem: b is
projected onto the range (its mean removed per closed region) and x normalized to zero mean
per closed region. `labels` is int32 over the unknowns: -1 outside closed regions.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


class SingularSystemWarning(UserWarning):
    """The matrix had closed regions: b was projected onto the range, x made zero-mean."""


def closed_components(A: sp.csr_matrix, rtol: float = 1e-12) -> tuple[np.ndarray, int]:
    """Closed regions of any sparse matrix: connected components on which the row sums vanish."""
    n = A.shape[0]
    row_sum = np.asarray(A @ np.ones(n)).ravel()
    scale = np.abs(A).max() if A.nnz else 1.0
    zero_sum = np.abs(row_sum) <= rtol * scale
    if not zero_sum.any():
        return np.full(n, -1, dtype=np.int32), 0
    count, comp = connected_components(A, directed=False)
    all_zero = np.ones(count, dtype=bool)
    all_zero[comp[~zero_sum]] = False
    closed = np.flatnonzero(all_zero)
    relabel = np.full(count, -1, dtype=np.int32)
    relabel[closed] = np.arange(closed.size, dtype=np.int32)
    return relabel[comp], int(closed.size)


def remove_region_means(v: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """v minus its mean over each closed region (a copy; cells outside regions unchanged)."""
    out = np.array(v, dtype=np.float64, copy=True)
    if count == 0:
        return out
    inside = labels >= 0
    sums = np.bincount(labels[inside], weights=out[inside], minlength=count)
    sizes = np.bincount(labels[inside], minlength=count)
    out[inside] -= (sums / sizes)[labels[inside]]
    return out


def region_anchors(labels: np.ndarray, count: int) -> np.ndarray:
    """int64 (count,): the first (lowest-numbered) unknown of each closed region."""
    inside = np.flatnonzero(labels >= 0)
    if count == 0 or inside.size == 0:
        return np.zeros(0, dtype=np.int64)
    _, first = np.unique(labels[inside], return_index=True)
    return inside[first].astype(np.int64)


def ground_value(A: sp.csr_matrix) -> float:
    """The diagonal weight of one Dirichlet neighbour: the mean |off-diagonal| entry of A.

    For the pressure Laplacian (off-diagonals -1) this is 1; it falls back to the mean
    positive diagonal entry, then to 1.
    """
    upper = sp.triu(A, k=1, format="csr")  # symmetric A: its off-diagonals once
    upper.eliminate_zeros()
    if upper.nnz:
        return float(np.abs(upper.data).mean())
    diag = A.diagonal()
    positive = diag[diag > 0]
    return float(positive.mean()) if positive.size else 1.0


def grounded(
    A: sp.csr_matrix, labels: np.ndarray, count: int, value: float | None = None
) -> tuple[sp.csr_matrix, np.ndarray]:
    """A with `value` added to the diagonal of one anchor cell per closed region.

    The result is symmetric positive definite where A is positive semidefinite with one
    constant null vector per closed region (each grounded region becomes a Dirichlet problem;
    a zero row — an isolated cell — gets the diagonal `value`). It is meant for building
    preconditioners only: on the range of A, a solve with it equals a solve with A up to a
    constant per region (for vectors with zero mean per region). value defaults to
    `ground_value(A)`. Returns (CSR float64 (n, n), the anchor unknowns int64 (count,));
    A itself is never modified (index arrays are shared when every anchor has a stored
    diagonal entry).
    """
    anchors = region_anchors(labels, count)
    if anchors.size == 0:
        return A, anchors
    value = ground_value(A) if value is None else float(value)
    A = sp.csr_matrix(A, dtype=np.float64)
    positions = np.empty(anchors.size, dtype=np.int64)
    for k, i in enumerate(anchors.tolist()):
        lo, hi = int(A.indptr[i]), int(A.indptr[i + 1])
        cols = A.indices[lo:hi]
        hit = np.flatnonzero(cols == i)
        positions[k] = lo + int(hit[0]) if hit.size else -1
    if np.all(positions >= 0):
        data = A.data.copy()
        data[positions] += value
        out = sp.csr_matrix((data, A.indices, A.indptr), shape=A.shape)
        out.has_sorted_indices = A.has_sorted_indices
    else:
        bump = sp.csr_matrix((np.full(anchors.size, value), (anchors, anchors)), shape=A.shape)
        out = (A + bump).tocsr()
        out.sum_duplicates()
    return out, anchors
