"""A graph level's links in a fixed-width layout for the CPU smoother and residual (numba).

A graph level (`deepcd.kernels.aggregate`) stores its links as CSR, whose per-node loop has a
variable trip count. Here each node's first `width` links sit in (n, width) arrays, padded
with the node itself and weight 0, and the rest in a CSR of their own, so the inner loop has a
fixed trip count. The padding reads x_i with weight 0, so the sums are the CSR's, in the same
order. The width is chosen per level (`width_for`): 6 on a grid-like level (a cell has 6
faces), 2 on a maze's corridors, whose nodes have two links.

Link indices are uint32: numba wraps negative indices, so a signed index costs a test and a
branch per load; an unsigned one does not.
"""

from __future__ import annotations

import numba as nb
import numpy as np

WIDTH = 6  # the widest layout: one slot per face of a 3D cell
SPILL = 1 / 16  # width_for: the share of nodes whose links may spill past the width


def width_for(indptr: np.ndarray) -> int:
    """The smallest width (1..WIDTH) past which at most SPILL of the nodes have links."""
    deg = np.diff(indptr)
    if deg.size == 0:
        return 1
    counts = np.bincount(np.minimum(deg, WIDTH + 1), minlength=WIDTH + 2)
    beyond = deg.size - np.cumsum(counts)  # beyond[w]: nodes with more than w links
    for w in range(1, WIDTH):
        if beyond[w] <= SPILL * deg.size:
            return w
    return WIDTH


@nb.njit(parallel=True, cache=True)
def _fill_layout(indptr, indices, width, rest_ptr, idx, rest_idx):
    for i in nb.prange(indptr.shape[0] - 1):
        lo, hi = indptr[i], indptr[i + 1]
        for k in range(width):
            idx[i, k] = indices[lo + k] if lo + k < hi else i
        for p in range(lo + width, hi):
            rest_idx[rest_ptr[i] + p - lo - width] = indices[p]


@nb.njit(parallel=True, cache=True)
def _fill_weights(indptr, weight, width, rest_ptr, w, rest_w):
    for i in nb.prange(indptr.shape[0] - 1):
        lo, hi = indptr[i], indptr[i + 1]
        for k in range(width):
            w[i, k] = weight[lo + k] if lo + k < hi else 0.0
        for p in range(lo + width, hi):
            rest_w[rest_ptr[i] + p - lo - width] = weight[p]


def layout(indptr: np.ndarray, indices: np.ndarray, width: int | None = None):
    """(idx (n, width) uint32, rest_ptr (n+1,) int64, rest_idx uint32) of a CSR's links;
    width None: `width_for(indptr)`."""
    n = len(indptr) - 1
    width = width_for(indptr) if width is None else int(width)
    if n >= 2**32:
        raise ValueError(f"the layout indexes nodes as uint32: {n} nodes are too many")
    rest_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.maximum(np.diff(indptr) - width, 0), out=rest_ptr[1:])
    idx = np.empty((n, width), dtype=np.uint32)
    rest_idx = np.empty(rest_ptr[-1], dtype=np.uint32)
    _fill_layout(indptr, indices, width, rest_ptr, idx, rest_idx)
    return idx, rest_ptr, rest_idx


def weights(indptr: np.ndarray, weight: np.ndarray, rest_ptr: np.ndarray, width: int):
    """(w (n, width), rest_w) of CSR link weights in `layout`'s slots (width: its idx's
    second axis), in weight's dtype."""
    n = len(indptr) - 1
    w = np.empty((n, width), dtype=weight.dtype)
    rest_w = np.empty(rest_ptr[-1], dtype=weight.dtype)
    _fill_weights(indptr, weight, width, rest_ptr, w, rest_w)
    return w, rest_w


@nb.njit(inline="always")
def _in_dtype(a, beta, two):
    """(β, two, 1) in a's dtype: Python floats are float64, and one float64 operand makes a
    float32 kernel compute in float64, at half the vector width and with conversions."""
    c = np.empty(3, dtype=a.dtype)
    c[0], c[1], c[2] = beta, two, 1.0
    return c[0], c[1], c[2]


@nb.njit(parallel=True, cache=True)
def clenshaw_step(
    b1, b2, h, e, idx, nw, rest_ptr, rest_idx, rest_nw, beta, two, use_b2, s, use_s, out
):
    """`deepcd.kernels.smoother.graph_clenshaw_step` with the links in the fixed layout:
    out = β·h + two·(I − Â)b1 − b2 (b2 when use_b2), times s when use_s."""
    width = idx.shape[1]
    beta, two, one = _in_dtype(b1, beta, two)
    for i in nb.prange(b1.shape[0]):
        acc = (one - e[i]) * b1[i]
        for k in range(width):
            acc += nw[i, k] * b1[idx[i, k]]
        lo, hi = rest_ptr[i], rest_ptr[i + 1]
        for p in range(lo, hi):
            acc += rest_nw[p] * b1[rest_idx[p]]
        value = beta * h[i] + two * acc
        if use_b2:
            value -= b2[i]
        if use_s:
            value *= s[i]
        out[i] = value


