"""A graph level's links in a fixed-width layout for the CPU smoother and residual (numba).

A graph level (`deepcd.kernels.aggregate`) stores its links as CSR, whose per-node loop has a
variable trip count. Here each node's first `width` links sit in (width, n) arrays — slot k of
every node in one row — padded with the node itself and weight 0, and the rest in a CSR of
their own. A kernel then runs, per block of nodes, one loop per slot over the block: a plain
gather loop that vectorizes (AVX-512 gathers), where a loop over a node's few links did not —
2.1× faster per Clenshaw step on a maze's level 0 (probe, 60k nodes, width 2). The padding
reads x_i with weight 0 and the slots are summed in link order, so the sums are the CSR's, bit
for bit. The width is chosen per level (`width_for`): 6 on a grid-like level (a cell has 6
faces), 2 on a maze's corridors, whose nodes have two links.

Link indices are uint32: numba wraps negative indices, so a signed index costs a test and a
branch per load; an unsigned one does not. A kernel's output may not be one of its inputs (it
accumulates there).
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
def _fill_layout(indptr, indices, width, spill, rest_ptr, idx, rest_idx):
    n = indptr.shape[0] - 1
    for i in nb.prange(n):
        lo, hi = indptr[i], indptr[i + 1]
        for k in range(width):
            idx[k, i] = indices[lo + k] if lo + k < hi else i
    for t in nb.prange(spill.shape[0]):
        i = spill[t]
        for p in range(indptr[i] + width, indptr[i + 1]):
            rest_idx[rest_ptr[t] + p - indptr[i] - width] = indices[p]


@nb.njit(parallel=True, cache=True)
def _fill_weights(indptr, weight, width, spill, rest_ptr, w, rest_w):
    n = indptr.shape[0] - 1
    for i in nb.prange(n):
        lo, hi = indptr[i], indptr[i + 1]
        for k in range(width):
            w[k, i] = weight[lo + k] if lo + k < hi else 0.0
    for t in nb.prange(spill.shape[0]):
        i = spill[t]
        for p in range(indptr[i] + width, indptr[i + 1]):
            rest_w[rest_ptr[t] + p - indptr[i] - width] = weight[p]


def _spill(indptr: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(spill, rest_ptr): the nodes with more than `width` links, increasing, and the CSR
    pointers of their links past the width."""
    extra = np.diff(indptr) - width
    spill = np.flatnonzero(extra > 0).astype(np.int64)
    rest_ptr = np.zeros(len(spill) + 1, dtype=np.int64)
    np.cumsum(extra[spill], out=rest_ptr[1:])
    return spill, rest_ptr


def layout(indptr: np.ndarray, indices: np.ndarray, width: int | None = None):
    """(idx (width, n) uint32, spill (s,) int64, rest_ptr (s+1,) int64, rest_idx uint32) of a
    CSR's links: each node's first `width` links in idx (padded with the node itself), the
    links of the s nodes with more (`spill`) past the width as a CSR of their own; width None:
    `width_for(indptr)`."""
    n = len(indptr) - 1
    width = width_for(indptr) if width is None else int(width)
    if n >= 2**32:
        raise ValueError(f"the layout indexes nodes as uint32: {n} nodes are too many")
    spill, rest_ptr = _spill(indptr, width)
    idx = np.empty((width, n), dtype=np.uint32)
    rest_idx = np.empty(rest_ptr[-1], dtype=np.uint32)
    _fill_layout(indptr, indices, width, spill, rest_ptr, idx, rest_idx)
    return idx, spill, rest_ptr, rest_idx


def weights(indptr: np.ndarray, weight: np.ndarray, laid_out: tuple):
    """(w (width, n), rest_w) of CSR link weights in the slots of `laid_out` (what `layout`
    returned for this CSR), in weight's dtype."""
    idx, spill, rest_ptr, _ = laid_out
    width, n = idx.shape
    w = np.empty((width, n), dtype=weight.dtype)
    rest_w = np.empty(rest_ptr[-1], dtype=weight.dtype)
    _fill_weights(indptr, weight, width, spill, rest_ptr, w, rest_w)
    return w, rest_w


@nb.njit(inline="always")
def _in_dtype(a, beta, two):
    """(β, two, 1) in a's dtype: Python floats are float64, and one float64 operand makes a
    float32 kernel compute in float64, at half the vector width and with conversions."""
    c = np.empty(3, dtype=a.dtype)
    c[0], c[1], c[2] = beta, two, 1.0
    return c[0], c[1], c[2]


