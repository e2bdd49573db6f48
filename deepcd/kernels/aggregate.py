"""Connectivity-aware aggregation on a cell grid: the graph levels of the V-cycle network.

A *graph level* is a symmetric weighted stencil on nodes that sit in cells of a (coarsened)
grid: node i has a diagonal d_i > 0, a cell coords[i] and links (i, j, w_ij > 0, axis_ij) to
nodes in face-adjacent cells, stored both ways as one CSR (indptr, indices, weight, axis); the
operator is (A x)_i = d_i x_i − Σ_j w_ij x_j. Level 0 comes from the flags' stencil (a node
per cell with a positive diagonal); level l+1 has one node per *connected component* of the
level-l nodes inside each 2^m block of cells (m halved axes), joined by links inside the
block. So the two sides of a wall, or two droplets in one block, never share a coarse node.
The coarse operator is the exact Galerkin product P₀ᵀ A P₀ of the piecewise-constant
prolongation P₀ (node → its component), times `scale`:

    coarse d_I    = Σ_{i∈I} d_i − Σ_{i,j∈I} w_ij        (links inside I counted both ways)
    coarse w_IJ   = Σ_{i∈I, j∈J} w_ij                    (axis: that of the fine links)

so SPD-ness (or semi-definiteness with closed regions) carries over. A component whose
coarse diagonal vanishes (a whole closed region inside one block: its constant is in A's null
space) gets no coarse node. Grids are 3D arrays; 2D grids use a (1, nx, ny) view.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import numba as nb
import numpy as np

from deepcd.kernels.ell import _in_dtype


def grid_graph(diag, lx, ly, lz):
    """Level 0 from a stencil on the grid: diag (nx, ny, nz), face weights lx (nx-1, ny, nz),
    ly (nx, ny-1, nz), lz (nx, ny, nz-1). Nodes are the cells with diag > 0, in C order.

    Returns node (nx, ny, nz) int64 (node id or -1), coords (n, 3) int32, d (n,) float64 and
    the CSR links indptr (n+1,) int64, indices int32, weight float64, axis int8.
    """
    per_row = _active_per_row(diag)
    offset = np.zeros(len(per_row) + 1, dtype=np.int64)
    np.cumsum(per_row, out=offset[1:])
    node = np.empty(diag.shape, dtype=np.int64)
    coords = np.empty((offset[-1], 3), dtype=np.int32)
    d = np.empty(offset[-1])
    _number_cells(diag, offset, node, coords, d)
    n = len(d)
    counts = np.zeros(n + 1, dtype=np.int64)
    none_i, none_w, none_a = np.empty(0, np.int32), np.empty(0), np.empty(0, np.int8)
    _grid_links(node, lx, ly, lz, counts[1:], none_i, none_w, none_a, True)
    indptr = np.cumsum(counts)
    indices = np.empty(indptr[-1], dtype=np.int32)
    weight = np.empty(indptr[-1])
    axis = np.empty(indptr[-1], dtype=np.int8)
    _grid_links(node, lx, ly, lz, indptr, indices, weight, axis, False)
    return node, coords, d, indptr, indices, weight, axis


@nb.njit(parallel=True, cache=True)
def _active_per_row(diag):
    """The number of cells with diag > 0 in each row diag[i, j] (rows in C order)."""
    nx, ny, nz = diag.shape
    count = np.zeros(nx * ny, dtype=np.int64)
    for ij in nb.prange(nx * ny):
        row = diag[ij // ny, ij % ny]
        c = 0
        for k in range(nz):
            if row[k] > 0:
                c += 1
        count[ij] = c
    return count


@nb.njit(parallel=True, cache=True)
def _number_cells(diag, offset, node, coords, d):
    """Number the cells with diag > 0 in C order (row (i, j) from offset[i·ny + j]): node
    (id or -1), their coords and diagonal."""
    nx, ny, nz = diag.shape
    for ij in nb.prange(nx * ny):
        i, j = ij // ny, ij % ny
        a = offset[ij]
        for k in range(nz):
            v = diag[i, j, k]
            if v > 0:
                node[i, j, k] = a
                coords[a, 0], coords[a, 1], coords[a, 2] = i, j, k
                d[a] = v
                a += 1
            else:
                node[i, j, k] = -1


@nb.njit(parallel=True, cache=True)
def _grid_links(node, lx, ly, lz, indptr, indices, weight, axis, count_only):
    """Each node's links to its FLUID neighbours: counted into indptr[node] (count_only),
    else written from indptr[node] on. Rows (i, j) in parallel."""
    nx, ny, nz = node.shape
    for ij in nb.prange(nx * ny):
        i, j = ij // ny, ij % ny
        for k in range(nz):
            a = node[i, j, k]
            if a < 0:
                continue
            p = 0 if count_only else indptr[a]
            if i > 0 and lx[i - 1, j, k] > 0.0 and node[i - 1, j, k] >= 0:
                if not count_only:
                    indices[p], weight[p], axis[p] = node[i - 1, j, k], lx[i - 1, j, k], 0
                p += 1
            if i < nx - 1 and lx[i, j, k] > 0.0 and node[i + 1, j, k] >= 0:
                if not count_only:
                    indices[p], weight[p], axis[p] = node[i + 1, j, k], lx[i, j, k], 0
                p += 1
            if j > 0 and ly[i, j - 1, k] > 0.0 and node[i, j - 1, k] >= 0:
                if not count_only:
                    indices[p], weight[p], axis[p] = node[i, j - 1, k], ly[i, j - 1, k], 1
                p += 1
            if j < ny - 1 and ly[i, j, k] > 0.0 and node[i, j + 1, k] >= 0:
                if not count_only:
                    indices[p], weight[p], axis[p] = node[i, j + 1, k], ly[i, j, k], 1
                p += 1
            if k > 0 and lz[i, j, k - 1] > 0.0 and node[i, j, k - 1] >= 0:
                if not count_only:
                    indices[p], weight[p], axis[p] = node[i, j, k - 1], lz[i, j, k - 1], 2
                p += 1
            if k < nz - 1 and lz[i, j, k] > 0.0 and node[i, j, k + 1] >= 0:
                if not count_only:
                    indices[p], weight[p], axis[p] = node[i, j, k + 1], lz[i, j, k], 2
                p += 1
            if count_only:
                indptr[a] = p


@nb.njit(cache=True)
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return root


_CHUNK = 4096  # coarse nodes per parallel task when building coarse links


@nb.njit(parallel=True, cache=True)
def _largest_links(indptr, weight):
    """w_max,i: each node's largest link weight (0 without links)."""
    n = indptr.shape[0] - 1
    wmax = np.zeros(n)
    for i in nb.prange(n):
        top = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            top = max(top, weight[p])
        wmax[i] = top
    return wmax


