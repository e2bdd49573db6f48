"""Fused vector updates for the Krylov loops (numba, parallel; float64 (n,) arrays).

Each kernel makes one pass over memory where numpy would make two or three.

`inner` and `norm` stand in for numpy's `dot` and `linalg.norm` in the solvers: numpy's
OpenBLAS starts its own threads for a long vector, and they keep spinning after the call,
taking the cores from the numba and torch threads that run next — on 2 cores a 6 ms setup
step (a variable-coefficient `GridLaplacian` at 64³) took 11-109 ms right after a solve, and
6-7 ms with OpenBLAS on one thread (probe).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def dot(x, y):
    """x·y."""
    s = 0.0
    for i in nb.prange(x.size):
        s += x[i] * y[i]
    return s


def inner(x: np.ndarray, y: np.ndarray) -> float:
    """x·y of two vectors (n,) in float64, by `dot` (serial below SERIAL_BELOW)."""
    from deepcd.kernels.aggregate import small

    x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    y = np.ascontiguousarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} and {y.size}")
    return float(small(dot, x.size)(x, y))


def norm(x: np.ndarray) -> float:
    """‖x‖₂ of a vector (n,), by `inner`; scaled by max |x_i| where x·x over- or underflows
    (numpy's vector norm, sqrt(x·x), overflows there)."""
    xx = inner(x, x)
    if 1e-290 < xx < 1e290 or xx == 0.0:
        return math.sqrt(xx)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    top = float(np.max(np.abs(x)))
    if not math.isfinite(top) or top == 0.0:
        return top
    return top * math.sqrt(inner(x / top, x / top))


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


@nb.njit(parallel=True, cache=True)
def subtract_scaled(w, aw, c, p, ap):
    """w -= c p; aw -= c Ap (one pass, no temporaries)."""
    for i in nb.prange(w.size):
        w[i] -= c * p[i]
        aw[i] -= c * ap[i]


@nb.njit(parallel=True, cache=True)
def dcdm_step(x, r, u, au, v, av, a, c, b, p, ap):
    """The step of a conjugate-direction loop in one pass: p = a u + c v and Ap likewise
    (u, au not read when a == 0), x += p, r -= Ap. Returns (pᵀAp, r·r, x·b + x·r) — the
    step's curvature, the new residual norm² and −2 × the energy ½xᵀAx − bᵀx."""
    pap = 0.0
    rr = 0.0
    xbr = 0.0
    use_u = a != 0.0
    for i in nb.prange(x.size):
        pi = c * v[i]
        api = c * av[i]
        if use_u:
            pi += a * u[i]
            api += a * au[i]
        p[i] = pi
        ap[i] = api
        pap += pi * api
        xi = x[i] + pi
        ri = r[i] - api
        x[i] = xi
        r[i] = ri
        rr += ri * ri
        xbr += xi * (b[i] + ri)
    return pap, rr, xbr


@nb.njit(parallel=True, cache=True)
def scatter(values, index, out, scale=1.0):
    """out[index[i]] = scale · values[i], cast to out's dtype (a node vector into a grid
    field; DCDM scatters r / ‖r‖ with scale = 1 / ‖r‖)."""
    for i in nb.prange(index.size):
        out[index[i]] = scale * values[i]


@nb.njit(parallel=True, cache=True)
def gather(values, index, out):
    """out[i] = values[index[i]], cast to out's dtype (a grid field's nodes)."""
    for i in nb.prange(index.size):
        out[i] = values[index[i]]


# -- the PCG step of DCDM with an SPD network (`deepcd.iterative.dcdm`) -------------------------


@nb.njit(parallel=True, cache=True)
def gather_checked(values, index, out):
    """out[i] = values[index[i]] as float64; returns (how many are NaN/Inf, how many are not
    zero) — the usability test of a direction, in the same pass."""
    bad = 0
    nonzero = 0
    for i in nb.prange(index.size):
        v = np.float64(values[index[i]])
        out[i] = v
        if not np.isfinite(v):
            bad += 1
        if v != 0.0:
            nonzero += 1
    return bad, nonzero


@nb.njit(parallel=True, cache=True)
def dots2(w, p0, p1, use1):
    """(w·p0, w·p1) in one pass (w·p1 = 0 unless use1)."""
    d0 = 0.0
    d1 = 0.0
    for i in nb.prange(w.size):
        d0 += w[i] * p0[i]
        if use1:
            d1 += w[i] * p1[i]
    return d0, d1


@nb.njit(parallel=True, cache=True)
def subtract2(w, aw, c0, p0, ap0, c1, p1, ap1, use1, r):
    """w −= c0 p0 + c1 p1 and Aw likewise (the p1 terms only when use1), in one pass; returns
    (wᵀAw, wᵀr) of the result."""
    waw = 0.0
    wr = 0.0
    for i in nb.prange(w.size):
        wi = w[i] - c0 * p0[i]
        awi = aw[i] - c0 * ap0[i]
        if use1:
            wi -= c1 * p1[i]
            awi -= c1 * ap1[i]
        w[i] = wi
        aw[i] = awi
        waw += wi * awi
        wr += wi * r[i]
    return waw, wr


@nb.njit(parallel=True, cache=True)
def direction_dots(x, ax, p0, p1, use1, r):
    """(x·Ax, p0·Ax, p1·Ax, x·r, p0·r, p1·r) in one pass (p1's two 0 unless use1): the dots
    `deepcd.kernels.stencil.stencil_matvec_dots` takes in its matvec's pass, for operators
    without such a kernel."""
    xax = d0 = d1 = xr = e0 = e1 = 0.0
    for i in nb.prange(x.size):
        a = ax[i]
        xax += x[i] * a
        d0 += p0[i] * a
        xr += x[i] * r[i]
        e0 += p0[i] * r[i]
        if use1:
            d1 += p1[i] * a
            e1 += p1[i] * r[i]
    return xax, d0, d1, xr, e0, e1


@nb.njit(parallel=True, cache=True)
def project_step(w, aw, c0, p0, ap0, c1, p1, ap1, use1, c, x, r, b):
    """`subtract2` then `step_along` in one pass: w −= c0 p0 + c1 p1 and Aw likewise (the
    p1 terms only when use1), then x += c w, r −= c Aw with the new w. Returns (wᵀAw of the
    new w, r·r, x·b + x·r); c comes from dots taken before the pass (`direction_dots`)."""
    waw = 0.0
    rr = 0.0
    xbr = 0.0
    for i in nb.prange(w.size):
        wi = w[i] - c0 * p0[i]
        awi = aw[i] - c0 * ap0[i]
        if use1:
            wi -= c1 * p1[i]
            awi -= c1 * ap1[i]
        w[i] = wi
        aw[i] = awi
        waw += wi * awi
        xi = x[i] + c * wi
        ri = r[i] - c * awi
        x[i] = xi
        r[i] = ri
        rr += ri * ri
        xbr += xi * (b[i] + ri)
    return waw, rr, xbr


@nb.njit(parallel=True, cache=True)
def step_along(x, r, v, av, c, b):
    """x += c v, r −= c Av in one pass; returns (r·r, x·b + x·r) — `dcdm_step` for a step
    along one direction that is kept as it is (no p = c v written)."""
    rr = 0.0
    xbr = 0.0
    for i in nb.prange(x.size):
        xi = x[i] + c * v[i]
        ri = r[i] - c * av[i]
        x[i] = xi
        r[i] = ri
        rr += ri * ri
        xbr += xi * (b[i] + ri)
    return rr, xbr
