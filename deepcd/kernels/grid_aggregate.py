"""Level 1 straight from level 0's stencil on the grid, without level 0's link CSR.

`deepcd.kernels.aggregate.aggregate` reads a level's links from a CSR. For level 0 that CSR is
the grid stencil written out again — six links per cell, ~13 bytes each, written once and read
by the aggregation only (CPU inference runs level 0 on the grid): at 256³ building and reading
it was most of the hierarchy's setup. `grid_aggregate` computes the same level 1, bit for bit
(the same components, numbering, coarse links in the same order, the same sums), reading each
cell's links from the stencil arrays in the CSR's order (x−, x+, y−, y+, z−, z+).

It works block by block: a coarse block's cells (at most 2×2×2) are found by arithmetic, so
there is no sort of the nodes by block and no per-node block or order array; components are
found, numbered and listed per block in parallel (they lie in one block until small ones
join a neighbour, which then runs on component-sized arrays). Fewer and smaller n-sized
arrays also mean fewer fresh pages, which cost ~7 µs each on the project's VM. A component
that is a whole 2×2×2 cube — most of an open region's — has its coarse diagonal and links
summed from its corner (`_cube_at`): which of its cells' links stay inside is known, and the
branches on it fold away (`_coarse_links` ~1.5× and `_component_sums` 1.2–1.6× faster on
smoke-obstacles at 128³ and 256³, `benchmarks/level1-cubes`; the same sums in the same order).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from deepcd.kernels.aggregate import (
    _CHUNK,
    _active_per_row,
    _add_coarse_link,
    _drop_unfilled,
    _find,
    _link_axes,
    _note_neighbour,
    _number_components,
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
def _number_grid(diag, offset, node, index, cell):
    """Number the cells with diag > 0 in C order (row (i, j) from offset[i·ny + j]): node
    (id or -1), each node's flat cell index and its packed cell (`_cell`)."""
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
                a += 1
            else:
                node[i, j, k] = -1


@nb.njit(inline="always")
def _strong(w, wi, wj, strength):
    return w >= strength * max(wi, wj)


@nb.njit(inline="always")
def _block_cells(node, bx, by, bz, sx, sy, sz, ids, xs, ys, zs):
    """The nodes of coarse block (bx, by, bz) — sx × sy × sz fine cells (2 on a halved axis,
    else 1) — in C order, which is their node order: ids and cells into the scratch arrays
    (≥ 8 long); returns how many."""
    nx, ny, nz = node.shape
    k = 0
    for x in range(bx * sx, min(nx, (bx + 1) * sx)):
        for y in range(by * sy, min(ny, (by + 1) * sy)):
            for z in range(bz * sz, min(nz, (bz + 1) * sz)):
                j = node[x, y, z]
                if j >= 0:
                    ids[k], xs[k], ys[k], zs[k] = j, x, y, z
                    k += 1
    return k


@nb.njit(inline="always")
def _open(top, cnt, w, j):
    """A cell's running (largest link weight, link count) with one more link of weight w to
    node j (counted when w > 0 and j >= 0, as `_link` does), and the weight it counts (0:
    none)."""
    if w > 0.0 and j >= 0:
        return max(top, w), cnt + 1, w
    return top, cnt, 0.0


@nb.njit(inline="always")
def _cell_links(node, lx, ly, lz, x, y, z, x1, y1, z1):
    """(largest link weight, number of links) of cell (x, y, z), then the weights of its
    links x+, y+, z+ to cells still inside its block (ends x1, y1, z1 exclusive; 0: none;
    x1 = x, y1 = y, z1 = z: none asked for) — one read of the six links, each written out
    per axis rather than through `_link`'s q (with the block's slots by position, 1.6× faster
    over `_block_components` at 128³; a row view of a scratch array as output cost that
    back)."""
    nx, ny, nz = node.shape
    top, cnt, f0, f1, f2 = 0.0, 0, 0.0, 0.0, 0.0
    if x > 0:
        top, cnt, _ = _open(top, cnt, lx[x - 1, y, z], node[x - 1, y, z])
    if x < nx - 1:
        top, cnt, w = _open(top, cnt, lx[x, y, z], node[x + 1, y, z])
        f0 = w if x + 1 < x1 else 0.0
    if y > 0:
        top, cnt, _ = _open(top, cnt, ly[x, y - 1, z], node[x, y - 1, z])
    if y < ny - 1:
        top, cnt, w = _open(top, cnt, ly[x, y, z], node[x, y + 1, z])
        f1 = w if y + 1 < y1 else 0.0
    if z > 0:
        top, cnt, _ = _open(top, cnt, lz[x, y, z - 1], node[x, y, z - 1])
    if z < nz - 1:
        top, cnt, w = _open(top, cnt, lz[x, y, z], node[x, y, z + 1])
        f2 = w if z + 1 < z1 else 0.0
    return top, cnt, f0, f1, f2


