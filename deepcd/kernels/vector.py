"""Fused vector updates for the Krylov loops (numba, parallel; float64 (n,) arrays).

Each kernel makes one pass over memory where numpy would make two or three.
"""

from __future__ import annotations

import numba as nb


@nb.njit(parallel=True, cache=True)
def dot(x, y):
    """x·y."""
    s = 0.0
    for i in nb.prange(x.size):
        s += x[i] * y[i]
    return s


@nb.njit(parallel=True, cache=True)
def update_solution_residual(x, r, p, ap, alpha):
    """x += alpha p; r -= alpha Ap; return r·r."""
    s = 0.0
    for i in nb.prange(x.size):
        x[i] += alpha * p[i]
        ri = r[i] - alpha * ap[i]
        r[i] = ri
        s += ri * ri
    return s


@nb.njit(parallel=True, cache=True)
def update_direction(p, z, beta):
    """p = z + beta p."""
    for i in nb.prange(p.size):
        p[i] = z[i] + beta * p[i]


@nb.njit(parallel=True, cache=True)
def scale_dot(r, scale, z):
    """z = scale * r (elementwise, the Jacobi preconditioner); return r·z."""
    s = 0.0
    for i in nb.prange(r.size):
        zi = scale[i] * r[i]
        z[i] = zi
        s += r[i] * zi
    return s


@nb.njit(parallel=True, cache=True)
def residual(b, ax, r):
    """r = b - Ax; return r·r."""
    s = 0.0
    for i in nb.prange(b.size):
        ri = b[i] - ax[i]
        r[i] = ri
        s += ri * ri
    return s


@nb.njit(parallel=True, cache=True)
def stream_triad(a, b, c, scalar):
    """a = b + scalar c: the STREAM triad, used to measure the machine's bandwidth floor."""
    for i in nb.prange(a.size):
        a[i] = b[i] + scalar * c[i]
