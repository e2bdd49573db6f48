"""The V-cycle's local weights in CPU inference: features and the two small networks fused.

`deepcd.nn.local.LocalWeights` maps a few features of each unknown and link of a level to a
smoother damping g and a transfer weight ω through two 1×1 networks (Linear(3, H)–tanh–
Linear(H, 1)). In torch that is a dozen passes over feature arrays per level, a large share of a
2D solve's setup. These kernels compute the same numbers in one pass each, reading
the level's stencil and writing g or ω:

  grid_node_damping  level 0's g per unknown, from its stencil on the grid
  grid_face_omega    level 0's ω per face along one grid axis (0 where the face has no link)
  graph_local        a graph level's g per node and ω per link, from its CSR

A network comes as (w1 (H, 3), b1 (H,), w2 (H,), b2 (1,)) float32, the layers' own numbers.
Features are rounded to float32 as the torch path stores them; the network runs in float64
over blocks of elements, one hidden unit at a time, with a rational tanh (`_tanh`), so the
loop has no library call and vectorizes. Results match a float32 `LocalWeights` to float32
rounding (2e-6, tested); float64 networks and training keep the torch form.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from deepcd.kernels.grid_aggregate import _flat_cell, node_link_sums

TINY = np.finfo(np.float64).tiny
G_OFFSET = -6.0  # g = 1 + softplus(out + G_OFFSET): ≈ 1.0025 while out = 0 (`deepcd.nn.local`)


# tanh(x) ≈ x·P(x²)/Q(x²) on |x| ≤ 7.905, ±tanh(7.905) beyond: the coefficients of Eigen's
# float32 tanh (Eigen/src/Core/MathFunctionsImpl.h, generic_fast_tanh_float), within 3e-7 of
# tanh everywhere (tests/test_coefficients.py), float32's own rounding. Only mul/add/div, so
# the loop vectorizes: numba's libm tanh has no vector form here without SVML.
_CLAMP = 7.90531110763549805
_P = (
    4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
    -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16,
)  # fmt: skip
_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)


@nb.njit(inline="always")
def _tanh(x):
    c = min(max(x, -_CLAMP), _CLAMP)
    c2 = c * c
    p = _P[6]
    p = p * c2 + _P[5]
    p = p * c2 + _P[4]
    p = p * c2 + _P[3]
    p = p * c2 + _P[2]
    p = p * c2 + _P[1]
    p = p * c2 + _P[0]
    q = _Q[3]
    q = q * c2 + _Q[2]
    q = q * c2 + _Q[1]
    q = q * c2 + _Q[0]
    return c * p / q


_BLOCK = 256  # elements per block: the network runs over a block's features in vector form


@nb.njit(inline="always")
def _mlp_block(f, m, w1, b1, w2, b2, out):
    """out[:m] = Linear(3, H)–tanh–Linear(H, 1) of the feature columns f[:, :m] (float64
    holding float32-rounded features), one hidden unit at a time over the block so the loop
    over elements has no call in it and vectorizes."""
    for e in range(m):
        out[e] = b2[0]
    for h in range(w1.shape[0]):
        c0, c1, c2 = np.float64(w1[h, 0]), np.float64(w1[h, 1]), np.float64(w1[h, 2])
        bh, vh = np.float64(b1[h]), np.float64(w2[h])
        for e in range(m):
            out[e] += vh * _tanh(c0 * f[0, e] + c1 * f[1, e] + c2 * f[2, e] + bh)


@nb.njit(inline="always")
def _put(f, e, f0, f1, f2):
    """Features of element e, rounded to float32 as the torch path stores them."""
    f[0, e] = np.float64(np.float32(f0))
    f[1, e] = np.float64(np.float32(f1))
    f[2, e] = np.float64(np.float32(f2))


@nb.njit(inline="always")
def _ratio_feature(a, b):
    """tanh(¼·|log a − log b|) for a, b > 0, as (√hi − √lo)/(√hi + √lo): no log, no tanh."""
    ra, rb = np.sqrt(a), np.sqrt(b)
    return abs(ra - rb) / (ra + rb)


@nb.njit(parallel=True, cache=True)
def log_floor(d, out):
    """out = log(max(d, 1e-300)) of a 1D array (the features' log-diagonals, once per cell)."""
    for i in nb.prange(d.shape[0]):
        out[i] = np.log(max(d[i], 1e-300))


@nb.njit(inline="always")
def _damping(out):
    """g = 1 + softplus(out + G_OFFSET) (torch's softplus: the identity above 20)."""
    x = out + G_OFFSET
    return 1.0 + (x if x > 20.0 else np.log1p(np.exp(x)))


@nb.njit(inline="always")
def _omega(theta, out):
    """ω = ½·sigmoid(θ + out)."""
    return 0.5 / (1.0 + np.exp(-(theta + out)))


@nb.njit(inline="always")
def _node_features(d, logd, sumw, wmax, wmin, logs, cnt):
    """The three node features from a node's diagonal (and its log) and its links' sums."""
    f0 = min(max(1.0 - sumw / max(d, 1e-300), 0.0), 1.0)
    f1, f2 = 0.0, 0.0
    if cnt > 0:
        f1 = _ratio_feature(wmax, max(wmin, 1e-300))
        f2 = np.tanh(0.25 * (logd - logs / cnt))
    return f0, f1, f2


@nb.njit(parallel=True, cache=True)
def grid_node_damping(diag, logdiag, lx, ly, lz, index, w1, b1, w2, b2, out):
    """out (n,) float32: g of level 0's unknowns (flat cells `index` (n,)) from its stencil
    on the grid (diag (nx, ny, nz), its `log_floor` logdiag, faces lx, ly, lz; 2D as
    (1, nx, ny)) — the features of `deepcd.kernels.grid_aggregate.grid_node_features`
    through the node network."""
    ny, nz = diag.shape[1], diag.shape[2]
    n = index.shape[0]
    for blk in nb.prange((n + _BLOCK - 1) // _BLOCK):
        start = blk * _BLOCK
        m = min(_BLOCK, n - start)
        f = np.empty((3, _BLOCK))
        o = np.empty(_BLOCK)
        for e in range(m):
            x, y, z = _flat_cell(index, start + e, ny, nz)
            sums = node_link_sums(diag, logdiag, lx, ly, lz, x, y, z)
            sumw, logs, wmax, wmin, cnt = sums
            d = diag[x, y, z]
            f0, f1, f2 = _node_features(d, logdiag[x, y, z], sumw, wmax, wmin, logs, cnt)
            _put(f, e, f0, f1, f2)
        _mlp_block(f, m, w1, b1, w2, b2, o)
        for e in range(m):
            out[start + e] = _damping(o[e])


@nb.njit(parallel=True, cache=True)
def grid_face_omega(diag, link, nlink, axis, theta, w1, b1, w2, b2, out):
    """out (float32, link's shape): ω of the faces along grid `axis` (3D numbering; arrays
    3D, 2D as (1, nx, ny)); link and nlink the faces' weights w_ij and ŵ_ij (the face array
    is one shorter along `axis`), 0 where a face has no link. Features as
    `deepcd.nn.local.grid_face_features`."""
    fx, fy, fz = link.shape
    for ij in nb.prange(fx * fy):
        i, j = ij // fy, ij % fy
        f = np.empty((3, fz))
        o = np.empty(fz)
        for k in range(fz):
            w = link[i, j, k]
            d_lo = max(diag[i, j, k], TINY)
            d_hi = max(diag[i + (axis == 0), j + (axis == 1), k + (axis == 2)], TINY)
            f0 = min(max(np.log(max(nlink[i, j, k], TINY)) / 20.0, -1.0), 0.0)
            _put(f, k, f0, _ratio_feature(d_lo, d_hi), w / np.sqrt(max(d_lo * d_hi, TINY)))
        _mlp_block(f, fz, w1, b1, w2, b2, o)
        for k in range(fz):
            out[i, j, k] = _omega(theta, o[k]) if link[i, j, k] > 0.0 else 0.0


@nb.njit(parallel=True, cache=True)
def graph_local(
    d, logd, w, nw, indptr, indices, axis, theta, nw1, nb1, nw2, nb2, ew1, eb1, ew2, eb2, g, omega
):  # fmt: skip
    """A graph level's g (n,) per node and ω (nnz,) per link in CSR order, both float32, from
    its diag d (n,) and its `log_floor` logd, link weights w and normalized ŵ nw (nnz,), CSR
    (indptr, indices), each link's grid axis (nnz,) and θ per axis:
    `deepcd.nn.local.graph_features` through the node and edge networks."""
    n = d.shape[0]
    for blk in nb.prange((n + _BLOCK - 1) // _BLOCK):
        start = blk * _BLOCK
        m = min(_BLOCK, n - start)
        p0, p1 = indptr[start], indptr[start + m]
        fn = np.empty((3, _BLOCK))
        on = np.empty(_BLOCK)
        fe = np.empty((3, max(p1 - p0, 1)))
        oe = np.empty(max(p1 - p0, 1))
        for e in range(m):
            i = start + e
            di = d[i]
            sumw, logs, wmax, wmin = 0.0, 0.0, 0.0, 1.0
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                wp = w[p]
                dj = d[j]
                sumw += wp
                logs += logd[j]
                wmax = wp if p == indptr[i] else max(wmax, wp)
                wmin = wp if p == indptr[i] else min(wmin, wp)
                f0 = min(max(np.log(max(nw[p], 1e-300)) / 20.0, -1.0), 0.0)
                f1 = _ratio_feature(max(di, 1e-300), max(dj, 1e-300))
                _put(fe, p - p0, f0, f1, wp / np.sqrt(max(di * dj, 1e-300)))
            cnt = indptr[i + 1] - indptr[i]
            f0, f1, f2 = _node_features(di, logd[i], sumw, wmax, wmin, logs, cnt)
            _put(fn, e, f0, f1, f2)
        _mlp_block(fe, p1 - p0, ew1, eb1, ew2, eb2, oe)
        for p in range(p0, p1):
            omega[p] = _omega(theta[axis[p]], oe[p - p0])
        _mlp_block(fn, m, nw1, nb1, nw2, nb2, on)
        for e in range(m):
            g[start + e] = _damping(on[e])