@nb.njit(parallel=True, cache=True)
def _block_components(node, lx, ly, lz, steps, cshape, strength, merge_below, root, ncomp, nnode):
    """`aggregate._components_in_blocks` block by block, the block's cells found by arithmetic
    (no sort by block): root (n,) each node's component root (its smallest node: the root
    `_union` keeps), ncomp / nnode (blocks,) each block's components and nodes. Returns
    level 0's link count (both ways) and the number of components under merge_below nodes.

    A block's cells sit at positions ((x − x0)·2 + (y − y0))·2 + (z − z0) of a 2×2×2 frame
    (slot: their index among its nodes, −1: no node), so a link inside the block finds its
    other end at position + 4, + 2 or + 1 without a search."""
    nx, ny, nz = node.shape
    sx, sy, sz = steps[0], steps[1], steps[2]
    cx, cy, cz = cshape[0], cshape[1], cshape[2]
    links, small = 0, 0
    for row in nb.prange(cx * cy):
        bx, by = row // cy, row % cy
        x0, y0 = bx * sx, by * sy
        x1, y1 = min(nx, x0 + sx), min(ny, y0 + sy)
        ids = np.empty(8, dtype=np.int64)
        slot = np.empty(8, dtype=np.int64)
        fwd = np.zeros((8, 3))
        wl = np.empty(8)
        lp = np.empty(8, dtype=np.int64)
        size = np.empty(8, dtype=np.int64)
        row_links, row_small = 0, 0
        for bz in range(cz):
            b = row * cz + bz
            z0 = bz * sz
            z1 = min(nz, z0 + sz)
            k = 0
            for x in range(x0, x1):
                for y in range(y0, y1):
                    for z in range(z0, z1):
                        pos = ((x - x0) * 2 + (y - y0)) * 2 + (z - z0)
                        j = node[x, y, z]
                        slot[pos] = k if j >= 0 else -1
                        if j < 0:
                            continue
                        ids[k], lp[k] = j, k
                        wl[k], cnt, f0, f1, f2 = _cell_links(node, lx, ly, lz, x, y, z, x1, y1, z1)
                        fwd[k, 0], fwd[k, 1], fwd[k, 2] = f0, f1, f2
                        row_links += cnt
                        k += 1
            for x in range(x0, x1):  # every largest link known: the strong links inside
                for y in range(y0, y1):
                    for z in range(z0, z1):
                        pos = ((x - x0) * 2 + (y - y0)) * 2 + (z - z0)
                        s = slot[pos]
                        if s < 0:
                            continue
                        for a in range(3):
                            w = fwd[s, a]
                            if w > 0.0:
                                t = slot[pos + (4 if a == 0 else (2 if a == 1 else 1))]
                                if _strong(w, wl[s], wl[t], strength):
                                    _union(lp, s, t)
            comps = 0
            for s in range(k):
                size[s] = 0
            for s in range(k):
                r = _find(lp, s)
                root[ids[s]] = ids[r]
                size[r] += 1
                comps += r == s
            for s in range(k):
                row_small += lp[s] == s and size[s] < merge_below
            ncomp[b], nnode[b] = comps, k
        links += row_links
        small += row_small
    return links, small