@nb.njit(parallel=True, cache=True)
def _blocks(coords, halved, cy, cz):
    """The coarse cell (block, C order on the coarse grid) each node's cell lies in."""
    n = coords.shape[0]
    block = np.empty(n, dtype=np.int64)
    for i in nb.prange(n):
        b0 = coords[i, 0] // 2 if halved[0] else coords[i, 0]
        b1 = coords[i, 1] // 2 if halved[1] else coords[i, 1]
        b2 = coords[i, 2] // 2 if halved[2] else coords[i, 2]
        block[i] = (b0 * cy + b1) * cz + b2
    return block


@nb.njit(cache=True)
def _counting_sort(key, nkeys):
    """(start (nkeys+1,), order (n,)): the indices i grouped by key[i] ≥ 0, ascending within a
    key (a stable counting sort); negative keys are left out."""
    start = np.zeros(nkeys + 1, dtype=np.int64)
    for i in range(key.shape[0]):
        if key[i] >= 0:
            start[key[i] + 1] += 1
    for b in range(nkeys):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    order = np.empty(start[nkeys], dtype=np.int64)
    for i in range(key.shape[0]):
        k = key[i]
        if k >= 0:
            order[fill[k]] = i
            fill[k] += 1
    return start, order


@nb.njit(cache=True)
def _union(parent, i, j):
    """Join the components of i and j under the smaller root."""
    ri, rj = _find(parent, i), _find(parent, j)
    if ri < rj:
        parent[rj] = ri
    elif rj < ri:
        parent[ri] = rj


@nb.njit(inline="always")
def _strong(p, i, j, weight, wmax, strength):
    return weight[p] >= strength * max(wmax[i], wmax[j])


@nb.njit(parallel=True, cache=True)
def _components_in_blocks(parent, start, order, block, indptr, indices, weight, wmax, strength):
    """Union-find over the strong links inside each block, blocks in parallel (a block's
    nodes only ever point at nodes of the same block); leaves parent[i] = the smallest node
    of i's component."""
    for b in nb.prange(start.shape[0] - 1):
        for t in range(start[b], start[b + 1]):
            i = order[t]
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                if j > i and block[j] == block[i] and _strong(p, i, j, weight, wmax, strength):
                    _union(parent, i, j)
        for t in range(start[b], start[b + 1]):
            i = order[t]
            parent[i] = _find(parent, i)


@nb.njit(parallel=True, cache=True)
def _merge_small(parent, start, order, indptr, indices, weight, wmax, strength, merge_below):
    """A component smaller than merge_below (a corridor's corner cut off by the block grid)
    joins the component its strongest strong link leads to, across blocks. parent: the
    compressed in-block components (`_components_in_blocks`). The search runs per block in
    parallel, in ascending node order as a serial pass would; the joins run serially."""
    n = parent.shape[0]
    size = np.zeros(n, dtype=np.int64)
    best_w = np.zeros(n)
    best_j = np.full(n, -1, dtype=np.int64)
    for b in nb.prange(start.shape[0] - 1):
        for t in range(start[b], start[b + 1]):
            size[parent[order[t]]] += 1
        for t in range(start[b], start[b + 1]):
            i = order[t]
            ri = parent[i]
            if size[ri] >= merge_below:
                continue
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                if (
                    _strong(p, i, j, weight, wmax, strength)
                    and parent[j] != ri
                    and weight[p] > best_w[ri]
                ):
                    best_w[ri], best_j[ri] = weight[p], j
    for r in range(n):
        if best_j[r] >= 0 and parent[r] == r:
            _union(parent, r, best_j[r])


