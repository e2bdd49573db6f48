"""A grid level's stencil normalized for the CPU inference kernels, in one parallel pass each.

The torch forms (`deepcd.nn.fastpath.normalized_grid`, `deepcd.nn.multigrid._grid_axis_weights`)
make a temporary per operation — a dozen passes over the grid, ~1 s of a 256³ setup on two
cores. These compute the same numbers, bit for bit: the same operations in the same order and
precision (products in float64 rounded once to the output's dtype; the transfer weights in
the stencil's own dtype).

Arrays are 3D (2D grids as (1, nx, ny), their x-faces an empty (0, nx, ny) array); faces along
axis a have that axis one shorter than the cells.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def normalize_stencil(s, diag, lx, ly, lz, out_s, out_e, out_x, out_y, out_z):
    """out_s = s, out_e = s·s·diag per cell and out_a = s_lo·w_a·s_hi per face, each product
    in float64 and rounded once to the outputs' dtype. s, diag (nx, ny, nz): the scale
    (diag^-½, 0 off the level's cells) and the diagonal; lx, ly, lz the face weights."""
    nx, ny, nz = s.shape
    for i in nb.prange(nx):
        for j in range(ny):
            for k in range(nz):
                si = np.float64(s[i, j, k])
                out_s[i, j, k] = si
                out_e[i, j, k] = si * si * np.float64(diag[i, j, k])
                if i < nx - 1:
                    out_x[i, j, k] = si * np.float64(lx[i, j, k]) * np.float64(s[i + 1, j, k])
                if j < ny - 1:
                    out_y[i, j, k] = si * np.float64(ly[i, j, k]) * np.float64(s[i, j + 1, k])
                if k < nz - 1:
                    out_z[i, j, k] = si * np.float64(lz[i, j, k]) * np.float64(s[i, j, k + 1])


@nb.njit(inline="always")
def _face_max(wmax, i, j, k, w):
    if w > wmax[i, j, k]:
        wmax[i, j, k] = w


@nb.njit(parallel=True, cache=True)
def largest_face(lx, ly, lz, wmax):
    """wmax (nx, ny, nz) = each cell's largest face weight (0 with none above 0)."""
    nx, ny, nz = wmax.shape
    zero = wmax.dtype.type(0)
    for i in nb.prange(nx):
        for j in range(ny):
            for k in range(nz):
                wmax[i, j, k] = zero
                if i > 0:
                    _face_max(wmax, i, j, k, lx[i - 1, j, k])
                if i < nx - 1:
                    _face_max(wmax, i, j, k, lx[i, j, k])
                if j > 0:
                    _face_max(wmax, i, j, k, ly[i, j - 1, k])
                if j < ny - 1:
                    _face_max(wmax, i, j, k, ly[i, j, k])
                if k > 0:
                    _face_max(wmax, i, j, k, lz[i, j, k - 1])
                if k < nz - 1:
                    _face_max(wmax, i, j, k, lz[i, j, k])


@nb.njit(parallel=True, cache=True)
def _not_binary(w) -> int:
    """How many of the weights w are neither 0 nor 1."""
    nx, ny, nz = w.shape
    other = 0
    for i in nb.prange(nx):
        for j in range(ny):
            for k in range(nz):
                v = w[i, j, k]
                other += 0 if v == 0 or v == 1 else 1
    return other


def binary_faces(lx, ly, lz) -> bool:
    """Whether every face weight is 0 or 1, as a flag Laplacian's are: then each positive
    face's cells have 1 as their largest face, and `axis_weights`' ŵ = w / max(1, 1) are the
    faces themselves (one read of the faces instead of computing ŵ and comparing)."""
    return all(_not_binary(w) == 0 for w in (lx, ly, lz))


@nb.njit(parallel=True, cache=True)
def axis_weights(w, wmax, axis, nlink, deg):
    """Along `axis`: nlink (faces) = w / max(wmax on both sides, 1e-30) where w > 0, else 0,
    and deg (cells) = the sum of a cell's two nlink (its + face first): `_normalized` in grid
    form. w, nlink: faces along axis; wmax, deg (nx, ny, nz) — or deg empty: not written;
    all one dtype."""
    nx, ny, nz = wmax.shape
    with_deg = deg.size > 0
    tiny = wmax.dtype.type(1e-30)
    zero = wmax.dtype.type(0)
    di, dj, dk = int(axis == 0), int(axis == 1), int(axis == 2)
    n = wmax.shape[axis]
    for i in nb.prange(nx):
        for j in range(ny):
            for k in range(nz):
                c = i * di + j * dj + k * dk  # the position along the axis
                total = zero
                if c < n - 1:
                    up = w[i, j, k]
                    u = up / max(max(wmax[i, j, k], wmax[i + di, j + dj, k + dk]), tiny)
                    u = u if up > 0 else zero
                    nlink[i, j, k] = u
                    total = u
                if c > 0:
                    lo = w[i - di, j - dj, k - dk]
                    v = lo / max(max(wmax[i - di, j - dj, k - dk], wmax[i, j, k]), tiny)
                    total = total + (v if lo > 0 else zero)
                if with_deg:
                    deg[i, j, k] = total


# -- a graph level's links (CSR), the same numbers as the numpy forms they replace -------------


@nb.njit(parallel=True, cache=True)
def scaled_links(indptr, indices, weight, s, out):
    """out[p] = s_i·w_p·s_j for each link p = (i, j) of a CSR (float64 products, rounded once
    to out's dtype): `deepcd.nn.fastpath.normalized_graph`'s n_ij."""
    for i in nb.prange(indptr.shape[0] - 1):
        si = s[i]
        for p in range(indptr[i], indptr[i + 1]):
            out[p] = si * weight[p] * s[indices[p]]


@nb.njit(parallel=True, cache=True)
def largest_normalized_links(indptr, indices, weight, out):
    """out[p] = w_p / max(w_max,i, w_max,j, 1e-300) for each link p = (i, j) of a CSR, w_max,i
    node i's largest link weight (0 without links): `deepcd.nn.multigrid._normalized`."""
    n = indptr.shape[0] - 1
    wmax = np.zeros(n)
    for i in nb.prange(n):
        lo, hi = indptr[i], indptr[i + 1]
        if hi > lo:
            top = weight[lo]
            for p in range(lo + 1, hi):
                top = max(top, weight[p])
            wmax[i] = top
    for i in nb.prange(n):
        for p in range(indptr[i], indptr[i + 1]):
            out[p] = weight[p] / max(max(wmax[i], wmax[indices[p]]), 1e-300)
