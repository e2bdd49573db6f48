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
    `chebyshev_step`): one pass instead of torch's ~13."""
    nx, ny, nz = x.shape
    for i in nb.prange(nx):
        for j in range(ny):
            for k in range(nz):
                acc = diag[i, j, k] * x[i, j, k]
                if i > 0:
                    acc -= lx[i - 1, j, k] * x[i - 1, j, k]
                if i < nx - 1:
                    acc -= lx[i, j, k] * x[i + 1, j, k]
                if j > 0:
                    acc -= ly[i, j - 1, k] * x[i, j - 1, k]
                if j < ny - 1:
                    acc -= ly[i, j, k] * x[i, j + 1, k]
                if k > 0:
                    acc -= lz[i, j, k - 1] * x[i, j, k - 1]
                if k < nz - 1:
                    acc -= lz[i, j, k] * x[i, j, k + 1]
                out[i, j, k] = r[i, j, k] - acc