@nb.njit(parallel=True, cache=True)
def _number_in_blocks(node, steps, cshape, agg, cstart, nstart, mstart, members, cblock):
    """Components that each lie in one block, numbered in block order and by their first
    node within a block (`aggregate._number_components` over the nodes sorted by block):
    agg (n,) holds each node's root on entry, its component on return; mstart / members
    each component's nodes in node order (`aggregate._members_in_order`), cblock its block.
    cstart / nstart: the blocks' first component and first member."""
    sx, sy, sz = steps[0], steps[1], steps[2]
    cx, cy, cz = cshape[0], cshape[1], cshape[2]
    for row in nb.prange(cx * cy):
        bx, by = row // cy, row % cy
        ids = np.empty(8, dtype=np.int64)
        xs, ys, zs = np.empty(8, np.int64), np.empty(8, np.int64), np.empty(8, np.int64)
        rts = np.empty(8, dtype=np.int64)
        for bz in range(cz):
            b = row * cz + bz
            k = _block_cells(node, bx, by, bz, sx, sy, sz, ids, xs, ys, zs)
            for s in range(k):
                rts[s] = agg[ids[s]]
            c, t = cstart[b], nstart[b]
            for s in range(k):
                if rts[s] != ids[s]:
                    continue
                mstart[c], cblock[c] = t, b
                for u in range(s, k):
                    if rts[u] == ids[s]:
                        members[t] = ids[u]
                        agg[ids[u]] = c
                        t += 1
                c += 1


@nb.njit(inline="always")
def _neighbour(x, y, z, q):
    """The cell across link q (0..5: x−, x+, y−, y+, z−, z+) of (x, y, z)."""
    step = 2 * (q % 2) - 1
    a = q // 2
    return x + step * (a == 0), y + step * (a == 1), z + step * (a == 2)


@nb.njit(parallel=True, cache=True)
def _best_links(node, cell, lx, ly, lz, agg, mstart, members, strength, merge_below):
    """`aggregate._merge_small`'s choice for each component under merge_below nodes (each
    lies in one block: agg its number, mstart / members its nodes in order): best (m,) the
    component across its strongest strong link (the first of equal weights, in node and
    link order; -1: none or not small)."""
    m = mstart.shape[0] - 1
    ny, nz = node.shape[1], node.shape[2]
    best = np.full(m, -1, dtype=np.int64)
    for c in nb.prange(m):
        if mstart[c + 1] - mstart[c] >= merge_below:
            continue
        best_w = 0.0
        for t in range(mstart[c], mstart[c + 1]):
            x, y, z = _cell(cell, members[t], ny, nz)
            wi = _cell_links(node, lx, ly, lz, x, y, z, x, y, z)[0]
            for q in range(6):
                j, w = _link(node, lx, ly, lz, x, y, z, q)
                if j < 0 or agg[j] == c or not w > best_w:
                    continue
                u, v, k = _neighbour(x, y, z, q)
                if _strong(w, wi, _cell_links(node, lx, ly, lz, u, v, k, u, v, k)[0], strength):
                    best_w, best[c] = w, agg[j]
    return best


@nb.njit(cache=True)
def _merge_components(mstart, members, best):
    """`aggregate._merge_small`'s joins on the components (the same joins, in the same order:
    by root node, the smaller root kept) and their new numbering in order of first
    appearance: (final (m,) each component's new number, the new count); final is empty
    when nothing joined."""
    m = best.shape[0]
    cand = np.flatnonzero(best >= 0)
    if cand.shape[0] == 0:
        return np.empty(0, dtype=np.int64), m
    root_node = members[mstart[:-1]]  # a component's smallest node: `_union`'s root
    cand = cand[np.argsort(root_node[cand], kind="mergesort")]
    parent = np.arange(m)
    for c in cand:
        if parent[c] != c:
            continue
        ra, rb = c, _find(parent, best[c])
        if root_node[ra] < root_node[rb]:
            parent[rb] = ra
        elif root_node[rb] < root_node[ra]:
            parent[ra] = rb
    for c in range(m):
        _find(parent, c)  # each component's root, path compressed
    # components are numbered in block order, so their first appearance is their number
    return _number_components(np.arange(m), parent)


