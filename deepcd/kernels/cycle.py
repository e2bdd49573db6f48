"""Level 0 of the V-cycle between its smoothings, fused plane by plane (CPU inference).

Unfused, `VCycleNet._cycle` on a grid level runs seven passes between the pre- and the
post-smoother: the residual r − A x, the restriction's transfer smoothing and its sum into
the coarse vector; on the way back the prolongation's copy and smoothing, the correction
x + c·P e and the residual of the new x. Here they are two, each over x-planes:

- `residual_restrict`: the residual plane by plane into a ring of three planes, each plane
  smoothed across x (from the ring) and within itself, then added into the coarse vector;
- `prolong_correct`: the correction gathered from the coarse vector and smoothed within
  each plane into a ring, smoothed across x, added to x (into a ring of the new x, and out),
  and the residual of the new x computed from that ring.

r, x, the stencil and the transfer weights are read once; the intermediates stay in a few
planes per thread. Arrays are the (planes, ny, nz) view the wavefront sweeps
(`deepcd.nn.fastpath._sweep_shape`: a 2D level as (nx, 1, ny)); transfer weights and flags as
`deepcd.kernels.aggregate.grid_transfer_smooth` takes them, less the degrees. A thread's
planes recompute the one or two planes beside them that the passes across x read, so every
plane is written by one thread only.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(inline="always")
def _rows_beside(a, w, j, zero, zw):
    """Row j's neighbours along y in a plane a (ny, nz) and their faces in w (ny − 1, nz):
    (a, j − 1, w, j − 1, a, j + 1, w, j), with the (1, nz) zero rows `zero`, `zw` and index 0
    on the side past the plane's edge — rows read by index, as the loops below want them."""
    ny = a.shape[0]
    sm, jsm, wm, jwm = (a, j - 1, w, j - 1) if j > 0 else (zero, 0, zw, 0)
    sp, jsp, wp, jwp = (a, j + 1, w, j) if j < ny - 1 else (zero, 0, zw, 0)
    return sm, jsm, wm, jwm, sp, jsp, wp, jwp


@nb.njit(inline="always")
def _residual_plane(r, xm, xc, xp, d, wm, wp, fy, fz, dst):
    """dst = r − A x on one x-plane: r, xc, d, dst (ny, nz) the plane's right-hand side,
    iterate, diagonal and output; xm, xp the iterate's planes before and after it and wm, wp
    their faces (zero planes past the grid's edge); fy (ny − 1, nz) and fz (ny, nz − 1) the
    plane's own faces. Rows are read by index (a row view costs more than a short row)."""
    ny, nz = xc.shape
    zero = np.zeros((1, nz), dtype=xc.dtype)
    zf = np.zeros((1, nz), dtype=fy.dtype)
    for j in range(ny):
        sm, jsm, gm, jgm, sp, jsp, gp, jgp = _rows_beside(xc, fy, j, zero, zf)
        for k in range(nz):
            acc = (
                d[j, k] * xc[j, k]
                - wm[j, k] * xm[j, k]
                - wp[j, k] * xp[j, k]
                - gm[jgm, k] * sm[jsm, k]
                - gp[jgp, k] * sp[jsp, k]
            )
            if k > 0:
                acc -= fz[j, k - 1] * xc[j, k - 1]
            if k < nz - 1:
                acc -= fz[j, k] * xc[j, k + 1]
            dst[j, k] = r[j, k] - acc


# A transfer smoothing S_a = I − ω L̂_a: (S_a v)_i = v_i + ω Σ_faces ŵ (v_nbr − v_i) over
# cell i's two faces along axis a — `grid_transfer_smooth`'s step with the degree g_a (the sum
# of those two ŵ) left out of the memory traffic: a fifth of what these passes read.


@nb.njit(inline="always")
def _across(xm, xc, xp, wm, wp, omega, dst):
    """dst = S_x xc for x-planes (ny, nz): xm, xp the planes beside it, wm, wp their faces
    (zero planes past the grid's edge)."""
    ny, nz = xc.shape
    for j in range(ny):
        for k in range(nz):
            v = xc[j, k]
            dst[j, k] = v + omega * (wm[j, k] * (xm[j, k] - v) + wp[j, k] * (xp[j, k] - v))


@nb.njit(inline="always")
def _within(src, w, omega, along_z, dst):
    """dst = S_z src (along_z) or S_y src within one x-plane: src, dst (ny, nz); w the
    plane's faces along that axis, (ny, nz − 1) or (ny − 1, nz)."""
    ny, nz = src.shape
    if along_z:
        for j in range(ny):
            if nz == 1:
                dst[j, 0] = src[j, 0]
                continue
            dst[j, 0] = src[j, 0] + omega * (w[j, 0] * (src[j, 1] - src[j, 0]))
            for k in range(1, nz - 1):
                v = src[j, k]
                dst[j, k] = v + omega * (
                    w[j, k - 1] * (src[j, k - 1] - v) + w[j, k] * (src[j, k + 1] - v)
                )
            k = nz - 1
            dst[j, k] = src[j, k] + omega * (w[j, k - 1] * (src[j, k - 1] - src[j, k]))
        return
    zero = np.zeros((1, nz), dtype=src.dtype)
    zw = np.zeros((1, nz), dtype=w.dtype)
    for j in range(ny):
        sm, jsm, wm, jwm, sp, jsp, wp, jwp = _rows_beside(src, w, j, zero, zw)
        for k in range(nz):
            v = src[j, k]
            dst[j, k] = v + omega * (wm[jwm, k] * (sm[jsm, k] - v) + wp[jwp, k] * (sp[jsp, k] - v))


