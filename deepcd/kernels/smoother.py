"""One step of the V-cycle network's Chebyshev smoother recurrence, fused (numba, parallel).

For the weighted 7-point stencil of a multigrid level — diag (nx, ny, nz) and face weights
lx (nx-1, ny, nz), ly (nx, ny-1, nz), lz (nx, ny, nz-1) — and s = diag^-½ (0 off the level's
unknowns), one pass computes

    â  = s · A(s · u)                         (the normalized operator Â applied to u)
    u' = 2c·hat + 2(u − c·â) − u_prev        (the U_{j+1} recurrence of `VCycleNet._smoother`)
    q += w · u'

reading each array once, where the torch form takes ~15 element-wise passes. 2D levels use a
(1, nx, ny) view. float32 or float64, all arrays of one dtype; u_new must not alias u.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from deepcd.kernels.ell import _in_dtype


@nb.njit(parallel=True, cache=True)
def chebyshev_step(u, u_prev, hat, s, diag, lx, ly, lz, c, w, u_new, q):
    nx, ny, nz = u.shape
    two_c = 2.0 * c
    for i in nb.prange(nx):
        for j in range(ny):
            for k in range(nz):
                si = s[i, j, k]
                if si == 0.0:
                    u_new[i, j, k] = 0.0
                    continue
                acc = diag[i, j, k] * si * u[i, j, k]
                if i > 0:
                    acc -= lx[i - 1, j, k] * s[i - 1, j, k] * u[i - 1, j, k]
                if i < nx - 1:
                    acc -= lx[i, j, k] * s[i + 1, j, k] * u[i + 1, j, k]
                if j > 0:
                    acc -= ly[i, j - 1, k] * s[i, j - 1, k] * u[i, j - 1, k]
                if j < ny - 1:
                    acc -= ly[i, j, k] * s[i, j + 1, k] * u[i, j + 1, k]
                if k > 0:
                    acc -= lz[i, j, k - 1] * s[i, j, k - 1] * u[i, j, k - 1]
                if k < nz - 1:
                    acc -= lz[i, j, k] * s[i, j, k + 1] * u[i, j, k + 1]
                value = two_c * hat[i, j, k] + 2.0 * (u[i, j, k] - c * si * acc) - u_prev[i, j, k]
                u_new[i, j, k] = value
                q[i, j, k] += w * value


@nb.njit(parallel=True, cache=True)
def stencil_residual(r, x, diag, lx, ly, lz, out):
    """out = r − A x for the weighted 7-point stencil of a level (same layout as
    `chebyshev_step`): one pass instead of torch's ~13; x/y neighbours as whole rows, as in
    `clenshaw_step`."""
    nx, ny, nz = x.shape
    zero = np.zeros(nz, dtype=x.dtype)
    zw = np.zeros(nz, dtype=diag.dtype)
    for ij in nb.prange(nx * ny):
        i, j = ij // ny, ij % ny
        xc, o, rr, dd, wz = x[i, j], out[i, j], r[i, j], diag[i, j], lz[i, j]
        xxm = x[i - 1, j] if i > 0 else zero
        xxp = x[i + 1, j] if i < nx - 1 else zero
        wxm = lx[i - 1, j] if i > 0 else zw
        wxp = lx[i, j] if i < nx - 1 else zw
        xym = x[i, j - 1] if j > 0 else zero
        xyp = x[i, j + 1] if j < ny - 1 else zero
        wym = ly[i, j - 1] if j > 0 else zw
        wyp = ly[i, j] if j < ny - 1 else zw
        for k in range(nz):
            acc = (
                dd[k] * xc[k]
                - wxm[k] * xxm[k]
                - wxp[k] * xxp[k]
                - wym[k] * xym[k]
                - wyp[k] * xyp[k]
            )
            if k > 0:
                acc -= wz[k - 1] * xc[k - 1]
            if k < nz - 1:
                acc -= wz[k] * xc[k + 1]
            o[k] = rr[k] - acc


# -- the smoother polynomial by Clenshaw's recurrence on the normalized operator --------------
#
# With Â = s·A·s written as e − N (e = s²·diag per cell, N the normalized couplings
# n = s_i·w_ij·s_j per face), a polynomial Σ_k β_k T_k(I − Â) applied to h is Clenshaw's
# b_k = β_k·h + 2(I − Â)b_{k+1} − b_{k+2}, f = β_0·h + (I − Â)b_1 − b_2: per step one pass
# that reads b_{k+1} (with its neighbours), b_{k+2}, h, e and the face arrays and writes b_k —
# no running sum to read and write as the U_j recurrence of `chebyshev_step` needs.


@nb.njit(parallel=True, cache=True)
def clenshaw_step(b1, b2, h, e, nx_, ny_, nz_, beta, two, use_b2, s, use_s, out):
    """out = β·h + two·(I − Â)b1 − b2 (b2 read only when use_b2), times s when use_s, on a
    grid level (3D arrays; face arrays with their axis one shorter; 2D as (1, nx, ny)).

    The x and y neighbours come as whole rows along z chosen once per (i, j) — a row of zeros
    past the grid's edge — so the inner loop has no branch on them (2× faster than testing
    every cell's position; only the two z ends keep a test)."""
    nx, ny, nz = b1.shape
    zero = np.zeros(nz, dtype=b1.dtype)  # read-only rows past the grid's edge
    zw = np.zeros(nz, dtype=e.dtype)
    beta, two, one = _in_dtype(b1, beta, two)
    for ij in nb.prange(nx * ny):  # (i, j) together: a 2D (1, nx, ny) view runs in parallel too
        i, j = ij // ny, ij % ny
        bc, o, hh, ee, wz = b1[i, j], out[i, j], h[i, j], e[i, j], nz_[i, j]
        bxm = b1[i - 1, j] if i > 0 else zero
        bxp = b1[i + 1, j] if i < nx - 1 else zero
        wxm = nx_[i - 1, j] if i > 0 else zw
        wxp = nx_[i, j] if i < nx - 1 else zw
        bym = b1[i, j - 1] if j > 0 else zero
        byp = b1[i, j + 1] if j < ny - 1 else zero
        wym = ny_[i, j - 1] if j > 0 else zw
        wyp = ny_[i, j] if j < ny - 1 else zw
        b2r = b2[i, j] if use_b2 else zero
        sr = s[i, j]
        for k in range(nz):
            acc = (
                (one - ee[k]) * bc[k]
                + wxm[k] * bxm[k]
                + wxp[k] * bxp[k]
                + wym[k] * bym[k]
                + wyp[k] * byp[k]
            )
            if k > 0:
                acc += wz[k - 1] * bc[k - 1]
            if k < nz - 1:
                acc += wz[k] * bc[k + 1]
            value = beta * hh[k] + two * acc - b2r[k]
            o[k] = value * sr[k] if use_s else value


