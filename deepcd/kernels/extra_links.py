"""A grid level's links that are no face of its grid (numba, serial).

A coarse level in grid form (`deepcd.nn.multigrid.grid_form`) is a 7-point stencil on its
block grid plus, where a one-node component joined a neighbouring block's
(`deepcd.nn.multigrid.MERGE_BELOW`), a few links between cells that are not face neighbours
(`deepcd.nn.multigrid.ExtraLinks`: smoke-obstacles seed 1, bunny and pool at 128³ have
0.05–0.1 % of level 1's links so). The grid kernels apply the stencil; these add the rest to
their output afterwards (the wavefront smoother adds them row by row itself,
`deepcd.kernels.smoother.clenshaw_wavefront_extra`): each is a linear term that reads one
array and adds to another, so the sum is the level's whole operator. Rows (`rows`, flat
cells) with their links in CSR order (`ptr`, `cols` flat cells); serial, since they are few.
"""

from __future__ import annotations

import numba as nb

from deepcd.kernels.ell import _in_dtype


@nb.njit(cache=True)
def extra_add(v, rows, ptr, cols, weight, alpha, s, use_s, out):
    """out[r] += α · Σ_p weight[p] · v[cols[p]] for each row r = rows[k] (p in its CSR range),
    times s[r] when use_s; v, s, out flat (cells,) in one dtype, weight (nnz,) in it too."""
    a, zero, _ = _in_dtype(out, alpha, 0.0)
    for k in range(rows.shape[0]):
        acc = zero
        for p in range(ptr[k], ptr[k + 1]):
            acc += weight[p] * v[cols[p]]
        r = rows[k]
        out[r] += a * acc * s[r] if use_s else a * acc


@nb.njit(cache=True)
def extra_axis_add(v, rows, ptr, cols, nweight, axis, a, omega, out):
    """out[r] += ω · Σ_{p: axis[p] = a} ŵ[p] · v[cols[p]]: the links along grid axis a of a
    transfer smoothing S_a = I − ω L̂_a (its degree, which counts them, is on the grid)."""
    om, zero, _ = _in_dtype(out, omega, 0.0)
    for k in range(rows.shape[0]):
        acc = zero
        for p in range(ptr[k], ptr[k + 1]):
            if axis[p] == a:
                acc += nweight[p] * v[cols[p]]
        out[rows[k]] += om * acc