@nb.njit(inline="always")
def _in_plane_both(src, w1, o1, use1, w2, o2, use2, z_first, tmp, dst):
    """dst = the in-plane transfer smoothings of src: S_z S_y (z_first False, a restriction)
    or S_y S_z (z_first, a prolongation) for the axes in use; tmp a scratch plane."""
    if use1 and use2:
        if z_first:
            _within(src, w2, o2, True, tmp)
            _within(tmp, w1, o1, False, dst)
        else:
            _within(src, w1, o1, False, tmp)
            _within(tmp, w2, o2, True, dst)
    elif use1:
        _within(src, w1, o1, False, dst)
    elif use2:
        _within(src, w2, o2, True, dst)
    else:
        dst[:, :] = src


@nb.njit(parallel=True, cache=True)
def residual_restrict(
    r, x, d, fx, fy, fz, w0, w1, w2, om0, om1, om2, use, agg, splits, slot, check, shared,
    priv, out,
):  # fmt: skip
    """out += Pᵀ(r − A x) on a grid level: the residual, the restriction's transfer smoothing
    S_z S_y S_x (the axes with use[a]; ω_a = om_a) and the sum into each cell's coarse node
    agg (−1: none), in one pass.

    r, x, d, agg (nx, ny, nz); the stencil's faces fx (nx − 1, ny, nz), fy, fz; transfer
    faces w_a as `grid_transfer_smooth` takes them (not its degrees g_a); out (m,) the coarse
    vector, in x's dtype, zeroed by the caller. Threads take the planes [splits[c],
    splits[c + 1]) (`plane_splits`: even); a coarse node with cells in two threads' planes
    (merged components reach past their block) has slot[node] ≥ 0, and on the planes with
    such cells (check) each thread adds into its own row priv[c] (nchunks, len(shared),
    zeroed by the caller), summed into out[shared] afterwards."""
    nx, ny, nz = x.shape
    zero = np.zeros((ny, nz), dtype=x.dtype)
    zf = np.zeros((ny, nz), dtype=d.dtype)
    zw = np.zeros((ny, nz), dtype=w0.dtype)
    oms = np.empty(3, dtype=x.dtype)  # ω in the arrays' dtype: float32 stays float32
    oms[0], oms[1], oms[2] = om0, om1, om2
    o0, o1, o2 = oms[0], oms[1], oms[2]
    across = use[0]
    nchunks = splits.shape[0] - 1
    for c in nb.prange(nchunks):
        a, b = splits[c], splits[c + 1]
        ring = np.empty((3, ny, nz), dtype=x.dtype)
        buf = np.empty((3, ny, nz), dtype=x.dtype)
        own = priv[c]
        lo, hi = (max(a - 1, 0), min(b + 1, nx)) if across else (a, b)
        for p in range(lo, hi + 1):
            if p < hi:  # the residual of plane p
                xm, wm = (x[p - 1], fx[p - 1]) if p > 0 else (zero, zf)
                xp, wp = (x[p + 1], fx[p]) if p < nx - 1 else (zero, zf)
                _residual_plane(r[p], xm, x[p], xp, d[p], wm, wp, fy[p], fz[p], ring[p % 3])
            i = p - 1 if across else p  # the plane finished now
            if i < a or i >= b:
                continue
            src = ring[i % 3]
            if across:
                rm, wm = (ring[(i - 1) % 3], w0[i - 1]) if i > 0 else (zero, zw)
                rp, wp = (ring[(i + 1) % 3], w0[i]) if i < nx - 1 else (zero, zw)
                _across(rm, src, rp, wm, wp, o0, buf[0])
                src = buf[0]
            _in_plane_both(src, w1[i], o1, use[1], w2[i], o2, use[2], False, buf[1], buf[2])
            v, ai = buf[2], agg[i]
            if check[i]:  # cells of nodes that other threads add to as well
                for j in range(ny):
                    for k in range(nz):
                        node = ai[j, k]
                        if node >= 0:
                            sl = slot[node]
                            if sl >= 0:
                                own[sl] += v[j, k]
                            else:
                                out[node] += v[j, k]
                continue
            for j in range(ny):
                for k in range(nz):
                    node = ai[j, k]
                    if node >= 0:
                        out[node] += v[j, k]
    for c in range(nchunks):
        for sl in range(shared.shape[0]):
            out[shared[sl]] += priv[c, sl]