@nb.njit(parallel=True, cache=True)
def graph_clenshaw_step(b1, b2, h, e, indptr, indices, nweight, beta, two, use_b2, s, use_s, out):
    """`clenshaw_step` on a graph level: nweight the normalized couplings in CSR order."""
    beta, two, one = _in_dtype(b1, beta, two)
    for i in nb.prange(b1.shape[0]):
        acc = (one - e[i]) * b1[i]
        for p in range(indptr[i], indptr[i + 1]):
            acc += nweight[p] * b1[indices[p]]
        value = beta * h[i] + two * acc
        if use_b2:
            value -= b2[i]
        if use_s:
            value *= s[i]
        out[i] = value


# -- all Clenshaw steps in one sweep (temporal blocking) -----------------------------------------
#
# `fastpath.smooth` runs the m − 1 steps of a degree-m smoother as m − 1 passes over the grid,
# each streaming b_{k+1}, b_{k+2}, h, e and the three face arrays from memory. Step k at x-plane
# i needs step k + 1 only at planes i − 1, i, i + 1, so the steps can run as a wavefront: in
# round p, stage t (the t-th step) computes plane p − t. Each stage keeps its last three planes
# in a small ring buffer, so the operator arrays and y are read from memory once per smoother
# and every intermediate b_k stays in cache. Threads take contiguous x-chunks; a chunk also
# computes the planes that its stages need from its neighbours' range (L − t planes on each
# side for stage t), so chunks never wait on each other. A level with links off its grid
# (`deepcd.nn.multigrid.ExtraLinks`, cells up to `lag` planes apart) runs each stage `lag`
# planes behind the one before, with 2·lag + 1 planes per stage in the ring, and adds the
# links' terms row by row (`_extra_row`); the kernels without them pass no links.