@nb.njit(cache=True)
def _match_pairs(parent, indptr, indices, weight, wmax, strength):
    """Greedy matching on the graph: each node in turn takes its most strongly linked
    untaken neighbour (at most two nodes per aggregate, both linked)."""
    n = parent.shape[0]
    taken = np.zeros(n, dtype=np.bool_)
    for i in range(n):  # nodes before i are all taken: a partner j is always > i
        if taken[i]:
            continue
        taken[i] = True
        best, wbest = -1, 0.0
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            if _strong(p, i, j, weight, wmax, strength) and not taken[j] and weight[p] > wbest:
                best, wbest = j, weight[p]
        if best >= 0:
            taken[best] = True
            parent[best] = i


@nb.njit(cache=True)
def _root(parent, i):
    while parent[i] != i:
        i = parent[i]
    return i


@nb.njit(parallel=True, cache=True)
def _roots(parent):
    """Each node's root, read-only (no path compression: safe in parallel)."""
    root = np.empty_like(parent)
    for i in nb.prange(parent.shape[0]):
        root[i] = _root(parent, np.int64(i))  # a prange index may be unsigned
    return root


@nb.njit(cache=True)
def _number_components(order, root):
    """agg (n,): components numbered in the order their first node appears in `order`; and
    their count."""
    n = order.shape[0]
    comp = np.full(n, -1, dtype=np.int64)  # component id by root
    agg = np.empty(n, dtype=np.int64)
    m = 0
    for t in range(n):
        i = order[t]
        r = root[i]
        if comp[r] < 0:
            comp[r] = m
            m += 1
        agg[i] = comp[r]
    return agg, m


@nb.njit(cache=True)
def _members_in_order(agg, order, m):
    """(mstart (m+1,), members (n,)): each component's nodes, in the order of `order`."""
    mstart = np.zeros(m + 1, dtype=np.int64)
    for i in range(agg.shape[0]):
        mstart[agg[i] + 1] += 1
    for c in range(m):
        mstart[c + 1] += mstart[c]
    fill = mstart[:-1].copy()
    members = np.empty(agg.shape[0], dtype=np.int64)
    for t in range(order.shape[0]):
        c = agg[order[t]]
        members[fill[c]] = order[t]
        fill[c] += 1
    return mstart, members


@nb.njit(inline="always")
def _note_neighbour(seen, cnt, cj):
    """Add component cj to the first cnt entries of seen unless it is there; the new count."""
    for s in range(cnt):
        if seen[s] == cj:
            return cnt
    seen[cnt] = cj
    return cnt + 1


@nb.njit(inline="always")
def _add_coarse_link(cindices, cweight, along, q0, q, cj, w, a, scale):
    """Add fine weight w along axis a to coarse node cj's link in the row cindices[q0:q]
    (appended when new, `along` zeroed for it); the row's new end."""
    slot = q
    for s in range(q0, q):
        if cindices[s] == cj:
            slot = s
            break
    if slot == q:
        cindices[q] = cj
        along[q - q0, 0] = along[q - q0, 1] = along[q - q0, 2] = 0.0
        q += 1
    cweight[slot] += w * scale
    along[slot - q0, a] += w
    return q


@nb.njit(inline="always")
def _link_axes(along, q0, q, caxis):
    """caxis[q0:q]: the axis most of each coarse link's fine weight runs along (ties: the
    lowest)."""
    for s in range(q0, q):
        a0, a1, a2 = along[s - q0, 0], along[s - q0, 1], along[s - q0, 2]
        top = (1.0 - 1e-9) * max(a0, a1, a2)  # rounding may not break a tie
        caxis[s] = 0 if a0 >= top else (1 if a1 >= top else 2)


@nb.njit(parallel=True, cache=True)
def _component_sums(mstart, members, agg, d, indptr, indices, weight, chunk):
    """Per component: the coarse diagonal before scaling (Σ d − the links inside it, both
    ways) and the number of distinct components it links to; and the most fine links any
    component's members have (a scratch size). Components in chunks of `chunk`, each chunk
    with its own scratch list of neighbours."""
    m = mstart.shape[0] - 1
    cd = np.zeros(m)
    counts = np.zeros(m, dtype=np.int64)
    nchunks = (m + chunk - 1) // chunk
    most = np.zeros(max(nchunks, 1), dtype=np.int64)
    for kk in nb.prange(nchunks):
        k = np.int64(kk)  # a prange index may be unsigned
        lo, hi = k * chunk, min(m, (k + 1) * chunk)
        top = 0
        for c in range(lo, hi):
            links = 0
            for t in range(mstart[c], mstart[c + 1]):
                links += indptr[members[t] + 1] - indptr[members[t]]
            top = max(top, links)
        most[k] = top
        seen = np.empty(top, dtype=np.int64)
        for c in range(lo, hi):
            acc, cnt = 0.0, 0
            for t in range(mstart[c], mstart[c + 1]):
                i = members[t]
                acc += d[i]
                for p in range(indptr[i], indptr[i + 1]):
                    cj = agg[indices[p]]
                    if cj == c:
                        acc -= weight[p]
                    else:
                        cnt = _note_neighbour(seen, cnt, cj)
            cd[c], counts[c] = acc, cnt
    return cd, counts, most.max()