@nb.njit(cache=True)
def _merged_members(agg, mstart, members, cblock, final, count):
    """Members and blocks of the joined components (`final`, `_merge_components`), each
    component's nodes in block order, then node order (`aggregate._members_in_order`);
    renumbers agg in place."""
    m = mstart.shape[0] - 1
    fstart = np.zeros(count + 1, dtype=np.int64)
    fblock = np.full(count, -1, dtype=np.int64)
    for c in range(m):
        f = final[c]
        fstart[f + 1] += mstart[c + 1] - mstart[c]
        if fblock[f] < 0:
            fblock[f] = cblock[c]
    for f in range(count):
        fstart[f + 1] += fstart[f]
    fill = fstart[:-1].copy()
    pieces = np.zeros(count, dtype=np.int64)
    fmembers = np.empty(members.shape[0], dtype=members.dtype)
    for c in range(m):
        f = final[c]
        pieces[f] += 1
        for t in range(mstart[c], mstart[c + 1]):
            fmembers[fill[f]] = members[t]
            fill[f] += 1
    for f in range(count):
        if pieces[f] > 1:  # pieces of one block may interleave: sort by (block, node)
            lo, hi = fstart[f], fstart[f + 1]
            key = np.empty(hi - lo, dtype=np.int64)
            for t in range(lo, hi):
                key[t - lo] = cblock[agg[fmembers[t]]]
            # two stable sorts, node then block: no composite key to overflow int64
            piece = fmembers[lo:hi]
            by_node = np.argsort(piece, kind="mergesort")
            by_block = np.argsort(key[by_node], kind="mergesort")
            fmembers[lo:hi] = piece[by_node[by_block]]
    return fstart, fmembers, fblock


@nb.njit(parallel=True, cache=True)
def _renumber(agg, final):
    for i in nb.prange(agg.shape[0]):
        agg[i] = final[agg[i]]


@nb.njit(inline="always")
def _cube_at(cell, members, lo, hi):
    """(x0, y0, z0) when members[lo:hi] are the 8 cells of the 2×2×2 cube at even (x0, y0,
    z0) in C order — a coarse block whose cells all joined one component, the common case in
    open regions — else (−1, 0, 0): the generic path then walks them."""
    if hi - lo != 8:
        return -1, 0, 0
    c0 = cell[members[lo]]
    x0, y0, z0 = c0 >> (2 * _BITS), (c0 >> _BITS) & _MASK, c0 & _MASK
    if (x0 | y0 | z0) & 1:
        return -1, 0, 0
    t = lo
    for dx in range(2):
        for dy in range(2):
            for dz in range(2):
                if cell[members[t]] != c0 + (dx << (2 * _BITS)) + (dy << _BITS) + dz:
                    return -1, 0, 0
                t += 1
    return x0, y0, z0


@nb.njit(inline="always")
def _sum_link(j, w, agg, c, acc, cnt, seen):
    """Component c's link to node j of weight w (none where w ≤ 0 or j < 0, as `_link`):
    (acc, cnt) with it taken off the diagonal sum acc when j is in c, else with j's
    component noted in seen."""
    if w > 0.0 and j >= 0:
        cj = agg[j]
        if cj == c:
            acc -= w
        else:
            cnt = _note_neighbour(seen, cnt, cj)
    return acc, cnt


@nb.njit(inline="always")
def _cube_face(node, lx, ly, lz, x, y, z, a, d):
    """Cell (x, y, z) of a cube (`_cube_at`), d (0 or 1) its offset in the cube along axis a:
    (j, w) of its link along a that leaves the cube (j = −1: none; the cell before it when
    d = 0, after it when d = 1) and the weight of its link along a inside the cube."""
    nx, ny, nz = node.shape
    j, w = -1, 0.0
    if a == 0:
        inner, u = lx[x - d, y, z], x + 2 * d - 1
        if 0 <= u < nx:
            j, w = node[u, y, z], lx[min(x, u), y, z]
    elif a == 1:
        inner, v = ly[x, y - d, z], y + 2 * d - 1
        if 0 <= v < ny:
            j, w = node[x, v, z], ly[x, min(y, v), z]
    else:
        inner, t = lz[x, y, z - d], z + 2 * d - 1
        if 0 <= t < nz:
            j, w = node[x, y, t], lz[x, y, min(z, t)]
    return j, w, inner


@nb.njit(inline="always")
def _cube_axis_sums(j, w, inner, d, agg, c, acc, cnt, seen):
    """`_cube_sums`' two links along one axis of a cell at offset d in its cube (`_cube_face`:
    j, w the one leaving the cube, inner the one inside), the − one first."""
    if d == 1 and inner > 0.0:
        acc -= inner
    acc, cnt = _sum_link(j, w, agg, c, acc, cnt, seen)
    if d == 0 and inner > 0.0:
        acc -= inner
    return acc, cnt


