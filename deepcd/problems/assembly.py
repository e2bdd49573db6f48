"""Assembly of the pressure Laplacian over the FLUID cells of a flag grid.

Unknowns are the FLUID cells in C order. For a fluid cell the diagonal is the number of
non-SOLID neighbours (AIR neighbours are Dirichlet p = 0, SOLID ones Neumann); every FLUID
neighbour contributes -1. Unit spacing: scale by 1/h² outside.

Everything works on a 3D view: a 2D grid (nx, ny) is treated as (nx, ny, 1) with SOLID
faces in z, which adds no coupling and no diagonal term.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from deepcd.problems.flags import AIR, FLUID, SOLID


def as_3d(flags: np.ndarray, boundary: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """View a 2D grid as (nx, ny, 1) with SOLID z faces; 3D grids pass through."""
    if flags.ndim == 2:
        return flags[:, :, None], (*tuple(boundary), SOLID, SOLID)
    return flags, tuple(boundary)


def index_dtype(n_cells: int) -> type:
    """int32 while every index fits, int64 beyond (grids over 2**31 cells)."""
    return np.int32 if n_cells < 2**31 - 1 else np.int64


def fluid_index(flags: np.ndarray) -> tuple[np.ndarray, int]:
    """Grid of unknown numbers: index[cell] = position in the fluid vector, -1 off FLUID cells."""
    fluid = flags == FLUID
    n = int(np.count_nonzero(fluid))
    index = np.full(flags.shape, -1, dtype=index_dtype(flags.size))
    index[fluid] = np.arange(n, dtype=index.dtype)
    return index, n


def _shifted(grid: np.ndarray, axis: int, step: int, fill) -> np.ndarray:
    """out[c] = grid[c + step * e_axis], `fill` where that cell lies outside the grid."""
    out = np.empty_like(grid)
    src = [slice(None)] * grid.ndim
    dst = [slice(None)] * grid.ndim
    edge = [slice(None)] * grid.ndim
    if step < 0:
        dst[axis], src[axis], edge[axis] = slice(1, None), slice(None, -1), slice(0, 1)
    else:
        dst[axis], src[axis], edge[axis] = slice(None, -1), slice(1, None), slice(-1, None)
    out[tuple(dst)] = grid[tuple(src)]
    out[tuple(edge)] = fill
    return out


# Neighbour order that keeps the column indices of every CSR row sorted (C-order numbering).
_NEIGHBOURS = ((0, -1), (1, -1), (2, -1), (2, +1), (1, +1), (0, +1))


def stencil_diagonal(flags: np.ndarray, boundary: tuple[int, ...]) -> np.ndarray:
    """Diagonal of the Laplacian per unknown (uint8, 0..6): the count of non-SOLID neighbours."""
    f3, bc = as_3d(flags, boundary)
    fluid = f3 == FLUID
    diag = np.zeros(int(np.count_nonzero(fluid)), dtype=np.uint8)
    for axis, step in _NEIGHBOURS:
        face = 2 * axis + (step > 0)
        diag += _shifted(f3, axis, step, bc[face])[fluid] != SOLID
    return diag


def laplacian_csr(flags: np.ndarray, boundary: tuple[int, ...]) -> sp.csr_matrix:
    """The pressure Laplacian over FLUID cells as a CSR matrix (float64, sorted indices).

    Fully vectorized: every row's columns come out sorted, so no COO sort is needed.
    """
    f3, bc = as_3d(flags, boundary)
    fluid = f3 == FLUID
    index, n = fluid_index(f3)
    cols = np.empty((n, 7), dtype=index.dtype)
    diag = np.zeros(n, dtype=np.float64)
    slots = (0, 1, 2, 4, 5, 6)  # slot 3 is the diagonal
    for slot, (axis, step) in zip(slots, _NEIGHBOURS, strict=True):
        face = 2 * axis + (step > 0)
        cols[:, slot] = _shifted(index, axis, step, -1)[fluid]
        diag += _shifted(f3, axis, step, bc[face])[fluid] != SOLID
    cols[:, 3] = np.arange(n, dtype=index.dtype)
    present = cols >= 0
    data = np.full((n, 7), -1.0)
    data[:, 3] = diag
    indptr = np.zeros(n + 1, dtype=index_dtype(int(present.sum())))
    np.cumsum(present.sum(axis=1), out=indptr[1:])
    A = sp.csr_matrix((data[present], cols[present], indptr), shape=(n, n))
    A.has_sorted_indices = True
    return A


def closed_regions(flags: np.ndarray, boundary: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """Connected FLUID regions that touch no AIR: the null space of the Laplacian.

    Returns (labels, count): labels is int32 over the unknowns, -1 for cells in regions that
    touch AIR (a cell or a boundary face), 0..count-1 for each closed (singular) region.
    """
    f3, bc = as_3d(flags, boundary)
    fluid = f3 == FLUID
    region, n_regions = ndimage.label(fluid)  # face connectivity
    touches_air = np.zeros(n_regions + 1, dtype=bool)
    for axis, step in _NEIGHBOURS:
        face = 2 * axis + (step > 0)
        air_next = (_shifted(f3, axis, step, bc[face]) == AIR) & fluid
        touches_air[np.unique(region[air_next])] = True
    touches_air[0] = True  # label 0 is "not fluid"
    closed = np.flatnonzero(~touches_air)
    relabel = np.full(n_regions + 1, -1, dtype=np.int32)
    relabel[closed] = np.arange(closed.size, dtype=np.int32)
    return relabel[region[fluid]], int(closed.size)
