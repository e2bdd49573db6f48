"""The grid Laplacian's masks from cell flags in one pass (numba, parallel).

`deepcd.nn.stencil.GridLaplacian` builds, per sample of a batch, the FLUID mask, the diagonal
(the count of non-SOLID neighbours of a FLUID cell, cells outside the grid taking their face's
boundary flag) and per axis the face mask (1 where both cells are FLUID). In torch that is
about thirty element-wise passes with a shifted copy of the flags per side; on the CPU this
kernel writes the same numbers (small integers, exact in any float type) in one.
"""

from __future__ import annotations

import numba as nb

from deepcd.problems.flags import FLUID, SOLID


@nb.njit(inline="always")
def _open(f, bc, b, a, side, i, j, k):
    """Whether the neighbour of (i, j, k) across face `side` (0 low, 1 high) of axis a is
    not SOLID (outside the grid: the face's boundary flag bc[b, 2a + side])."""
    _, nx, ny, nz = f.shape
    step = 2 * side - 1
    u, v, w = i + step * (a == 0), j + step * (a == 1), k + step * (a == 2)
    if u < 0 or u >= nx or v < 0 or v >= ny or w < 0 or w >= nz:
        return bc[b, 2 * a + side] != SOLID
    return f[b, u, v, w] != SOLID


@nb.njit(parallel=True, cache=True)
def laplacian_masks(f, bc, first_axis, fluid, diag, lx, ly, lz):
    """fluid, diag (B, nx, ny, nz) and the face masks lx (B, nx−1, ny, nz), ly, lz of int8
    flags f (B, nx, ny, nz); bc (B, 6) int8 the boundary flag of each face (x-lo, x-hi, y-lo,
    …). Axes below `first_axis` have no neighbours: 2D grids come as (B, 1, nx, ny) with
    first_axis 1 (their two axes' faces in bc[:, 2:])."""
    B, nx, ny, nz = f.shape
    for bi in nb.prange(B * nx):
        b, i = bi // nx, bi % nx
        for j in range(ny):
            for k in range(nz):
                on = f[b, i, j, k] == FLUID
                fluid[b, i, j, k] = 1.0 if on else 0.0
                count = 0
                if on:
                    for a in range(first_axis, 3):
                        count += _open(f, bc, b, a, 0, i, j, k)
                        count += _open(f, bc, b, a, 1, i, j, k)
                diag[b, i, j, k] = count
                if i < nx - 1:
                    lx[b, i, j, k] = 1.0 if on and f[b, i + 1, j, k] == FLUID else 0.0
                if j < ny - 1:
                    ly[b, i, j, k] = 1.0 if on and f[b, i, j + 1, k] == FLUID else 0.0
                if k < nz - 1:
                    lz[b, i, j, k] = 1.0 if on and f[b, i, j, k + 1] == FLUID else 0.0
