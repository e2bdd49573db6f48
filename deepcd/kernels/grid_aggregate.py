"""Level 1 straight from level 0's stencil on the grid, without level 0's link CSR.

`deepcd.kernels.aggregate.aggregate` reads a level's links from a CSR. For level 0 that CSR is
the grid stencil written out again — six links per cell, ~13 bytes each, written once and read
by the aggregation only (CPU inference runs level 0 on the grid): at 256³ building and reading
it was most of the hierarchy's setup. `grid_aggregate` computes the same level 1, bit for bit
(the same components, numbering, coarse links in the same order, the same sums), reading each
cell's links from the stencil arrays in the CSR's order (x−, x+, y−, y+, z−, z+).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from deepcd.kernels.aggregate import (
    _CHUNK,
    _active_per_row,
    _add_coarse_link,
    _counting_sort,
    _find,
    _link_axes,
    _members_in_order,
    _note_neighbour,
    _number_components,
    _roots,
    _union,
    keep_components,
)


@nb.njit(inline="always")
def _link(node, lx, ly, lz, x, y, z, q):
    """Link q (0..5: x−, x+, y−, y+, z−, z+) of cell (x, y, z): (node j, weight); j = −1
    where the face is closed or the neighbour holds no unknown. Its axis is q // 2."""
    nx, ny, nz = node.shape
    j, w = -1, 0.0
    if q == 0 and x > 0:
        j, w = node[x - 1, y, z], lx[x - 1, y, z]
    elif q == 1 and x < nx - 1:
        j, w = node[x + 1, y, z], lx[x, y, z]
    elif q == 2 and y > 0:
        j, w = node[x, y - 1, z], ly[x, y - 1, z]
    elif q == 3 and y < ny - 1:
        j, w = node[x, y + 1, z], ly[x, y, z]
    elif q == 4 and z > 0:
        j, w = node[x, y, z - 1], lz[x, y, z - 1]
    elif q == 5 and z < nz - 1:
        j, w = node[x, y, z + 1], lz[x, y, z]
    if w > 0.0 and j >= 0:
        return j, w
    return -1, 0.0


# A node's cell (x, y, z) packed in one int64, 21 bits per axis: the kernels below find a
# node's neighbours by its cell, and unpacking with shifts is ~1.4x faster over the whole
# aggregation at 128³ than dividing the flat index (64-bit integer division: tens of cycles).
_BITS = 21
_MASK = (1 << _BITS) - 1


@nb.njit(inline="always")
def _cell(cell, i, ny, nz):
    c = cell[i]
    return c >> (2 * _BITS), (c >> _BITS) & _MASK, c & _MASK


@nb.njit(inline="always")
def _flat_cell(index, i, ny, nz):
    c = index[i]
    return c // (ny * nz), (c // nz) % ny, c % nz


@nb.njit(parallel=True, cache=True)
def _number_grid(diag, offset, node, index, cell, d):
    """Number the cells with diag > 0 in C order (row (i, j) from offset[i·ny + j]): node
    (id or -1), each node's flat cell index, its packed cell (`_cell`) and diagonal."""
    nx, ny, nz = diag.shape
    for ij in nb.prange(nx * ny):
        i, j = ij // ny, ij % ny
        a = offset[ij]
        for k in range(nz):
            v = diag[i, j, k]
            if v > 0:
                node[i, j, k] = a
                index[a] = (i * ny + j) * nz + k
                cell[a] = (np.int64(i) << (2 * _BITS)) | (np.int64(j) << _BITS) | k
                d[a] = v
                a += 1
            else:
                node[i, j, k] = -1


@nb.njit(parallel=True, cache=True)
def _largest_and_blocks(node, cell, lx, ly, lz, halved, cy, cz):
    """Per node: its largest link weight (0 without links) and its coarse cell (block, C
    order on the coarse grid); and the number of links (both ways)."""
    n = cell.shape[0]
    ny, nz = node.shape[1], node.shape[2]
    wmax = np.zeros(n)
    block = np.empty(n, dtype=np.int64)
    links = 0
    for i in nb.prange(n):
        x, y, z = _cell(cell, i, ny, nz)
        top, cnt = 0.0, 0
        for q in range(6):
            j, w = _link(node, lx, ly, lz, x, y, z, q)
            if j >= 0:
                top = max(top, w)
                cnt += 1
        wmax[i] = top
        links += cnt
        b0 = x // 2 if halved[0] else x
        b1 = y // 2 if halved[1] else y
        b2 = z // 2 if halved[2] else z
        block[i] = (b0 * cy + b1) * cz + b2
    return wmax, block, links


@nb.njit(inline="always")
def _strong(w, wi, wj, strength):
    return w >= strength * max(wi, wj)