@nb.njit(inline="always")
def _plane_or(a, i, n, zero):
    return a[i] if 0 <= i < n else zero


@nb.njit(inline="always")
def _stage_value(
    k, jr, jg, bc, bxm, bxp, wxm, wxp, bym, jmr, wym, jmf, byp, jpr, wyp, jpf, wz, e, y, s, b2, bk,
    two, one,
):  # fmt: skip
    """Cell k of `_stage_row`'s row, before the last stage's factor s."""
    acc = (one - e[jg, k]) * bc[jr, k + 1] + wxm[jg, k] * bxm[jr, k + 1]
    acc += wxp[jg, k] * bxp[jr, k + 1]
    acc += wym[jmf, k] * bym[jmr, k + 1]
    acc += wyp[jpf, k] * byp[jpr, k + 1] + wz[jg, k] * bc[jr, k] + wz[jg, k + 1] * bc[jr, k + 2]
    return bk * (s[jg, k] * y[jg, k]) + two * acc - b2[jr, k + 1]


@nb.njit(inline="always")
def _stage_row(
    jr, jg, bc, bxm, bxp, wxm, wxp, bym, jmr, wym, jmf, byp, jpr, wyp, jpf, wz, e, y, s, b2, bk,
    two, one, last, add, o, jo, at,
):  # fmt: skip
    """Row jg along z of a wavefront stage, on the planes themselves: ring planes (bc, bxm,
    bxp, b2; the y-neighbours bym, byp) at ring row jr (jmr, jpr), grid arrays and y-faces
    (wym, wyp) at grid row jg (jmf, jpf); zero planes past the edges. The ring planes carry
    a zero cell at each end of a row and wz is the padded z-face array (`pad_z_faces`), so
    both z ends are cells like any other: one loop over the whole row, no branch and no
    scalar end cells (at 64³ the two end cells and the vector loop's remainder cost a third
    of the sweep, `benchmarks/smoother-bound`). The result goes to o[jo, k + at] (at = 1 in
    a ring plane, 0 in the output; the last stage adds it there when `add`). Rows are read by
    index, not as row views, whose reference counting costs more than a 64-cell row's
    arithmetic. One loop per kind of store: a branch on `add` inside the loop kept it from
    vectorizing (the sweep 1.25× slower at 128³)."""
    nz = e.shape[1]
    if not last:
        for k in range(nz):
            o[jo, k + at] = _stage_value(
                k, jr, jg, bc, bxm, bxp, wxm, wxp, bym, jmr, wym, jmf, byp, jpr, wyp, jpf, wz, e,
                y, s, b2, bk, two, one,
            )  # fmt: skip
    elif add:
        for k in range(nz):
            o[jo, k + at] += s[jg, k] * _stage_value(
                k, jr, jg, bc, bxm, bxp, wxm, wxp, bym, jmr, wym, jmf, byp, jpr, wyp, jpf, wz, e,
                y, s, b2, bk, two, one,
            )  # fmt: skip
    else:
        for k in range(nz):
            o[jo, k + at] = s[jg, k] * _stage_value(
                k, jr, jg, bc, bxm, bxp, wxm, wxp, bym, jmr, wym, jmf, byp, jpr, wyp, jpf, wz, e,
                y, s, b2, bk, two, one,
            )  # fmt: skip


@nb.njit(inline="always")
def _wavefront_coefficients(beta, dtype):
    """β (m,) then the constants 1 and 2, in the arrays' dtype (float32 stays float32)."""
    L = beta.shape[0] - 1
    coef = np.empty(L + 3, dtype=dtype)
    coef[: L + 1] = beta
    coef[L + 1], coef[L + 2] = 1.0, 2.0
    return coef


@nb.njit(inline="always")
def _zero_row_ends(ring):
    """The zero cell at both ends of every row of a chunk's ring (never written after)."""
    stages, planes, rows, width = ring.shape
    for t in range(stages):
        for q in range(planes):
            for j in range(rows):
                ring[t, q, j, 0] = 0.0
                ring[t, q, j, width - 1] = 0.0