@nb.njit(inline="always")
def _chunk(c, nchunks, n, spill):
    """Chunk c of nchunks: its nodes lo..hi − 1 and its spilled nodes spill[s0:s1]."""
    lo, hi = c * n // nchunks, (c + 1) * n // nchunks
    return lo, hi, np.searchsorted(spill, lo), np.searchsorted(spill, hi)


@nb.njit(inline="always")
def _add_links(acc, x, idx, w, lo, hi, spill, s0, s1, rest_ptr, rest_idx, rest_w, negate):
    """acc[t] ±= Σ_links w·x_j for the nodes i = lo + t of one chunk (acc: the chunk's view):
    slot by slot — each a gather loop from index 0, which vectorizes — then the spilled
    links, so each node's sum runs in the CSR's order. negate: subtract."""
    for k in range(idx.shape[0]):
        ik, wk = idx[k, lo:hi], w[k, lo:hi]
        if negate:
            for t in range(hi - lo):
                acc[t] -= wk[t] * x[ik[t]]
        else:
            for t in range(hi - lo):
                acc[t] += wk[t] * x[ik[t]]
    for q in range(s0, s1):
        t = spill[q] - lo
        for p in range(rest_ptr[q], rest_ptr[q + 1]):
            if negate:
                acc[t] -= rest_w[p] * x[rest_idx[p]]
            else:
                acc[t] += rest_w[p] * x[rest_idx[p]]


CHUNK = 8192  # nodes per parallel task (a fixed size: numba cannot cache a kernel that asks
# for its thread count)


