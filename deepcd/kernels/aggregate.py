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

import numba as nb
import numpy as np


def grid_graph(diag, lx, ly, lz):
    """Level 0 from a stencil on the grid: diag (nx, ny, nz), face weights lx (nx-1, ny, nz),
    ly (nx, ny-1, nz), lz (nx, ny, nz-1). Nodes are the cells with diag > 0, in C order.

    Returns node (nx, ny, nz) int64 (node id or -1), coords (n, 3) int32, d (n,) float64 and
    the CSR links indptr (n+1,) int64, indices int32, weight float64, axis int8.
    """
    active = diag > 0
    node = np.where(active, np.cumsum(active.ravel()).reshape(diag.shape) - 1, -1)
    coords = np.argwhere(active).astype(np.int32)
    d = diag[active].astype(np.float64)
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
def _grid_links(node, lx, ly, lz, indptr, indices, weight, axis, count_only):
    """Each node's links to its FLUID neighbours: counted into indptr[node] (count_only),
    else written from indptr[node] on."""
    nx, ny, nz = node.shape
    for i in nb.prange(nx):
        for j in range(ny):
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
    """
    n = coords.shape[0]
    cx, cy, cz = coarse_shape[0], coarse_shape[1], coarse_shape[2]
    block = np.zeros(n, dtype=np.int64)
    parent = np.arange(n)
    if wmax_in is None:
        wmax = np.zeros(n)
        for i in range(n):
            for p in range(indptr[i], indptr[i + 1]):
                wmax[i] = max(wmax[i], weight[p])
    else:
        wmax = wmax_in
    if pairwise:
        taken = np.zeros(n, dtype=np.bool_)
        for i in range(n):  # nodes before i are all taken: a partner j is always > i
            if taken[i]:
                continue
            taken[i] = True
            best, wbest = -1, 0.0
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                strong = weight[p] >= strength * max(wmax[i], wmax[j])
                if strong and not taken[j] and weight[p] > wbest:
                    best, wbest = j, weight[p]
            if best >= 0:
                taken[best] = True
                parent[best] = i
    else:
        for i in range(n):
            b0 = coords[i, 0] // 2 if halved[0] else coords[i, 0]
            b1 = coords[i, 1] // 2 if halved[1] else coords[i, 1]
            b2 = coords[i, 2] // 2 if halved[2] else coords[i, 2]
            block[i] = (b0 * cy + b1) * cz + b2
        # union-find over the links inside a block
        for i in range(n):
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                strong = weight[p] >= strength * max(wmax[i], wmax[j])
                if j > i and block[j] == block[i] and strong:
                    ri, rj = _find(parent, i), _find(parent, j)
                    if ri != rj:
                        if ri < rj:
                            parent[rj] = ri
                        else:
                            parent[ri] = rj
        if merge_below > 1:
            # a component smaller than merge_below (a corridor's corner cut off by the block
            # grid) joins the component its strongest strong link leads to, across blocks
            size = np.zeros(n, dtype=np.int64)
            for i in range(n):
                size[_find(parent, i)] += 1
            best_w = np.zeros(n)
            best_j = np.full(n, -1, dtype=np.int64)
            for i in range(n):
                ri = _find(parent, i)
                if size[ri] >= merge_below:
                    continue
                for p in range(indptr[i], indptr[i + 1]):
                    j = indices[p]
                    strong = weight[p] >= strength * max(wmax[i], wmax[j])
                    if strong and _find(parent, j) != ri and weight[p] > best_w[ri]:
                        best_w[ri], best_j[ri] = weight[p], j
            for r in range(n):
                if best_j[r] >= 0 and parent[r] == r:
                    ri, rj = _find(parent, r), _find(parent, best_j[r])
                    if ri != rj:
                        if ri < rj:
                            parent[rj] = ri
                        else:
                            parent[ri] = rj
    # nodes in block order (a counting sort), components numbered in that order
    nblocks = cx * cy * cz
    start = np.zeros(nblocks + 1, dtype=np.int64)
    for i in range(n):
        start[block[i] + 1] += 1
    for b in range(nblocks):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        order[fill[block[i]]] = i
        fill[block[i]] += 1
    comp = np.full(n, -1, dtype=np.int64)  # component id by root
    agg = np.empty(n, dtype=np.int64)
    m = 0
    for t in range(n):
        i = order[t]
        r = _find(parent, i)
        if comp[r] < 0:
            comp[r] = m
            m += 1
        agg[i] = comp[r]
    # coarse diagonal: Σ d − links inside the component (both directions)
    cd = np.zeros(m)
    for i in range(n):
        cd[agg[i]] += d[i]
        for p in range(indptr[i], indptr[i + 1]):
            if agg[indices[p]] == agg[i]:
                cd[agg[i]] -= weight[p]
    # drop components with no coarse unknown (closed regions inside one block)
    dmax = 0.0
    for c in range(m):
        dmax = max(dmax, cd[c])
    keep = np.full(m, -1, dtype=np.int64)
    mc = 0
    for c in range(m):
        if cd[c] > 1e-9 * dmax:
            keep[c] = mc
            mc += 1
    for i in range(n):
        agg[i] = keep[agg[i]]
    ccoords = np.empty((mc, 3), dtype=np.int32)
    cdiag = np.empty(mc)
    for c in range(m):
        if keep[c] >= 0:
            cdiag[keep[c]] = cd[c] * scale
    # members of each coarse node (block order keeps them grouped)
    mstart = np.zeros(mc + 1, dtype=np.int64)
    for i in range(n):
        if agg[i] >= 0:
            mstart[agg[i] + 1] += 1
    for c in range(mc):
        mstart[c + 1] += mstart[c]
    mfill = mstart[:-1].copy()
    members = np.empty(mstart[mc], dtype=np.int64)
    for t in range(n):
        i = order[t]
        c = agg[i]
        if c >= 0:
            members[mfill[c]] = i
            mfill[c] += 1
    # coarse links: accumulate each row with a marker array (two passes: count, fill)
    marker = np.full(mc, -1, dtype=np.int64)
    cindptr = np.zeros(mc + 1, dtype=np.int64)
    for c in range(mc):
        i0 = members[mstart[c]]
        b = block[i0]
        ccoords[c, 2] = b % cz
        ccoords[c, 1] = (b // cz) % cy
        ccoords[c, 0] = b // (cy * cz)
        cnt = 0
        for t in range(mstart[c], mstart[c + 1]):
            i = members[t]
            for p in range(indptr[i], indptr[i + 1]):
                cj = agg[indices[p]]
                if cj >= 0 and cj != c and marker[cj] != c:
                    marker[cj] = c
                    cnt += 1
        cindptr[c + 1] = cindptr[c] + cnt
    nnz = cindptr[mc]
    cindices = np.empty(nnz, dtype=np.int32)
    cweight = np.zeros(nnz)
    caxis = np.empty(nnz, dtype=np.int8)
    per_axis = np.zeros((nnz, 3))  # the fine weight along each axis behind a coarse link
    slot = np.full(mc, -1, dtype=np.int64)
    for c in range(mc):
        q = cindptr[c]
        for t in range(mstart[c], mstart[c + 1]):
            i = members[t]
            for p in range(indptr[i], indptr[i + 1]):
                cj = agg[indices[p]]
                if cj < 0 or cj == c:
                    continue
                if slot[cj] < cindptr[c] or slot[cj] >= q or cindices[slot[cj]] != cj:
                    slot[cj] = q
                    cindices[q] = cj
                    q += 1
                cweight[slot[cj]] += weight[p] * scale
                per_axis[slot[cj], axis[p]] += weight[p]
    # a coarse link's axis: the one most of its fine weight runs along (ties: the lowest) — a
    # function of the pair's fine links, so the same both ways and the transfers stay symmetric
    for q in range(nnz):
        top = max(per_axis[q, 0], per_axis[q, 1], per_axis[q, 2])
        best = 0
        while per_axis[q, best] < (1.0 - 1e-9) * top:  # rounding may not break a tie
            best += 1
        caxis[q] = best
    return agg, ccoords, cdiag, cindptr, cindices, cweight, caxis


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
    for i in nb.prange(x.shape[0]):
        acc = 0.0
        xi = x[i]
        for p in range(indptr[i], indptr[i + 1]):
            acc += nweight[p] * (x[indices[p]] - xi)
        out[i] = xi + omega * acc


def axis_csr(indptr, indices, weight, axis, naxes: int):
    """Per axis a < naxes, the (indptr, indices, weight) of the links with axis == a, in the
    order of the full CSR."""
    n = len(indptr) - 1
    rows = np.repeat(np.arange(n), np.diff(indptr))
    out = []
    for a in range(naxes):
        on = axis == a
        ip = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows[on], minlength=n), out=ip[1:])
        out.append((ip, np.ascontiguousarray(indices[on]), np.ascontiguousarray(weight[on])))
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
    """out_i = xc[agg_i] (P₀ xc), 0 where agg_i = -1."""
    for i in nb.prange(agg.shape[0]):
        a = agg[i]
        out[i] = xc[a] if a >= 0 else 0.0


def members_of(agg: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(mstart (m+1,), members) listing the fine nodes of each coarse node (agg >= 0), in
    increasing order (a counting sort)."""
    agg = np.ascontiguousarray(agg, dtype=np.int64)
    mstart = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(agg[agg >= 0], minlength=m), out=mstart[1:])
    members = np.empty(mstart[m], dtype=np.int64)
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
                o[k] = xc[k] - omega * acc
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
            o[k] = xc[k] - omega * (dg[k] * xc[k] - wm[k] * xm[k] - wp[k] * xp[k])


# Small levels run serial copies: a parallel launch costs more than their work, and far more
# when another job holds the cores (the thread team then waits for a descheduled thread).
SERIAL_BELOW = 1 << 15
_serial = {}


def small(kernel, n: int):
    """`kernel`, or its serial copy when the level has fewer than SERIAL_BELOW unknowns."""
    if n >= SERIAL_BELOW:
        return kernel
    if kernel not in _serial:
        _serial[kernel] = nb.njit(cache=True)(kernel.py_func)
    return _serial[kernel]