@nb.njit(parallel=True, cache=True)
def pad_z_faces(nz_, out):
    """out (nx, ny, nz + 1) = the z-faces nz_ (nx, ny, nz − 1) with a zero face before the
    first cell and after the last of every row: `clenshaw_wavefront`'s z-face layout."""
    nx, ny, nzp = out.shape
    for i in nb.prange(nx):
        for j in range(ny):
            out[i, j, 0] = 0.0
            for k in range(1, nzp - 1):
                out[i, j, k] = nz_[i, j, k - 1]
            out[i, j, nzp - 1] = 0.0


@nb.njit(inline="always")
def _stage_planes(ring, t, i, L, nx_, ny_, nzp, e, coef, zero, out):
    """What stage t ≥ 1 of the wavefront reads and writes at x-plane i: the ring planes of
    stage t − 1 at i and its x-neighbours (zero planes past the grid), the x-faces beside i,
    stage t − 2 at i (zero for t = 1), the plane's diagonal, y- and padded z-faces, the
    step's coefficients, and where it writes (the output on the last stage). The ring holds
    R = ring.shape[1] planes per stage (3, or 2·lag + 1 with links off the grid)."""
    nx, R = e.shape[0], ring.shape[1]
    cur = ring[t - 1]
    bc = cur[i % R]
    bxm = cur[(i - 1) % R] if i > 0 else zero
    bxp = cur[(i + 1) % R] if i < nx - 1 else zero
    wx_m = _plane_or(nx_, i - 1, nx - 1, zero)
    wx_p = _plane_or(nx_, i, nx - 1, zero)
    b2 = ring[t - 2, i % R] if t >= 2 else zero
    bk = coef[L - t]  # in the arrays' dtype: float32 stays float32
    two = coef[L + 1] if t == L else coef[L + 2]
    o = out[i] if t == L else ring[t, i % R]
    return bc, bxm, bxp, wx_m, wx_p, b2, e[i], ny_[i], nzp[i], bk, two, o


@nb.njit(inline="always")
def _extra_row(prev, r, base, xptr, xk, xi, xj, xz, xw, two, last, s_row, o, jo, at):
    """Grid row r's links off the grid (`deepcd.nn.multigrid.ExtraLinks`) for a wavefront
    stage: o[jo, xk + at] += two · ŝw · (stage t − 1 at the link's other cell), read from
    that stage's ring `prev` (ring row = grid row − base), times s on the last stage — the
    term `deepcd.kernels.extra_links.extra_add` adds after a one-pass step."""
    R = prev.shape[0]
    for q in range(xptr[r], xptr[r + 1]):
        v = two * (xw[q] * prev[xi[q] % R, xj[q] - base, xz[q] + 1])
        k = xk[q]
        o[jo, k + at] += v * s_row[k] if last else v


@nb.njit(inline="always")
def _wavefront_chunk(
    c, y, s, e, nx_, ny_, nzp, coef, L, nchunks, ring, add, out, xptr, xk, xi, xj, xz, xw
):  # fmt: skip
    """`clenshaw_wavefront`'s x-chunk c: its planes and, per stage t, lag·(L − t) of its
    neighbours' on each side (lag = (R − 1) / 2 of the ring's R planes per stage)."""
    nx, ny, nz = y.shape
    lag = (ring.shape[1] - 1) // 2
    one = coef[L + 1]
    zero = np.zeros((ny, nz + 2), dtype=y.dtype)
    extra = xptr.shape[0] > 1
    a, bnd = c * nx // nchunks, (c + 1) * nx // nchunks
    _zero_row_ends(ring)
    for p in range(a - lag * L, bnd + lag * L):
        for t in range(L + 1):
            i = p - lag * t
            if i < max(a - lag * (L - t), 0) or i >= min(bnd + lag * (L - t), nx):
                continue
            si, yi = s[i], y[i]
            if t == 0:
                dst = ring[0, i % ring.shape[1]]
                b0 = coef[L]
                for j in range(ny):
                    for k in range(nz):
                        dst[j, k + 1] = b0 * si[j, k] * yi[j, k]
                continue
            planes = _stage_planes(ring, t, i, L, nx_, ny_, nzp, e, coef, zero, out)
            bc, bxm, bxp, wx_m, wx_p, b2, ei, wyi, wzi, bk, two, o = planes
            for j in range(ny):
                up, down = j > 0, j < ny - 1
                _stage_row(
                    j, j, bc, bxm, bxp, wx_m, wx_p,
                    bc if up else zero, j - 1 if up else 0,
                    wyi if up else zero, j - 1 if up else 0,
                    bc if down else zero, j + 1 if down else 0,
                    wyi if down else zero, j if down else 0,
                    wzi, ei, yi, si, b2, bk, two, one, t == L, add,
                    o, j, 0 if t == L else 1,
                )  # fmt: skip
                if extra:
                    _extra_row(
                        ring[t - 1], i * ny + j, 0, xptr, xk, xi, xj, xz, xw, two, t == L,
                        si[j], o, j, 0 if t == L else 1,
                    )  # fmt: skip