@nb.njit(inline="always")
def _nchunks(n):
    return max(1, n // CHUNK)


@nb.njit(parallel=True, cache=True)
def clenshaw_step(
    b1, b2, h, e, idx, nw, spill, rest_ptr, rest_idx, rest_nw, beta, two, use_b2, s, use_s, out
):
    """`deepcd.kernels.smoother.graph_clenshaw_step` with the links in the fixed layout:
    out = β·h + two·(I − Â)b1 − b2 (b2 when use_b2), times s when use_s."""
    n = b1.shape[0]
    beta, two, one = _in_dtype(b1, beta, two)
    nchunks = _nchunks(n)
    for c in nb.prange(nchunks):
        lo, hi, s0, s1 = _chunk(c, nchunks, n, spill)
        o, ec, bc, hc, b2c, sc = out[lo:hi], e[lo:hi], b1[lo:hi], h[lo:hi], b2[lo:hi], s[lo:hi]
        for t in range(hi - lo):
            o[t] = (one - ec[t]) * bc[t]
        _add_links(o, b1, idx, nw, lo, hi, spill, s0, s1, rest_ptr, rest_idx, rest_nw, False)
        if use_b2 and use_s:
            for t in range(hi - lo):
                o[t] = (beta * hc[t] + two * o[t] - b2c[t]) * sc[t]
        elif use_b2:
            for t in range(hi - lo):
                o[t] = beta * hc[t] + two * o[t] - b2c[t]
        elif use_s:
            for t in range(hi - lo):
                o[t] = (beta * hc[t] + two * o[t]) * sc[t]
        else:
            for t in range(hi - lo):
                o[t] = beta * hc[t] + two * o[t]


@nb.njit(parallel=True, cache=True)
def residual(r, x, d, idx, w, spill, rest_ptr, rest_idx, rest_w, out):
    """out = r − A x on a graph level, (A x)_i = d_i x_i − Σ_j w_ij x_j, links in the layout."""
    n = x.shape[0]
    nchunks = _nchunks(n)
    for c in nb.prange(nchunks):
        lo, hi, s0, s1 = _chunk(c, nchunks, n, spill)
        o, rc, xc, dc = out[lo:hi], r[lo:hi], x[lo:hi], d[lo:hi]
        for t in range(hi - lo):
            o[t] = dc[t] * xc[t]
        _add_links(o, x, idx, w, lo, hi, spill, s0, s1, rest_ptr, rest_idx, rest_w, True)
        for t in range(hi - lo):
            o[t] = rc[t] - o[t]


@nb.njit(parallel=True, cache=True)
def axis_smooth(x, idx, w, spill, rest_ptr, rest_idx, rest_w, omega, out):
    """out = x + ω Σ_j ŵ_ij (x_j − x_i) over the links of one axis in the fixed layout
    (`deepcd.kernels.aggregate.axis_smooth` with a fixed trip count: 2 slots per node hold
    every link of a grid-like level along one axis)."""
    n = x.shape[0]
    om = _in_dtype(x, omega, 0.0)[0]
    nchunks = _nchunks(n)
    for c in nb.prange(nchunks):
        lo, hi, s0, s1 = _chunk(c, nchunks, n, spill)
        o, xc = out[lo:hi], x[lo:hi]
        for t in range(hi - lo):
            o[t] = xc[t] - xc[t]  # a zero in x's dtype
        for k in range(idx.shape[0]):
            ik, wk = idx[k, lo:hi], w[k, lo:hi]
            for t in range(hi - lo):
                o[t] += wk[t] * (x[ik[t]] - xc[t])
        for q in range(s0, s1):
            t = spill[q] - lo
            for p in range(rest_ptr[q], rest_ptr[q + 1]):
                o[t] += rest_w[p] * (x[rest_idx[p]] - xc[t])
        for t in range(hi - lo):
            o[t] = xc[t] + om * o[t]


AXIS_WIDTH = 2  # `axis_layout`: slots per node along one axis (a grid cell has two faces)


def axis_layout(indptr, indices, weight, axis, naxes: int) -> list[tuple]:
    """Per axis a < naxes, the links with axis == a (in CSR order) in the fixed layout of
    width AXIS_WIDTH: (idx, w, spill, rest_ptr, rest_idx, rest_w), the arguments
    `axis_smooth` takes after x — `layout` and `weights` of
    `deepcd.kernels.aggregate.axis_csr`'s per-axis CSRs, in two passes over the links
    without building those CSRs."""
    n = len(indptr) - 1
    if n >= 2**32:
        raise ValueError(f"the layout indexes nodes as uint32: {n} nodes are too many")
    counts = _axis_counts(indptr, axis, naxes)
    node_ptr = np.zeros((naxes, n + 1), dtype=np.int64)  # per node: where its spill starts
    np.cumsum(np.maximum(counts - AXIS_WIDTH, 0), axis=1, out=node_ptr[:, 1:])
    idx = np.empty((naxes, AXIS_WIDTH, n), dtype=np.uint32)
    w = np.empty((naxes, AXIS_WIDTH, n), dtype=weight.dtype)
    most = int(node_ptr[:, -1].max()) if n else 0
    rest_idx = np.empty((naxes, most), dtype=np.uint32)
    rest_w = np.empty((naxes, most), dtype=weight.dtype)
    _fill_axis_layout(indptr, indices, weight, axis, node_ptr, idx, w, rest_idx, rest_w)
    out = []
    for a in range(naxes):
        total = node_ptr[a, -1]
        spill = np.flatnonzero(counts[a] > AXIS_WIDTH).astype(np.int64)
        rest_ptr = np.append(node_ptr[a, spill], total)
        out.append((idx[a], w[a], spill, rest_ptr, rest_idx[a, :total], rest_w[a, :total]))
    return out


@nb.njit(parallel=True, cache=True)
def _axis_counts(indptr, axis, naxes):
    """(naxes, n) the links of each node along each axis."""
    n = indptr.shape[0] - 1
    counts = np.zeros((naxes, n), dtype=np.int64)
    for i in nb.prange(n):
        for p in range(indptr[i], indptr[i + 1]):
            counts[axis[p], i] += 1
    return counts


@nb.njit(parallel=True, cache=True)
def _fill_axis_layout(indptr, indices, weight, axis, node_ptr, idx, w, rest_idx, rest_w):
    """`axis_layout`'s slots: a node's first AXIS_WIDTH links along each axis, the rest
    spilled (node_ptr: per axis and node, where its spilled links start); unused slots hold
    the node itself with weight 0."""
    naxes, width, n = idx.shape
    for task in nb.prange((n + CHUNK - 1) // CHUNK):
        seen = np.zeros(naxes, dtype=np.int64)
        lo = np.int64(task) * CHUNK
        for i in range(lo, min(n, lo + CHUNK)):
            seen[:] = 0
            for p in range(indptr[i], indptr[i + 1]):
                a = axis[p]
                k = seen[a]
                if k < width:
                    idx[a, k, i] = indices[p]
                    w[a, k, i] = weight[p]
                else:
                    q = node_ptr[a, i] + k - width
                    rest_idx[a, q] = indices[p]
                    rest_w[a, q] = weight[p]
                seen[a] = k + 1
            for a in range(naxes):
                for k in range(seen[a], width):
                    idx[a, k, i] = i
                    w[a, k, i] = 0.0
