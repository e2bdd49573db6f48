"""Matrix-free 7-point pressure Laplacian on a fluid-index grid (numba, parallel).

The stencil form is `index` (int32 grid, -1 off FLUID cells) plus `diag` (uint8 per unknown,
the count of non-SOLID neighbours): about 5 bytes per cell instead of ~90 per CSR row.
2D grids use a (1, nx, ny) view of the index, so the innermost loop runs along y.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(inline="always")
def _row(index, diag, x, i, j, k, n):
    nx, ny, nz = index.shape
    s = diag[n] * x[n]
    if i > 0:
        m = index[i - 1, j, k]
        if m >= 0:
            s -= x[m]
    if i < nx - 1:
        m = index[i + 1, j, k]
        if m >= 0:
            s -= x[m]
    if j > 0:
        m = index[i, j - 1, k]
        if m >= 0:
            s -= x[m]
    if j < ny - 1:
        m = index[i, j + 1, k]
        if m >= 0:
            s -= x[m]
    if k > 0:
        m = index[i, j, k - 1]
        if m >= 0:
            s -= x[m]
    if k < nz - 1:
        m = index[i, j, k + 1]
        if m >= 0:
            s -= x[m]
    return s


@nb.njit(parallel=True, cache=True)
def stencil_matvec(index, diag, x, out):
    """out = A x. index: int grid (nx, ny, nz); diag: uint8 (n,); x, out: float64 (n,)."""
    nx, ny, nz = index.shape
    for ij in nb.prange(nx * ny):
        i = ij // ny
        j = ij - i * ny
        for k in range(nz):
            n = index[i, j, k]
            if n >= 0:
                out[n] = _row(index, diag, x, i, j, k, n)


@nb.njit(parallel=True, cache=True)
def stencil_matvec_dot(index, diag, x, out):
    """out = A x and return x·(A x) in the same pass (the curvature CG needs)."""
    nx, ny, nz = index.shape
    total = 0.0
    for ij in nb.prange(nx * ny):
        i = ij // ny
        j = ij - i * ny
        part = 0.0
        for k in range(nz):
            n = index[i, j, k]
            if n >= 0:
                s = _row(index, diag, x, i, j, k, n)
                out[n] = s
                part += x[n] * s
        total += part
    return total


@nb.njit(parallel=True, cache=True)
def stencil_matvec_dots(index, diag, x, out, p0, p1, use1, r):
    """out = A x and, from the same pass, (x·Ax, p0·Ax, p1·Ax, x·r, p0·r, p1·r) — p1's two 0
    unless use1: what DCDM's projection of a new direction x off two stored ones p0, p1 and
    its step need (`deepcd.iterative.dcdm`), with no pass of their own. Arrays as
    `stencil_matvec`; p0, p1, r float64 (n,)."""
    nx, ny, nz = index.shape
    xax = d0 = d1 = xr = e0 = e1 = 0.0
    for ij in nb.prange(nx * ny):
        i = ij // ny
        j = ij - i * ny
        a0 = a1 = a2 = a3 = a4 = a5 = 0.0
        for k in range(nz):
            n = index[i, j, k]
            if n >= 0:
                s = _row(index, diag, x, i, j, k, n)
                out[n] = s
                a0 += x[n] * s
                a1 += p0[n] * s
                a3 += x[n] * r[n]
                a4 += p0[n] * r[n]
                if use1:
                    a2 += p1[n] * s
                    a5 += p1[n] * r[n]
        xax += a0
        d0 += a1
        d1 += a2
        xr += a3
        e0 += a4
        e1 += a5
    return xax, d0, d1, xr, e0, e1


@nb.njit(inline="always")
def _face(w, x, index, i, j, k):
    """w·x at the neighbour (i, j, k) when it holds an unknown and the face a link (w > 0:
    faces without one add nothing, as the CSR has no entry for them)."""
    m = index[i, j, k]
    if m >= 0 and w > 0.0:
        return w * x[m]
    return 0.0


@nb.njit(inline="always")
def _weighted_row(index, diag, wx, wy, wz, x, i, j, k, n):
    nx, ny, nz = index.shape
    s = diag[n] * x[n]
    if i > 0:
        s -= _face(wx[i - 1, j, k], x, index, i - 1, j, k)
    if i < nx - 1:
        s -= _face(wx[i, j, k], x, index, i + 1, j, k)
    if j > 0:
        s -= _face(wy[i, j - 1, k], x, index, i, j - 1, k)
    if j < ny - 1:
        s -= _face(wy[i, j, k], x, index, i, j + 1, k)
    if k > 0:
        s -= _face(wz[i, j, k - 1], x, index, i, j, k - 1)
    if k < nz - 1:
        s -= _face(wz[i, j, k], x, index, i, j, k + 1)
    return s


@nb.njit(parallel=True, cache=True)
def weighted_stencil_matvec_dot(index, diag, wx, wy, wz, x, out):
    """out = A x for a variable-coefficient stencil, and x·(A x) from the same pass (x_i is
    in a register already: the dot costs no memory traffic). index int grid (nx, ny, nz);
    diag float64 (n,) per unknown; wx, wy, wz float64 face weights (the axis one shorter; a
    2D grid's (1, nx, ny) view has an empty x-face array); x, out float64 (n,)."""
    nx, ny, nz = index.shape
    total = 0.0
    for ij in nb.prange(nx * ny):
        i = ij // ny
        j = ij - i * ny
        part = 0.0
        for k in range(nz):
            n = index[i, j, k]
            if n >= 0:
                s = _weighted_row(index, diag, wx, wy, wz, x, i, j, k, n)
                out[n] = s
                part += x[n] * s
        total += part
    return total


@nb.njit(parallel=True, cache=True)
def weighted_stencil_matvec_dots(index, diag, wx, wy, wz, x, out, p0, p1, use1, r):
    """`stencil_matvec_dots` for a variable-coefficient stencil (arrays as
    `weighted_stencil_matvec_dot`)."""
    nx, ny, nz = index.shape
    xax = d0 = d1 = xr = e0 = e1 = 0.0
    for ij in nb.prange(nx * ny):
        i = ij // ny
        j = ij - i * ny
        a0 = a1 = a2 = a3 = a4 = a5 = 0.0
        for k in range(nz):
            n = index[i, j, k]
            if n >= 0:
                s = _weighted_row(index, diag, wx, wy, wz, x, i, j, k, n)
                out[n] = s
                a0 += x[n] * s
                a1 += p0[n] * s
                a3 += x[n] * r[n]
                a4 += p0[n] * r[n]
                if use1:
                    a2 += p1[n] * s
                    a5 += p1[n] * r[n]
        xax += a0
        d0 += a1
        d1 += a2
        xr += a3
        e0 += a4
        e1 += a5
    return xax, d0, d1, xr, e0, e1


def stencil_index_3d(index: np.ndarray) -> np.ndarray:
    """The 3D view the kernels take. A 2D index (nx, ny) becomes (1, nx, ny): the unit axis
    goes first so the contiguous inner loop is long (a trailing unit axis made 2D ~2× slower)."""
    return index[None, :, :] if index.ndim == 2 else index