@nb.njit(parallel=True, cache=True)
def clenshaw_wavefront(y, s, e, nx_, ny_, nzp, beta, nchunks, work, add, out):
    """out = s · Σ_k β_k T_k(I − Â)(s·y), Clenshaw's recurrence run as a wavefront over
    x-planes: the result of `fastpath.smooth` with `clenshaw_step` (the same arithmetic per
    cell, up to the order of two additions at the row ends) in one read of y, s, e and the
    faces.

    Grid arrays (nx, ny, nz) (2D: (nx, 1, ny) with an empty y-face array), the z-faces padded
    to (nx, ny, nz + 1) by `pad_z_faces`; beta (m,) float64 with m >= 2; work (nchunks,
    m − 1, 3, ny, nz + 2) scratch in y's dtype (each row with a zero cell at both ends, set
    here); nchunks x-chunks run in parallel (at most nx). add: out += the result (the
    post-smoother's x + S r without a pass of its own) instead of out = it."""
    L = beta.shape[0] - 1  # stages 1..L are the Clenshaw steps; stage 0 is β_{m-1}·h
    coef = _wavefront_coefficients(beta, y.dtype)
    none = np.zeros(1, dtype=np.int64)
    for c in nb.prange(nchunks):
        _wavefront_chunk(
            c, y, s, e, nx_, ny_, nzp, coef, L, nchunks, work[c], add, out,
            none, none, none, none, none, coef,
        )  # fmt: skip


@nb.njit(parallel=True, cache=True)
def clenshaw_wavefront_extra(
    y, s, e, nx_, ny_, nzp, beta, nchunks, work, add, out, xptr, xk, xi, xj, xz, xw
):  # fmt: skip
    """`clenshaw_wavefront` on a level with links off its grid: per grid row (i, j) of the
    (nx, ny, nz) view, xptr (nx·ny + 1,) delimits its links, each from cell (i, j, xk) to
    (xi, xj, xz) with normalized weight xw (y's dtype). work (nchunks, m − 1, 2·lag + 1, ny,
    nz + 2): a stage runs lag planes behind the one before, so that the links' other cells,
    at most lag planes away, are in its ring (`clenshaw_step` then `extra_add` per step, the
    same sums)."""
    L = beta.shape[0] - 1
    coef = _wavefront_coefficients(beta, y.dtype)
    for c in nb.prange(nchunks):
        _wavefront_chunk(
            c, y, s, e, nx_, ny_, nzp, coef, L, nchunks, work[c], add, out,
            xptr, xk, xi, xj, xz, xw,
        )  # fmt: skip