@nb.njit(cache=True)
def _drop_unfilled(cindptr, filled, cindices, cweight, caxis):
    """The coarse CSR without the slots its rows did not fill. A row's length is counted
    (`_component_sums`) before `keep_components` drops the components that hold no coarse
    unknown; a component linked to one only by weights under 1e-9 of the largest diagonal
    (a near-closed region, a 1e-12 coefficient jump) is dropped yet was counted, and its
    slot would keep an unset index. Returns (cindices, cweight, caxis); cindptr in place."""
    mc = filled.shape[0]
    if cindptr[mc] == filled.sum():
        return cindices, cweight, caxis
    q = 0
    for c in range(mc):
        lo = cindptr[c]
        for s in range(filled[c]):
            cindices[q], cweight[q], caxis[q] = cindices[lo + s], cweight[lo + s], caxis[lo + s]
            q += 1
        cindptr[c] = q - filled[c]
    cindptr[mc] = q
    return cindices[:q].copy(), cweight[:q].copy(), caxis[:q].copy()


@nb.njit(parallel=True, cache=True)
def _coarse_links(mstart, members, agg, indptr, indices, weight, axis, cindptr, scale, most, chunk):
    """The coarse CSR: each coarse node's neighbours in order of first appearance, the summed
    fine weights × scale, and the axis most of that fine weight runs along (ties: the
    lowest; a function of the pair's fine links, so the same both ways and the transfers stay
    symmetric). Chunked as `_component_sums`."""
    mc = mstart.shape[0] - 1
    nnz = cindptr[mc]
    cindices = np.empty(nnz, dtype=np.int32)
    cweight = np.zeros(nnz)
    caxis = np.empty(nnz, dtype=np.int8)
    filled = np.empty(mc, dtype=np.int64)
    for kk in nb.prange((mc + chunk - 1) // chunk):
        k = np.int64(kk)
        along = np.empty((max(most, 1), 3))  # the fine weight along each axis behind a link
        for c in range(k * chunk, min(mc, (k + 1) * chunk)):
            q0 = cindptr[c]
            q = q0
            for t in range(mstart[c], mstart[c + 1]):
                i = members[t]
                for p in range(indptr[i], indptr[i + 1]):
                    cj = agg[indices[p]]
                    if cj >= 0 and cj != c:
                        q = _add_coarse_link(
                            cindices, cweight, along, q0, q, cj, weight[p], axis[p], scale
                        )
            _link_axes(along, q0, q, caxis)
            filled[c] = q - q0
    return _drop_unfilled(cindptr, filled, cindices, cweight, caxis)


@nb.njit(cache=True)
def aggregate(
    coords,
    d,
    indptr,
    indices,
    weight,
    axis,
    halved,
    coarse_shape,
    scale,
    pairwise,
    strength,
    merge_below=0,
    wmax_in=None,
):
    """One coarsening: components of the nodes inside each block, and their Galerkin level.

    coords (n, 3) int32 cells on the fine grid; halved (3,) bool; coarse_shape (3,) int64.
    strength: only *strong* links join a component, w_ij ≥ strength·max(w_max,i, w_max,j)
    (w_max,i: node i's largest link), so a coefficient jump (water beside air, 1000× apart)
    splits a block's cells into separate coarse unknowns as a wall does; 0 joins every link.
    pairwise: once the grid is one cell (a maze's coarse levels can still hold thousands of
    unknowns), aggregate each node with its most strongly linked unaggregated neighbour
    instead (greedy matching on the graph: at most two nodes per aggregate, both linked).
    wmax_in: each node's largest link weight when the CSR does not hold all its links (a
    rank's block in `deepcd.petsc`, whose links to other ranks are not in it); None: from the
    CSR.
    Returns agg (n,) int64 (coarse node of each node, -1 when its component has no coarse
    unknown), and the coarse level's coords, d, indptr, indices, weight, axis as `grid_graph`.
    Blocks are processed in parallel; the result does not depend on the thread count.
    """
    n = coords.shape[0]
    cx, cy, cz = coarse_shape[0], coarse_shape[1], coarse_shape[2]
    wmax = _largest_links(indptr, weight) if wmax_in is None else wmax_in
    parent = np.arange(n)
    nblocks = cx * cy * cz
    if pairwise:
        block = np.zeros(n, dtype=np.int64)
        _match_pairs(parent, indptr, indices, weight, wmax, strength)
        start, order = _counting_sort(block, nblocks)
    else:
        block = _blocks(coords, halved, cy, cz)
        start, order = _counting_sort(block, nblocks)
        _components_in_blocks(parent, start, order, block, indptr, indices, weight, wmax, strength)
        if merge_below > 1:
            _merge_small(parent, start, order, indptr, indices, weight, wmax, strength, merge_below)
    agg, m = _number_components(order, _roots(parent))  # in block order
    mstart, members = _members_in_order(agg, order, m)
    cd, counts, most = _component_sums(mstart, members, agg, d, indptr, indices, weight, _CHUNK)
    cblock = block[members[mstart[:-1]]]  # each component's block: its first member's
    kstart, kmembers, cindptr, ccoords, cdiag = keep_components(
        agg, mstart, members, counts, cblock, cd, scale, cy, cz
    )
    cindices, cweight, caxis = _coarse_links(
        kstart, kmembers, agg, indptr, indices, weight, axis, cindptr, scale, most, _CHUNK
    )
    return agg, ccoords, cdiag, cindptr, cindices, cweight, caxis


@nb.njit(cache=True)
def keep_components(agg, mstart, members, counts, cblock, cd, scale, cy, cz):
    """Drop the components with no coarse unknown (closed regions inside one block, whose
    coarse diagonal is under 1e-9 of the largest; a neighbour that counted a tiny link to
    one loses that slot in `_drop_unfilled`): renumbers agg in place (-1:
    dropped) and returns the kept components' (kstart, kmembers) (their members, CSR; mstart
    and members themselves when all are kept), cindptr (from their neighbour counts), cells
    (cblock (m,): each component's block, C order on the coarse grid; as (mc, 3) int32) and
    scaled diagonals."""
    m = cd.shape[0]
    dmax = 0.0
    for c in range(m):
        dmax = max(dmax, cd[c])
    keep = np.full(m, -1, dtype=np.int64)
    kstart = np.zeros(m + 1, dtype=np.int64)
    cindptr = np.zeros(m + 1, dtype=np.int64)
    mc = 0
    for c in range(m):
        if cd[c] > 1e-9 * dmax:
            keep[c] = mc
            kstart[mc + 1] = kstart[mc] + mstart[c + 1] - mstart[c]
            cindptr[mc + 1] = cindptr[mc] + counts[c]
            mc += 1
    kstart, cindptr = kstart[: mc + 1], cindptr[: mc + 1]
    ccoords = np.empty((mc, 3), dtype=np.int32)
    cdiag = np.empty(mc)
    if mc == m:  # nothing dropped: agg, the members and their starts stand as they are
        _fill_cells(keep, cblock, cd, scale, cy, cz, ccoords, cdiag)
        return mstart, members, cindptr, ccoords, cdiag
    kmembers = np.empty(kstart[mc], dtype=members.dtype)
    _fill_kept(agg, keep, mstart, members, kstart, kmembers)
    _fill_cells(keep, cblock, cd, scale, cy, cz, ccoords, cdiag)
    return kstart, kmembers, cindptr, ccoords, cdiag


@nb.njit(parallel=True, cache=True)
def _fill_kept(agg, keep, mstart, members, kstart, kmembers):
    """Renumber agg to the kept components (-1: dropped) and gather their members."""
    for i in nb.prange(agg.shape[0]):
        agg[i] = keep[agg[i]]
    for c in nb.prange(keep.shape[0]):
        k = keep[c]
        if k >= 0:
            for t in range(mstart[c], mstart[c + 1]):
                kmembers[kstart[k] + t - mstart[c]] = members[t]


@nb.njit(parallel=True, cache=True)
def _fill_cells(keep, cblock, cd, scale, cy, cz, ccoords, cdiag):
    """The kept components' coarse cells (their block) and scaled diagonals."""
    for c in nb.prange(keep.shape[0]):
        k = keep[c]
        if k >= 0:
            b = cblock[c]
            ccoords[k, 2] = b % cz
            ccoords[k, 1] = (b // cz) % cy
            ccoords[k, 0] = b // (cy * cz)
            cdiag[k] = cd[c] * scale


# -- operations on a graph level (CPU inference; the torch forms are in deepcd.nn.multigrid) ---


@nb.njit(parallel=True, cache=True)
def graph_matvec(x, d, indptr, indices, weight, out):
    """out = A x on a graph level (float32 or float64 arrays of one dtype)."""
    for i in nb.prange(x.shape[0]):
        acc = d[i] * x[i]
        for p in range(indptr[i], indptr[i + 1]):
            acc -= weight[p] * x[indices[p]]
        out[i] = acc


@nb.njit(parallel=True, cache=True)
def graph_chebyshev_step(u, u_prev, hat, s, d, indptr, indices, weight, c, w, u_new, q):
    """`deepcd.kernels.smoother.chebyshev_step` on a graph level: â = s·A(s·u),
    u' = 2c·hat + 2(u − c·â) − u_prev, q += w·u'."""
    two_c = 2.0 * c
    for i in nb.prange(u.shape[0]):
        si = s[i]
        acc = d[i] * si * u[i]
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            acc -= weight[p] * s[j] * u[j]
        value = two_c * hat[i] + 2.0 * (u[i] - c * si * acc) - u_prev[i]
        u_new[i] = value
        q[i] += w * value


@nb.njit(parallel=True, cache=True)
def axis_smooth(x, indptr, indices, nweight, omega, out):
    """out = x + ω Σ_j ŵ_ij (x_j − x_i) over the links of one axis (a CSR of that axis's
    links: `axis_csr`): one symmetric per-axis smoothing of the prolongation (ŵ: the level's
    normalized link weights, symmetric)."""
    om = _in_dtype(x, omega, 0.0)[0]
    for i in nb.prange(x.shape[0]):
        xi = x[i]
        acc = xi - xi  # a zero in x's dtype
        for p in range(indptr[i], indptr[i + 1]):
            acc += nweight[p] * (x[indices[p]] - xi)
        out[i] = xi + om * acc


def axis_csr(indptr, indices, weight, axis, naxes: int):
    """Per axis a < naxes, the (indptr, indices (uint32: see `deepcd.kernels.ell`), weight)
    of the links with axis == a, in the order of the full CSR."""
    n = len(indptr) - 1
    rows = np.repeat(np.arange(n), np.diff(indptr))
    out = []
    for a in range(naxes):
        on = axis == a
        ip = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows[on], minlength=n), out=ip[1:])
        out.append((ip, indices[on].astype(np.uint32), np.ascontiguousarray(weight[on])))
    return out