@nb.njit(inline="always")
def _cube_sums(diag, node, lx, ly, lz, agg, c, x0, y0, z0, seen):
    """`_component_sums`' (acc, cnt) for component c = the cube at (x0, y0, z0)
    (`_cube_at`), with the same terms in the same order (cells in C order, links x−, x+, y−,
    y+, z−, z+): each cell's links inside the cube are known by its corner, not looked up.
    Corners as nested range(2) loops and the axes spelled out (so a and d fold to constants
    in `_cube_face`): a loop over the axes, or over the corners as one range(8) or a tuple,
    left `_component_sums` 1.2–1.5× slower at 128³."""
    acc, cnt = 0.0, 0
    for dx in range(2):
        for dy in range(2):
            for dz in range(2):
                x, y, z = x0 + dx, y0 + dy, z0 + dz
                acc += np.float64(diag[x, y, z])
                j, w, inner = _cube_face(node, lx, ly, lz, x, y, z, 0, dx)
                acc, cnt = _cube_axis_sums(j, w, inner, dx, agg, c, acc, cnt, seen)
                j, w, inner = _cube_face(node, lx, ly, lz, x, y, z, 1, dy)
                acc, cnt = _cube_axis_sums(j, w, inner, dy, agg, c, acc, cnt, seen)
                j, w, inner = _cube_face(node, lx, ly, lz, x, y, z, 2, dz)
                acc, cnt = _cube_axis_sums(j, w, inner, dz, agg, c, acc, cnt, seen)
    return acc, cnt


@nb.njit(inline="always")
def _outer_link(j, w, a, agg, c, cindices, cweight, along, q0, q, scale):
    """Component c's link to node j of weight w along axis a added to its coarse row (ends
    q0, q; `_add_coarse_link`) when j is a node outside c that has a coarse node; the row's
    new end."""
    if w > 0.0 and j >= 0:
        cj = agg[j]
        if cj >= 0 and cj != c:
            q = _add_coarse_link(cindices, cweight, along, q0, q, cj, w, a, scale)
    return q


@nb.njit(inline="always")
def _cube_links(node, lx, ly, lz, agg, c, x0, y0, z0, cindices, cweight, along, q0, scale):
    """`_coarse_links`' row of component c = the cube at (x0, y0, z0) (`_cube_at`): the links
    leaving it in the generic order (cells in C order, then x, y, z), one per cell and axis;
    the row's end."""
    q = q0
    for dx in range(2):
        for dy in range(2):
            for dz in range(2):
                x, y, z = x0 + dx, y0 + dy, z0 + dz
                j, w, _ = _cube_face(node, lx, ly, lz, x, y, z, 0, dx)
                q = _outer_link(j, w, 0, agg, c, cindices, cweight, along, q0, q, scale)
                j, w, _ = _cube_face(node, lx, ly, lz, x, y, z, 1, dy)
                q = _outer_link(j, w, 1, agg, c, cindices, cweight, along, q0, q, scale)
                j, w, _ = _cube_face(node, lx, ly, lz, x, y, z, 2, dz)
                q = _outer_link(j, w, 2, agg, c, cindices, cweight, along, q0, q, scale)
    return q


