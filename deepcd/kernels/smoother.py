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
                (1.0 - ee[k]) * bc[k]
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
    for i in nb.prange(b1.shape[0]):
        acc = (1.0 - e[i]) * b1[i]
        for p in range(indptr[i], indptr[i + 1]):
            acc += nweight[p] * b1[indices[p]]
        value = beta * h[i] + two * acc
        if use_b2:
            value -= b2[i]
        if use_s:
            value *= s[i]
        out[i] = value