@nb.njit(parallel=True, cache=True)
def restrict_sum(x, mstart, members, out):
    """out_I = Σ_{i ∈ I} x_i (P₀ᵀ x) with the members of each coarse node in CSR form."""
    for c in nb.prange(out.shape[0]):
        acc = 0.0
        for t in range(mstart[c], mstart[c + 1]):
            acc += x[members[t]]
        out[c] = acc


@nb.njit(parallel=True, cache=True)
def prolong_copy(xc, agg, out):
    """out_i = xc[agg_i] (P₀ xc), 0 where agg_i = -1 (agg int32 in CPU inference: half the
    bytes of int64)."""
    for i in nb.prange(agg.shape[0]):
        a = agg[i]
        out[i] = xc[a] if a >= 0 else 0.0


def members_of(agg: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(mstart (m+1,) int64, members uint32) listing the fine nodes of each coarse node
    (agg >= 0), in increasing order (a counting sort). Unsigned: `restrict_sum` loads
    through them without numba's negative-index test."""
    agg = np.ascontiguousarray(agg, dtype=np.int64)
    if len(agg) >= 2**32:
        raise ValueError(f"members are uint32: {len(agg)} fine nodes are too many")
    mstart = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(agg[agg >= 0], minlength=m), out=mstart[1:])
    members = np.empty(mstart[m], dtype=np.uint32)
    _fill_members(agg, mstart, members)
    return mstart, members