@nb.njit(parallel=True, cache=True)
def _component_sums(mstart, members, agg, diag, node, cell, lx, ly, lz, chunk):
    """`aggregate._component_sums` on the grid, each member's diagonal read from the grid
    (diag (nx, ny, nz), float64 or float32 read as float64: the CSR's values; no per-node
    copy, ~124 MiB of fresh pages at 256³); the scratch size returned is 6 links per member
    of the largest component (a bound on its distinct neighbours)."""
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
            x0, y0, z0 = _cube_at(cell, members, mstart[c], mstart[c + 1])
            if x0 >= 0:
                cd[c], counts[c] = _cube_sums(diag, node, lx, ly, lz, agg, c, x0, y0, z0, seen)
                continue
            acc, cnt = 0.0, 0
            for t in range(mstart[c], mstart[c + 1]):
                x, y, z = _cell(cell, members[t], ny, nz)
                acc += np.float64(diag[x, y, z])
                for q in range(6):
                    j, w = _link(node, lx, ly, lz, x, y, z, q)
                    acc, cnt = _sum_link(j, w, agg, c, acc, cnt, seen)
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
    filled = np.empty(mc, dtype=np.int64)
    for kk in nb.prange((mc + chunk - 1) // chunk):
        k = np.int64(kk)
        along = np.empty((max(most, 1), 3))  # the fine weight along each axis behind a link
        for c in range(k * chunk, min(mc, (k + 1) * chunk)):
            q0 = cindptr[c]
            x0, y0, z0 = _cube_at(cell, members, mstart[c], mstart[c + 1])
            if x0 >= 0:
                q = _cube_links(
                    node, lx, ly, lz, agg, c, x0, y0, z0, cindices, cweight, along, q0, scale
                )
            else:
                q = q0
                for t in range(mstart[c], mstart[c + 1]):
                    x, y, z = _cell(cell, members[t], ny, nz)
                    for f in range(6):
                        j, w = _link(node, lx, ly, lz, x, y, z, f)
                        if j < 0:
                            continue
                        cj = agg[j]
                        if cj >= 0 and cj != c:
                            q = _add_coarse_link(
                                cindices, cweight, along, q0, q, cj, w, f // 2, scale
                            )
            _link_axes(along, q0, q, caxis)
            filled[c] = q - q0
    return _drop_unfilled(cindptr, filled, cindices, cweight, caxis)


def grid_aggregate(diag, lx, ly, lz, halved, coarse_shape, scale, strength, merge_below=0):
    """Level 0 of a stencil on the grid (`aggregate.grid_graph`'s arrays: diag (nx, ny, nz),
    faces lx (nx-1, ny, nz), ly, lz; float64, or float32, read into float64 sums: the same
    level as from their float64 copies) coarsened once (`aggregate.aggregate`, not pairwise)
    without its link CSR.

    Returns (node, index, agg, links, level): node (nx, ny, nz) int32 (int64 from 2³¹ nodes;
    node id or -1), index (n,) each node's flat cell (int32; int64 from 2³¹ cells), agg (n,)
    int64 each node's coarse node (-1: none), links level 0's link count (both ways), and
    level 1 as a dict (coords, d, indptr, indices, w, axis) exactly as `aggregate` makes it.
    """
    if max(diag.shape) > _MASK:
        raise ValueError(f"grid_aggregate packs a cell in 3×{_BITS} bits: {diag.shape} is too big")
    per_row = _active_per_row(diag)
    offset = np.zeros(len(per_row) + 1, dtype=np.int64)
    np.cumsum(per_row, out=offset[1:])
    n = int(offset[-1])
    node = np.empty(diag.shape, dtype=np.int32 if n < 2**31 else np.int64)
    index = np.empty(n, dtype=np.int32 if diag.size < 2**31 else np.int64)
    cell = np.empty(n, dtype=np.int64)
    _number_grid(diag, offset, node, index, cell)
    steps = np.where(np.asarray(halved, dtype=np.bool_), 2, 1).astype(np.int64)
    cx, cy, cz = (int(v) for v in coarse_shape)
    cshape = np.array([cx, cy, cz], dtype=np.int64)
    ncomp = np.empty(cx * cy * cz + 1, dtype=np.int64)
    nnode = np.empty(cx * cy * cz + 1, dtype=np.int64)
    agg = np.empty(n, dtype=np.int64)  # each node's root first, its component at the end
    grid = (node, cell, lx, ly, lz)
    links, small = _block_components(
        node, lx, ly, lz, steps, cshape, strength, merge_below, agg, ncomp[1:], nnode[1:]
    )
    ncomp[0] = nnode[0] = 0
    nstart, cstart = np.cumsum(nnode, out=nnode), np.cumsum(ncomp, out=ncomp)
    m = int(cstart[-1])
    mstart, members = np.empty(m + 1, dtype=np.int64), np.empty(n, dtype=index.dtype)
    cblock = np.empty(m, dtype=np.int64)
    _number_in_blocks(node, steps, cshape, agg, cstart, nstart, mstart, members, cblock)
    mstart[m] = n
    del cstart, nstart
    if merge_below > 1 and small > 0:
        best = _best_links(node, cell, lx, ly, lz, agg, mstart, members, strength, merge_below)
        final, m = _merge_components(mstart, members, best)
        if len(final):
            mstart, members, cblock = _merged_members(agg, mstart, members, cblock, final, m)
            _renumber(agg, final)
    cd, counts, most = _component_sums(mstart, members, agg, diag, *grid, _CHUNK)
    kstart, kmembers, cindptr, ccoords, cdiag = keep_components(
        agg, mstart, members, counts, cblock, cd, scale, cy, cz
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
