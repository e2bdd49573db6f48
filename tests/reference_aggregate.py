"""The serial aggregation the parallel `deepcd.kernels.aggregate.aggregate` replaced, kept as
its reference: the same partition, numbering and coarse level, one node at a time."""

from __future__ import annotations

import numba as nb
import numpy as np

from deepcd.kernels.aggregate import _find


@nb.njit
def serial_aggregate(
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
    """The serial aggregation `deepcd.kernels.aggregate.aggregate` replaced, unchanged."""
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