@nb.njit(parallel=True, cache=True)
def prolong_correct(
    xc, agg, w0, w1, w2, om0, om1, om2, use, c, x, r, d, fx, fy, fz, nchunks, x_out, res
):
    """x_out = x + c·P xc and res = r − A x_out on a grid level in one pass: P xc = S_x S_y
    S_z P₀ xc (the axes with use[a]), P₀ the copy of each cell's coarse node agg (−1: 0).

    xc (m,) the coarse correction; arrays as `residual_restrict`; c the correction weight;
    x_out, res (nx, ny, nz) written (x_out may not be x). nchunks x-chunks in parallel."""
    nx, ny, nz = x.shape
    zf = np.zeros((ny, nz), dtype=d.dtype)
    zw = np.zeros((ny, nz), dtype=w0.dtype)
    par = np.empty(4, dtype=x.dtype)
    par[0], par[1], par[2], par[3] = om0, om1, om2, c
    o0, o1, o2, cc = par[0], par[1], par[2], par[3]
    halo = 1 if use[0] else 0  # the planes of P xc beside a plane that S_x reads
    for ch in nb.prange(nchunks):
        a, b = ch * nx // nchunks, (ch + 1) * nx // nchunks
        u = np.empty((3, ny, nz), dtype=x.dtype)  # y-z-smoothed P₀ xc, by plane mod 3
        xn = np.empty((3, ny, nz), dtype=x.dtype)  # x + c·P xc, by plane mod 3
        buf = np.empty((2, ny, nz), dtype=x.dtype)
        # plane p of u, then plane q = p − halo of xn, then the residual of t = q − 1
        for p in range(a - 1 - halo, b + halo + 1):
            up = u[(p + 3) % 3]
            if 0 <= p < nx:
                ap, gat = agg[p], buf[0]
                for j in range(ny):
                    for k in range(nz):
                        node = ap[j, k]
                        gat[j, k] = xc[node] if node >= 0 else 0.0
                _in_plane_both(gat, w1[p], o1, use[1], w2[p], o2, use[2], True, buf[1], up)
            else:
                up[:, :] = 0.0
            q = p - halo
            if q < a - 1:
                continue
            xq = xn[(q + 3) % 3]
            if 0 <= q < nx:
                corr = u[(q + 3) % 3]
                if halo:  # u's planes past the edge are zeros
                    wm = w0[q - 1] if q > 0 else zw
                    wp = w0[q] if q < nx - 1 else zw
                    _across(u[(q + 2) % 3], corr, u[(q + 4) % 3], wm, wp, o0, buf[0])
                    corr = buf[0]
                xv, own = x[q], a <= q < b
                for j in range(ny):
                    for k in range(nz):
                        xq[j, k] = xv[j, k] + cc * corr[j, k]
                if own:
                    x_out[q, :, :] = xq
            else:
                xq[:, :] = 0.0
            t = q - 1
            if a <= t < b:
                wm = fx[t - 1] if t > 0 else zf
                wp = fx[t] if t < nx - 1 else zf
                xm, xp = xn[(t + 2) % 3], xn[(t + 4) % 3]
                _residual_plane(r[t], xm, xn[(t + 3) % 3], xp, d[t], wm, wp, fy[t], fz[t], res[t])


@nb.njit(cache=True)
def _node_planes(agg, m):
    """(first, last) (m,) int64: the first and last x-plane holding cells of each coarse node
    (nx, −1 for a node without cells); agg (nx, ny, nz) each cell's coarse node (−1: none)."""
    nx = agg.shape[0]
    first = np.full(m, nx, dtype=np.int64)
    last = np.full(m, -1, dtype=np.int64)
    for i in range(nx):
        for j in range(agg.shape[1]):
            for k in range(agg.shape[2]):
                node = agg[i, j, k]
                if node >= 0:
                    first[node] = min(first[node], i)
                    last[node] = max(last[node], i)
    return first, last


def plane_splits(agg: np.ndarray, m: int, nchunks: int):
    """`residual_restrict`'s split of the x-planes among nchunks threads (at most nx): even
    splits (k + 1,) int64, and the coarse nodes with cells on both sides of one (merged
    components reach past their block) — slot (m,) int32, each such node's index in shared
    (−1: none), shared (s,) int64 the nodes, check (nx,) bool the planes holding their cells.
    agg (nx, ny, nz) each cell's coarse node (−1: none) of m."""
    nx = agg.shape[0]
    k = max(1, min(nchunks, nx))
    splits = (np.arange(k + 1, dtype=np.int64) * nx) // k
    first, last = _node_planes(agg, m)
    has = last >= 0
    chunk = np.searchsorted(splits, np.arange(nx), side="right") - 1
    crosses = np.zeros(m, dtype=np.bool_)
    crosses[has] = chunk[first[has]] != chunk[last[has]]
    shared = np.flatnonzero(crosses).astype(np.int64)
    slot = np.full(m, -1, dtype=np.int32)
    slot[shared] = np.arange(len(shared), dtype=np.int32)
    check = np.zeros(nx + 1, dtype=np.int64)
    np.add.at(check, first[shared], 1)
    np.add.at(check, last[shared] + 1, -1)
    return splits, slot, shared, np.cumsum(check)[:nx] > 0