@nb.njit(parallel=True, cache=True)
def residual(r, x, d, idx, w, rest_ptr, rest_idx, rest_w, out):
    """out = r − A x on a graph level, (A x)_i = d_i x_i − Σ_j w_ij x_j, links in the layout."""
    width = idx.shape[1]
    for i in nb.prange(x.shape[0]):
        acc = d[i] * x[i]
        for k in range(width):
            acc -= w[i, k] * x[idx[i, k]]
        lo, hi = rest_ptr[i], rest_ptr[i + 1]
        for p in range(lo, hi):
            acc -= rest_w[p] * x[rest_idx[p]]
        out[i] = r[i] - acc


@nb.njit(parallel=True, cache=True)
def axis_smooth(x, idx, w, rest_ptr, rest_idx, rest_w, omega, out):
    """out = x + ω Σ_j ŵ_ij (x_j − x_i) over the links of one axis in the fixed layout
    (`deepcd.kernels.aggregate.axis_smooth` with a fixed trip count: 2 slots per node hold
    every link of a grid-like level along one axis)."""
    width = idx.shape[1]
    om = _in_dtype(x, omega, 0.0)[0]
    for i in nb.prange(x.shape[0]):
        xi = x[i]
        acc = xi - xi  # a zero in x's dtype
        for k in range(width):
            acc += w[i, k] * (x[idx[i, k]] - xi)
        for p in range(rest_ptr[i], rest_ptr[i + 1]):
            acc += rest_w[p] * (x[rest_idx[p]] - xi)
        out[i] = xi + om * acc


AXIS_WIDTH = 2  # `axis_layout`: slots per node along one axis (a grid cell has two faces)


def axis_layout(indptr, indices, weight, axis, naxes: int) -> list[tuple]:
    """Per axis a < naxes, the links with axis == a (in CSR order) in the fixed layout of
    width AXIS_WIDTH: (idx, w, rest_ptr, rest_idx, rest_w), the arguments `axis_smooth` takes
    after x — `layout` and `weights` of `deepcd.kernels.aggregate.axis_csr`'s per-axis CSRs,
    in two passes over the links without building those CSRs."""
    n = len(indptr) - 1
    if n >= 2**32:
        raise ValueError(f"the layout indexes nodes as uint32: {n} nodes are too many")
    counts = _axis_counts(indptr, axis, naxes)
    rest_ptr = np.zeros((naxes, n + 1), dtype=np.int64)
    np.cumsum(np.maximum(counts - AXIS_WIDTH, 0), axis=1, out=rest_ptr[:, 1:])
    idx = np.empty((naxes, n, AXIS_WIDTH), dtype=np.uint32)
    w = np.empty((naxes, n, AXIS_WIDTH), dtype=weight.dtype)
    spill = int(rest_ptr[:, -1].max()) if n else 0
    rest_idx = np.empty((naxes, spill), dtype=np.uint32)
    rest_w = np.empty((naxes, spill), dtype=weight.dtype)
    _fill_axis_layout(indptr, indices, weight, axis, rest_ptr, idx, w, rest_idx, rest_w)
    return [
        (idx[a], w[a], rest_ptr[a], rest_idx[a, : rest_ptr[a, -1]], rest_w[a, : rest_ptr[a, -1]])
        for a in range(naxes)
    ]


@nb.njit(cache=True)
def _axis_counts(indptr, axis, naxes):
    """(naxes, n) the links of each node along each axis."""
    n = indptr.shape[0] - 1
    counts = np.zeros((naxes, n), dtype=np.int64)
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            counts[axis[p], i] += 1
    return counts


@nb.njit(cache=True)
def _fill_axis_layout(indptr, indices, weight, axis, rest_ptr, idx, w, rest_idx, rest_w):
    """`axis_layout`'s slots: a node's first AXIS_WIDTH links along each axis, the rest
    spilled; unused slots hold the node itself with weight 0."""
    naxes, n, width = idx.shape
    seen = np.zeros(naxes, dtype=np.int64)
    for i in range(n):
        seen[:] = 0
        for p in range(indptr[i], indptr[i + 1]):
            a = axis[p]
            k = seen[a]
            if k < width:
                idx[a, i, k] = indices[p]
                w[a, i, k] = weight[p]
            else:
                q = rest_ptr[a, i] + k - width
                rest_idx[a, q] = indices[p]
                rest_w[a, q] = weight[p]
            seen[a] = k + 1
        for a in range(naxes):
            for k in range(seen[a], width):
                idx[a, i, k] = i
                w[a, i, k] = 0.0