@nb.njit(cache=True)
def _fill_members(agg, mstart, members):
    fill = mstart[:-1].copy()
    for i in range(agg.shape[0]):
        c = agg[i]
        if c >= 0:
            members[fill[c]] = i
            fill[c] += 1


# -- level 0 on the grid (CPU inference): the same transfers without a node vector ----------


@nb.njit(parallel=True, cache=True)
def grid_axis_smooth(x, nlink, deg, a, omega, out):
    """out = x − ω (deg·x − Σ_faces ŵ x_nbr) along grid axis a of 3D arrays x, deg
    (nx, ny, nz) and the normalized face weights nlink (that axis one shorter). Neighbours
    across x/y come as whole rows along z (zeros past the edge): no branch per cell."""
    nx, ny, nz = x.shape
    zero = np.zeros(nz, dtype=x.dtype)
    zw = np.zeros(nz, dtype=nlink.dtype)
    om = _in_dtype(x, omega, 0.0)[0]
    for ij in nb.prange(nx * ny):
        i, j = ij // ny, ij % ny
        xc, o, dg = x[i, j], out[i, j], deg[i, j]
        if a == 2:
            wz = nlink[i, j]
            for k in range(nz):
                acc = dg[k] * xc[k]
                if k > 0:
                    acc -= wz[k - 1] * xc[k - 1]
                if k < nz - 1:
                    acc -= wz[k] * xc[k + 1]
                o[k] = xc[k] - om * acc
            continue
        if a == 0:
            xm = x[i - 1, j] if i > 0 else zero
            xp = x[i + 1, j] if i < nx - 1 else zero
            wm = nlink[i - 1, j] if i > 0 else zw
            wp = nlink[i, j] if i < nx - 1 else zw
        else:
            xm = x[i, j - 1] if j > 0 else zero
            xp = x[i, j + 1] if j < ny - 1 else zero
            wm = nlink[i, j - 1] if j > 0 else zw
            wp = nlink[i, j] if j < ny - 1 else zw
        for k in range(nz):
            o[k] = xc[k] - om * (dg[k] * xc[k] - wm[k] * xm[k] - wp[k] * xp[k])


@nb.njit(cache=True)
def grid_stencil(coords, indptr, indices, weight, axis, lead, d, diag, fx, fy, fz, cell, extra):
    """A graph level as a stencil on its block grid (`deepcd.nn.multigrid.grid_form`): node i
    at block coords[i] (3D numbering) gives diag[coords[i]] = d[i] and cell[i] its flat index;
    each link that is a face along its grid axis axis[p] + lead, the face weight at its lower
    cell; every other link is marked in extra (nnz,) bool. Returns how many were marked, or
    −1 (the arrays then partly filled) when two nodes share a block. diag and the faces
    fx (nx-1, ny, nz), fy, fz come zeroed, extra False."""
    ny, nz = diag.shape[1], diag.shape[2]
    for i in range(coords.shape[0]):
        x, y, z = coords[i, 0], coords[i, 1], coords[i, 2]
        if diag[x, y, z] != 0.0:
            return -1
        diag[x, y, z] = d[i]
        cell[i] = (x * ny + y) * nz + z
    count = 0
    for i in range(coords.shape[0]):
        x, y, z = coords[i, 0], coords[i, 1], coords[i, 2]
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            a = axis[p] + lead
            dx, dy, dz = coords[j, 0] - x, coords[j, 1] - y, coords[j, 2] - z
            step = (dx if a == 0 else 0) + (dy if a == 1 else 0) + (dz if a == 2 else 0)
            if abs(step) != 1 or abs(dx) + abs(dy) + abs(dz) != 1:
                extra[p] = True
                count += 1
            elif step == 1:
                if a == 0:
                    fx[x, y, z] = weight[p]
                elif a == 1:
                    fy[x, y, z] = weight[p]
                else:
                    fz[x, y, z] = weight[p]
    return count