@nb.njit(parallel=True, cache=True)
def _components_in_blocks(parent, start, order, block, node, cell, lx, ly, lz, wmax, strength):
    """`aggregate._components_in_blocks` on the grid: a node's links to larger nodes are its
    x+, y+ and z+ links."""
    ny, nz = node.shape[1], node.shape[2]
    for b in nb.prange(start.shape[0] - 1):
        for t in range(start[b], start[b + 1]):
            i = order[t]
            x, y, z = _cell(cell, i, ny, nz)
            for q in range(1, 6, 2):
                j, w = _link(node, lx, ly, lz, x, y, z, q)
                if j >= 0 and block[j] == block[i] and _strong(w, wmax[i], wmax[j], strength):
                    _union(parent, i, j)
        for t in range(start[b], start[b + 1]):
            i = order[t]
            parent[i] = _find(parent, i)


@nb.njit(parallel=True, cache=True)
def _merge_small(parent, start, order, node, cell, lx, ly, lz, wmax, strength, merge_below):
    """`aggregate._merge_small` on the grid."""
    n = parent.shape[0]
    ny, nz = node.shape[1], node.shape[2]
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
            x, y, z = _cell(cell, i, ny, nz)
            for q in range(6):
                j, w = _link(node, lx, ly, lz, x, y, z, q)
                if (
                    j >= 0
                    and _strong(w, wmax[i], wmax[j], strength)
                    and parent[j] != ri
                    and w > best_w[ri]
                ):
                    best_w[ri], best_j[ri] = w, j
    for r in range(n):
        if best_j[r] >= 0 and parent[r] == r:
            _union(parent, r, best_j[r])


@nb.njit(parallel=True, cache=True)
def _component_sums(mstart, members, agg, d, node, cell, lx, ly, lz, chunk):
    """`aggregate._component_sums` on the grid; the scratch size returned is 6 links per
    member of the largest component (a bound on its distinct neighbours)."""
    m = mstart.shape[0] - 1
    ny, nz = node.shape[1], node.shape[2]
    cd = np.zeros(m)
    counts = np.zeros(m, dtype=np.int64)
    nchunks = (m + chunk - 1) // chunk
    most = np.zeros(max(nchunks, 1), dtype=np.int64)
    for kk in nb.prange(nchunks):
        k = np.int64(kk)  # a prange index may be unsigned
        lo, hi = k * chunk, min(m, (k + 1) * chunk)
        top = 0
        for c in range(lo, hi):
            top = max(top, 6 * (mstart[c + 1] - mstart[c]))
        most[k] = top
        seen = np.empty(top, dtype=np.int64)
        for c in range(lo, hi):
            acc, cnt = 0.0, 0
            for t in range(mstart[c], mstart[c + 1]):
                i = members[t]
                acc += d[i]
                x, y, z = _cell(cell, i, ny, nz)
                for q in range(6):
                    j, w = _link(node, lx, ly, lz, x, y, z, q)
                    if j < 0:
                        continue
                    cj = agg[j]
                    if cj == c:
                        acc -= w
                    else:
                        cnt = _note_neighbour(seen, cnt, cj)
            cd[c], counts[c] = acc, cnt
    return cd, counts, most.max()


