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