@nb.njit(cache=True)
def grid_faces(coords, indptr, indices, values, axis, lead, extra, fx, fy, fz):
    """`grid_stencil`'s faces for other per-link values (a level's normalized ŵ): values[p]
    at the lower cell of each link not marked in extra. fx, fy, fz come zeroed."""
    for i in range(coords.shape[0]):
        x, y, z = coords[i, 0], coords[i, 1], coords[i, 2]
        for p in range(indptr[i], indptr[i + 1]):
            if extra[p]:
                continue
            j = indices[p]
            a = axis[p] + lead
            if a == 0 and coords[j, 0] == x + 1:
                fx[x, y, z] = values[p]
            elif a == 1 and coords[j, 1] == y + 1:
                fy[x, y, z] = values[p]
            elif a == 2 and coords[j, 2] == z + 1:
                fz[x, y, z] = values[p]


# Small levels run serial copies: a parallel launch costs more than their work, and far more
# when another job holds the cores (the thread team then waits for a descheduled thread).
# With idle threads that spin a little (`deepcd.threads`, DEEPCD_WAIT=spin) the parallel
# Clenshaw step and axis smoothing win from ~16k unknowns, two tasks of `ell.CHUNK`
# (`benchmarks/serial-below`: 24k 0.55-0.59x the serial time); with sleeping threads
# (OMP_WAIT_POLICY=PASSIVE) a launch cost ~80 µs and the bound was 131,072.
SERIAL_BELOW = 1 << 14
_serial = {}


def small(kernel, n: int, below: int | None = None):
    """`kernel`, or its serial copy when the level has fewer than `below` unknowns (None:
    SERIAL_BELOW as it is at the call, which the benchmark runner's warm-up lowers to load the
    parallel kernels; grid kernels pass their own threshold,
    `deepcd.nn.fastpath.GRID_SERIAL_BELOW`, in cells)."""
    if n >= (SERIAL_BELOW if below is None else below):
        return kernel
    if kernel not in _serial:
        _serial[kernel] = nb.njit(cache=True)(serial_twin(kernel.py_func))
    return _serial[kernel]


@contextlib.contextmanager
def serial_if_small(n: int, below: int | None = None) -> Iterator[None]:
    """Run a block's numba kernels on one thread when it works on fewer than `below` unknowns:
    `small` for a kernel that calls other parallel kernels (`aggregate`), whose serial copy
    would need a serial copy of each (below None: SERIAL_BELOW at the call). numba's thread
    count is per calling thread; restored."""
    if n >= (SERIAL_BELOW if below is None else below):
        yield
        return
    before = nb.get_num_threads()
    nb.set_num_threads(1)
    try:
        yield
    finally:
        nb.set_num_threads(before)


def serial_twin(fn):
    """A copy of the Python function `fn` under its own name (`<qualname>_serial`).

    numba's on-disk cache files a function under its module, qualname and line, and keys
    each compiled version by signature and bytecode only — not by `parallel`. A serial
    `njit` of a parallel kernel's own function would share the kernel's cache entries, and
    whichever was compiled first would be loaded for both: serial copies then ran the
    parallel code (a thread-team launch, ~60–80 µs here, per call on a level of a few
    thousand unknowns) or the parallel kernel the serial code."""
    twin = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__, fn.__closure__
    )
    twin.__qualname__ = fn.__qualname__ + "_serial"
    twin.__module__, twin.__doc__ = fn.__module__, fn.__doc__
    return twin


# -- every halved axis's transfer smoothing in one pass over x-planes (level 0 on the grid) ------
#
# `grid_axis_smooth` is one pass over the grid per axis: a restriction or a prolongation makes
# three. Along y and z a step needs only its own x-plane, along x the planes beside it, so the
# three steps run plane by plane: restriction (x, then y, z) reads the input planes i − 1..i + 1
# and finishes plane i in two plane buffers; prolongation (z, y, then x) keeps the last three
# y-z-smoothed planes in a ring and finishes plane i − 1 when plane i is done. The input and
# the weights are read once, the output written once.