@nb.njit(parallel=True, cache=True)
def _coarse_links(mstart, members, agg, node, cell, lx, ly, lz, cindptr, scale, most, chunk):
    """`aggregate._coarse_links` on the grid."""
    mc = mstart.shape[0] - 1
    ny, nz = node.shape[1], node.shape[2]
    nnz = cindptr[mc]
    cindices = np.empty(nnz, dtype=np.int32)
    cweight = np.zeros(nnz)
    caxis = np.empty(nnz, dtype=np.int8)
    for kk in nb.prange((mc + chunk - 1) // chunk):
        k = np.int64(kk)
        along = np.empty((max(most, 1), 3))  # the fine weight along each axis behind a link
        for c in range(k * chunk, min(mc, (k + 1) * chunk)):
            q0 = cindptr[c]
            q = q0
            for t in range(mstart[c], mstart[c + 1]):
                i = members[t]
                x, y, z = _cell(cell, i, ny, nz)
                for f in range(6):
                    j, w = _link(node, lx, ly, lz, x, y, z, f)
                    if j < 0:
                        continue
                    cj = agg[j]
                    if cj >= 0 and cj != c:
                        q = _add_coarse_link(cindices, cweight, along, q0, q, cj, w, f // 2, scale)
            _link_axes(along, q0, q, caxis)
    return cindices, cweight, caxis


def grid_aggregate(diag, lx, ly, lz, halved, coarse_shape, scale, strength, merge_below=0):
    """Level 0 of a stencil on the grid (`aggregate.grid_graph`'s arrays: diag (nx, ny, nz),
    faces lx (nx-1, ny, nz), ly, lz; float64) coarsened once (`aggregate.aggregate`, not
    pairwise) without its link CSR.

    Returns (node, index, agg, links, level): node (nx, ny, nz) int64 (node id or -1), index
    (n,) int64 each node's flat cell, agg (n,) int64 each node's coarse node (-1: none),
    links level 0's link count (both ways), and level 1 as a dict (coords, d, indptr,
    indices, w, axis) exactly as `aggregate` makes it.
    """
    if max(diag.shape) > _MASK:
        raise ValueError(f"grid_aggregate packs a cell in 3×{_BITS} bits: {diag.shape} is too big")
    per_row = _active_per_row(diag)
    offset = np.zeros(len(per_row) + 1, dtype=np.int64)
    np.cumsum(per_row, out=offset[1:])
    n = int(offset[-1])
    node = np.empty(diag.shape, dtype=np.int64)
    index = np.empty(n, dtype=np.int64)
    cell = np.empty(n, dtype=np.int64)
    d = np.empty(n)
    _number_grid(diag, offset, node, index, cell, d)
    halved = np.asarray(halved, dtype=np.bool_)
    cx, cy, cz = (int(v) for v in coarse_shape)
    wmax, block, links = _largest_and_blocks(node, cell, lx, ly, lz, halved, cy, cz)
    start, order = _counting_sort(block, cx * cy * cz)
    parent = np.arange(n)
    grid = (node, cell, lx, ly, lz)
    _components_in_blocks(parent, start, order, block, *grid, wmax, strength)
    if merge_below > 1:
        _merge_small(parent, start, order, *grid, wmax, strength, merge_below)
    agg, m = _number_components(order, _roots(parent))  # in block order
    mstart, members = _members_in_order(agg, order, m)
    cd, counts, most = _component_sums(mstart, members, agg, d, *grid, _CHUNK)
    kstart, kmembers, cindptr, ccoords, cdiag = keep_components(
        agg, mstart, members, counts, block, cd, scale, cy, cz
    )
    cindices, cweight, caxis = _coarse_links(
        kstart, kmembers, agg, *grid, cindptr, scale, most, _CHUNK
    )
    level = dict(coords=ccoords, d=cdiag, indptr=cindptr, indices=cindices, w=cweight, axis=caxis)
    return node, index, agg, int(links), level


@nb.njit(inline="always")
def node_link_sums(diag, logdiag, lx, ly, lz, x, y, z):
    """(Σ w_ij, Σ log d_j, max w_ij, min w_ij, count) over the links of cell (x, y, z) of a
    grid level to cells with d > 0, in the CSR's order (x−, x+, y−, y+, z−, z+); logdiag the
    level's log(max(d, 1e-300)) per cell."""
    nx, ny, nz = diag.shape
    sumw, logs, wmax, wmin, cnt = 0.0, 0.0, 0.0, 1.0, 0
    for q in range(6):
        a, step = q // 2, 2 * (q % 2) - 1
        u, v, t = x + step * (a == 0), y + step * (a == 1), z + step * (a == 2)
        if u < 0 or u >= nx or v < 0 or v >= ny or t < 0 or t >= nz or diag[u, v, t] <= 0:
            continue
        lo_x, lo_y, lo_z = min(x, u), min(y, v), min(z, t)
        w = lx[lo_x, y, z] if a == 0 else (ly[x, lo_y, z] if a == 1 else lz[x, y, lo_z])
        if not w > 0.0:
            continue
        sumw += w
        logs += logdiag[u, v, t]
        wmax = w if cnt == 0 else max(wmax, w)
        wmin = w if cnt == 0 else min(wmin, w)
        cnt += 1
    return sumw, logs, wmax, wmin, cnt


@nb.njit(parallel=True, cache=True)
def grid_node_features(diag, lx, ly, lz, index, out):
    """`deepcd.nn.local.graph_features`' node features of level 0 from its stencil on the
    grid (arrays as `grid_aggregate`; index (n,) the nodes' flat cells), without its link
    CSR: out (n, 3) float64 — the Dirichlet share 1 − Σ_j w_ij / d_i,
    tanh(¼ log(max_j w_ij / min_j w_ij)) and tanh(¼ (log d_i − mean_j log d_j)) over the
    links to cells with d > 0, summed in the CSR's order."""
    ny, nz = diag.shape[1], diag.shape[2]
    logdiag = np.log(np.maximum(diag, 1e-300))
    for i in nb.prange(index.shape[0]):
        x, y, z = _flat_cell(index, i, ny, nz)
        d = diag[x, y, z]
        sumw, logs, wmax, wmin, cnt = node_link_sums(diag, logdiag, lx, ly, lz, x, y, z)
        out[i, 0] = min(max(1.0 - sumw / max(d, 1e-300), 0.0), 1.0)
        out[i, 1], out[i, 2] = 0.0, 0.0
        if cnt > 0:
            out[i, 1] = np.tanh(0.25 * np.log(wmax / max(wmin, 1e-300)))
            out[i, 2] = np.tanh(0.25 * (np.log(max(d, 1e-300)) - logs / cnt))