@nb.njit(inline="always")
def _tiled_chunk(
    c, y, s, e, nx_, ny_, nzp, coef, L, nchunks, tile, ring, add, out, xptr, xk, xi, xj, xz, xw
):  # fmt: skip
    """`clenshaw_wavefront_tiled`'s x-chunk c (`_wavefront_chunk`, tile by tile)."""
    nx, ny, nz = y.shape
    lag = (ring.shape[1] - 1) // 2
    one = coef[L + 1]
    zero = np.zeros((max(ny, tile + 2 * lag * L), nz + 2), dtype=y.dtype)
    extra = xptr.shape[0] > 1
    ntiles = (ny + tile - 1) // tile
    a, bnd = c * nx // nchunks, (c + 1) * nx // nchunks
    _zero_row_ends(ring)
    for tl in range(ntiles):
        j0 = tl * tile
        j1 = min(j0 + tile, ny)
        base = j0 - lag * L  # ring row = grid row - base
        for p in range(a - lag * L, bnd + lag * L):
            for t in range(L + 1):
                i = p - lag * t
                if i < max(a - lag * (L - t), 0) or i >= min(bnd + lag * (L - t), nx):
                    continue
                lo = max(j0 - lag * (L - t), 0)
                hi = min(j1 + lag * (L - t), ny)
                si, yi = s[i], y[i]
                if t == 0:
                    dst = ring[0, i % ring.shape[1]]
                    b0 = coef[L]
                    for j in range(lo, hi):
                        jr = j - base
                        for k in range(nz):
                            dst[jr, k + 1] = b0 * si[j, k] * yi[j, k]
                    continue
                planes = _stage_planes(ring, t, i, L, nx_, ny_, nzp, e, coef, zero, out)
                bc, bxm, bxp, wx_m, wx_p, b2, ei, wyi, wzi, bk, two, o = planes
                for j in range(lo, hi):
                    jr = j - base
                    up, down = j > 0, j < ny - 1
                    _stage_row(
                        jr, j, bc, bxm, bxp, wx_m, wx_p,
                        bc if up else zero, jr - 1 if up else 0,
                        wyi if up else zero, j - 1 if up else 0,
                        bc if down else zero, jr + 1 if down else 0,
                        wyi if down else zero, j if down else 0,
                        wzi, ei, yi, si, b2, bk, two, one, t == L, add,
                        o, j if t == L else jr, 0 if t == L else 1,
                    )  # fmt: skip
                    if extra:
                        _extra_row(
                            ring[t - 1], i * ny + j, base, xptr, xk, xi, xj, xz, xw, two,
                            t == L, si[j], o, j if t == L else jr, 0 if t == L else 1,
                        )  # fmt: skip


@nb.njit(parallel=True, cache=True)
def clenshaw_wavefront_tiled(y, s, e, nx_, ny_, nzp, beta, nchunks, tile, work, add, out):
    """`clenshaw_wavefront` sweeping `tile` rows of the x-planes at a time (the same numbers,
    bit for bit): on a large plane the ring of intermediate planes — m − 1 stages × 3 planes
    × ny rows — outgrows the core's L2 (about 1 MB per thread at 128³), and the sweep then runs at
    half its speed. Stage t of a tile computes its rows widened by L − t on each side (what
    the next stages read), so tiles never wait on each other; the x-chunks as before. work
    (nchunks, m − 1, 3, tile + 2(m − 1), nz + 2)."""
    L = beta.shape[0] - 1  # stages 1..L are the Clenshaw steps; stage 0 is β_{m-1}·h
    coef = _wavefront_coefficients(beta, y.dtype)
    none = np.zeros(1, dtype=np.int64)
    for c in nb.prange(nchunks):
        _tiled_chunk(
            c, y, s, e, nx_, ny_, nzp, coef, L, nchunks, tile, work[c], add, out,
            none, none, none, none, none, coef,
        )  # fmt: skip


@nb.njit(parallel=True, cache=True)
def clenshaw_wavefront_tiled_extra(
    y, s, e, nx_, ny_, nzp, beta, nchunks, tile, work, add, out, xptr, xk, xi, xj, xz, xw
):  # fmt: skip
    """`clenshaw_wavefront_tiled` with links off the grid (`clenshaw_wavefront_extra`): rows
    widened by lag·(L − t), work (nchunks, m − 1, 2·lag + 1, tile + 2·lag·(m − 1), nz + 2);
    the links' other cells at most lag planes and lag rows away."""
    L = beta.shape[0] - 1
    coef = _wavefront_coefficients(beta, y.dtype)
    for c in nb.prange(nchunks):
        _tiled_chunk(
            c, y, s, e, nx_, ny_, nzp, coef, L, nchunks, tile, work[c], add, out,
            xptr, xk, xi, xj, xz, xw,
        )  # fmt: skip