@nb.njit(inline="always")
def _smooth_in_plane(src, w, g, omega, along_z, dst):
    """dst = src − ω(g·src − Σ_faces w·src_nbr) along z (along_z) or y within one x-plane:
    src, g, dst (ny, nz); w (ny, nz − 1) or (ny − 1, nz). Rows are read by index, not as row
    views (a view's reference counting costs more than a 64-cell row); the loops along z
    have no branch (the row ends apart; rows past the plane's edge are zeros), so they
    vectorize."""
    ny, nz = src.shape
    zero = np.zeros((1, nz), dtype=src.dtype)
    zw = np.zeros((1, nz), dtype=w.dtype)
    for j in range(ny):
        if along_z:
            if nz == 1:
                dst[j, 0] = src[j, 0] - omega * g[j, 0] * src[j, 0]
                continue
            dst[j, 0] = src[j, 0] - omega * (g[j, 0] * src[j, 0] - w[j, 0] * src[j, 1])
            for k in range(1, nz - 1):
                dst[j, k] = src[j, k] - omega * (
                    g[j, k] * src[j, k] - w[j, k - 1] * src[j, k - 1] - w[j, k] * src[j, k + 1]
                )
            k = nz - 1
            dst[j, k] = src[j, k] - omega * (g[j, k] * src[j, k] - w[j, k - 1] * src[j, k - 1])
        else:
            sm, jsm, wm, jwm = (src, j - 1, w, j - 1) if j > 0 else (zero, 0, zw, 0)
            sp, jsp, wp, jwp = (src, j + 1, w, j) if j < ny - 1 else (zero, 0, zw, 0)
            for k in range(nz):
                dst[j, k] = src[j, k] - omega * (
                    g[j, k] * src[j, k] - wm[jwm, k] * sm[jsm, k] - wp[jwp, k] * sp[jsp, k]
                )


@nb.njit(inline="always")
def _smooth_across(xm, xc, xp, wm, wp, g, omega, dst):
    """dst = xc − ω(g·xc − wm·xm − wp·xp) for x-planes (ny, nz) (zero planes past the edge)."""
    ny, nz = xc.shape
    for j in range(ny):
        for k in range(nz):
            dst[j, k] = xc[j, k] - omega * (
                g[j, k] * xc[j, k] - wm[j, k] * xm[j, k] - wp[j, k] * xp[j, k]
            )


@nb.njit(parallel=True, cache=True)
def grid_transfer_smooth(x, w0, g0, w1, g1, w2, g2, om0, om1, om2, use, reverse, nchunks, out):
    """out = S_2 S_1 S_0 x (reverse False: S_0 applied first) or S_0 S_1 S_2 x (reverse) for
    the axes with use[a], S_a = I − ω_a L̂_a — `grid_axis_smooth` once per axis, in one pass.
    x, out (nx, ny, nz); per axis a the normalized faces w_a (axis a one shorter) and their
    sum per cell g_a (nx, ny, nz). nchunks x-chunks in parallel (at most nx)."""
    nx, ny, nz = x.shape
    zero = np.zeros((ny, nz), dtype=x.dtype)
    zw = np.zeros((ny, nz), dtype=w0.dtype)
    oms = np.empty(3, dtype=x.dtype)  # ω in the arrays' dtype: float32 stays float32
    oms[0], oms[1], oms[2] = om0, om1, om2
    o0, o1, o2 = oms[0], oms[1], oms[2]
    for c in nb.prange(nchunks):
        a, b = c * nx // nchunks, (c + 1) * nx // nchunks
        buf = np.empty((3, ny, nz), dtype=x.dtype)
        if not reverse:
            for i in range(a, b):
                state = 0  # the current plane: 0 x[i], 1 buf[0], 2 buf[1]
                if use[0]:
                    xm = x[i - 1] if i > 0 else zero
                    xp = x[i + 1] if i < nx - 1 else zero
                    wm = w0[i - 1] if i > 0 else zw
                    wp = w0[i] if i < nx - 1 else zw
                    _smooth_across(xm, x[i], xp, wm, wp, g0[i], o0, buf[0])
                    state = 1
                if use[1]:
                    src = x[i] if state == 0 else buf[0]
                    dst = out[i] if not use[2] else buf[1]
                    _smooth_in_plane(src, w1[i], g1[i], o1, False, dst)
                    state = 3 if not use[2] else 2
                if use[2]:
                    src = x[i] if state == 0 else (buf[0] if state == 1 else buf[1])
                    _smooth_in_plane(src, w2[i], g2[i], o2, True, out[i])
                    state = 3
                if state != 3:
                    out[i, :, :] = x[i] if state == 0 else buf[0]
        else:
            ring = np.empty((3, ny, nz), dtype=x.dtype)
            lo, hi = (max(a - 1, 0), min(b + 1, nx)) if use[0] else (a, b)
            for i in range(lo, hi):
                # u(i) = S_1 S_2 x[i] into the ring (or straight out when x is not halved)
                dst_u = ring[i % 3] if use[0] else out[i]
                if use[2] and use[1]:
                    _smooth_in_plane(x[i], w2[i], g2[i], o2, True, buf[0])
                    _smooth_in_plane(buf[0], w1[i], g1[i], o1, False, dst_u)
                elif use[2]:
                    _smooth_in_plane(x[i], w2[i], g2[i], o2, True, dst_u)
                elif use[1]:
                    _smooth_in_plane(x[i], w1[i], g1[i], o1, False, dst_u)
                else:
                    dst_u[:, :] = x[i]
                if use[0] and i - 1 >= a:
                    j = i - 1
                    um = ring[(j - 1) % 3] if j > 0 else zero
                    wm = w0[j - 1] if j > 0 else zw
                    _smooth_across(um, ring[j % 3], ring[i % 3], wm, w0[j], g0[j], o0, out[j])
            if use[0] and b == nx:  # the last plane has no plane after it
                j = nx - 1
                um = ring[(j - 1) % 3] if j > 0 else zero
                wm = w0[j - 1] if j > 0 else zw
                _smooth_across(um, ring[j % 3], zero, wm, zw, g0[j], o0, out[j])
