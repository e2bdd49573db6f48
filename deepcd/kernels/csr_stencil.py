"""Reading a 7-point stencil out of a CSR matrix (numba): the rows of a rank's cells, with
their columns as indices into its ghosted block, become the diagonal and the face weights
w = −a_ij per axis (`deepcd.petsc.grid.matrix_stencil`)."""

from __future__ import annotations

import numba as nb


@nb.njit(cache=True)
def csr_to_stencil(indptr, cols, vals, rows, gshape, diag, lx, ly, lz):
    """Row r (cell rows[r] of a C-order block of shape gshape (3,)) has the entries
    cols[indptr[r]:indptr[r+1]] (cells of the block, -1 outside it) and vals. Writes
    diag[cell] and the face arrays lx (gx-1, gy, gz), ly, lz (−a_ij on the face between the
    two cells). Returns (entries that are neither the diagonal nor a face neighbour,
    positive off-diagonal entries) — both 0 for an M-matrix 7-point stencil."""
    gy, gz = gshape[1], gshape[2]
    stray = 0
    positive = 0
    for r in range(rows.shape[0]):
        p = rows[r]
        i, rem = p // (gy * gz), p % (gy * gz)
        j, k = rem // gz, rem % gz
        for t in range(indptr[r], indptr[r + 1]):
            q = cols[t]
            v = vals[t]
            if q == p:
                diag[i, j, k] = v
                continue
            if q < 0:
                if v != 0.0:
                    stray += 1
                continue
            qi, qrem = q // (gy * gz), q % (gy * gz)
            qj, qk = qrem // gz, qrem % gz
            di, dj, dk = qi - i, qj - j, qk - k
            if v > 0.0:
                positive += 1
            if dj == 0 and dk == 0 and (di == 1 or di == -1):
                lx[min(i, qi), j, k] = -v
            elif di == 0 and dk == 0 and (dj == 1 or dj == -1):
                ly[i, min(j, qj), k] = -v
            elif di == 0 and dj == 0 and (dk == 1 or dk == -1):
                lz[i, j, min(k, qk)] = -v
            elif v != 0.0:
                stray += 1
    return stray, positive
