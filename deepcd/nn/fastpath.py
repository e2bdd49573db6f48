"""CPU inference of the V-cycle's smoother: the same polynomial, fewer passes over memory.

`VCycleNet._smoother` applies S = s·Q(Â)·s with Q(λ) = Σ_j w_j U_j(λ), U_j(λ) =
(1 − T_j(1 − cλ))/λ (degree − 1 in λ), by the U_j recurrence. Here Q is rewritten once per
parameter set in the Chebyshev basis of I − Â, Q(λ) = Σ_k β_k T_k(1 − λ) (interpolation at
`degree` Chebyshev points: exact for this degree), and applied by Clenshaw's recurrence
(`deepcd.kernels.smoother.clenshaw_step`) on the level's *normalized* stencil — e = s²·diag
per unknown and n = s_i·w_ij·s_j per link, derived once per level and scale — so a step reads
b_{k+1}, b_{k+2}, h, e and the links and writes b_k: no running sum, no separate s and diag.
On a grid level `smooth_grid` runs all the steps as one wavefront sweep over x-planes
(`deepcd.kernels.smoother.clenshaw_wavefront`), and `transfer_smooth` a transfer's per-axis
smoothings as one pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from numpy.polynomial import chebyshev as C

# smooth_grid: the wavefront runs when each thread's x-chunk holds at least this many planes
# per Clenshaw step (a chunk recomputes up to m − 1 planes of its neighbours per stage)
WAVEFRONT_PLANES = 2
# The wavefront's ring of intermediate planes should stay in a core's L2 (2 MB here, shared
# with the planes it streams): above RING_UNTILED_MAX bytes it sweeps tiles of rows whose
# widened ring fits in RING_TILE_MAX (`python benchmarks/smoother_bound.py`, tile table).
RING_UNTILED_MAX = 768 << 10
RING_TILE_MAX = 560 << 10
WAVEFRONT_TILES = (64, 32, 16)
# Grid levels with fewer cells run the grid kernels' serial copies: a parallel launch costs
# more than a small level's work (`benchmarks/grid_serial_below.py`, with idle threads that
# spin a little, `deepcd.threads`: one V-cycle at 32³ 2.10 against 2.35 ms with the bound at
# 131,072, at 256² 3.67 against 4.59 ms, the same at 64³ and up; always parallel lost at 16³)
GRID_SERIAL_BELOW = 1 << 15


def _q(lam: np.ndarray, weights: np.ndarray, c: float) -> np.ndarray:
    """Q(λ) = Σ_j w_j U_j(λ) by the scalar recurrence (stable at λ = 0)."""
    u_prev, u = np.zeros_like(lam), np.full_like(lam, c)
    total = weights[0] * u
    for w in weights[1:]:
        u, u_prev = 2.0 * c + 2.0 * (1.0 - c * lam) * u - u_prev, u
        total = total + w * u
    return total


def clenshaw_coefficients(weights, c: float) -> np.ndarray:
    """β (degree,) float64 with Q(λ) = Σ_k β_k T_k(1 − λ) for smoother weights w (degree,)."""
    weights = np.asarray(weights, dtype=np.float64)
    m = len(weights)
    t = np.cos(np.pi * (np.arange(m) + 0.5) / m)  # Chebyshev points in t = 1 − λ
    return C.chebfit(t, _q(1.0 - t, weights, c), m - 1)


def _view(t: torch.Tensor, shape, dt) -> np.ndarray:
    return t.to(dt).contiguous().reshape(shape).numpy()


def normalized_grid(level, scale, dim: int, dt: torch.dtype):
    """(s, e, [n_x, n_y, n_z]) numpy 3D arrays in dt of a grid level (`StencilLevel`) for the
    scale s (a field like level.diag; None: diag^-½), cached on the level per scale."""
    key = ("normalized", dt)
    cached = level.cache.get(key)
    if cached is not None and cached[0] is scale:
        return cached[1]
    s_t = level.inv_sqrt_diag if scale is None else scale
    grid = (1,) * (3 - dim) + tuple(level.shape)
    form = _normalized_host if s_t.device.type == "cpu" else _normalized_torch
    out = form(s_t, level.diag, level.links, grid, dt)
    level.cache[key] = (scale, out)
    return out


def _normalized_torch(s_t, diag, faces, grid, dt: torch.dtype):
    """`normalized_grid` in torch (any device): s_t, diag (1, 1, *g), faces as level.links;
    grid the 3D view's shape."""
    s_t = s_t.to(torch.float64)
    e = _view(s_t * s_t * diag.to(torch.float64), grid, dt)
    lead = (1,) * (len(grid) - (diag.ndim - 2))
    links = []
    for a, w in enumerate(faces):
        ax, n = a + 2, s_t.shape[a + 2]
        lo, hi = s_t.narrow(ax, 0, n - 1), s_t.narrow(ax, 1, n - 1)
        links.append(_view(lo * w.to(torch.float64) * hi, lead + tuple(w.shape[2:]), dt))
    links = [np.zeros((0, *grid[1:]), dtype=e.dtype)] * len(lead) + links  # 2D: no x-faces
    return _view(s_t, grid, dt), e, links


def grid_views(field: torch.Tensor, faces=()) -> tuple[np.ndarray, list[np.ndarray]]:
    """One field's grid tensors — a cell field (1, 1, *g) and face fields faces[a] (1, 1,
    *g with axis a one shorter) — as numpy 3D arrays in their own dtype, as the kernels take
    them: 2D grids as (1, nx, ny), with an empty x-face array first."""
    lead = (1,) * (5 - field.ndim)

    def host(t: torch.Tensor) -> np.ndarray:
        return t.detach().contiguous().numpy().reshape(lead + tuple(t.shape[2:]))

    cells = host(field)
    links = [host(w) for w in faces]
    if links:
        links = [np.zeros((0, *cells.shape[1:]), dtype=links[0].dtype)] * len(lead) + links
    return cells, links


def _normalized_host(s_t, diag, faces, grid, dt: torch.dtype):
    """`_normalized_torch` on the CPU in one parallel pass
    (`deepcd.kernels.normalize.normalize_stencil`: the same numbers)."""
    from deepcd.kernels.normalize import normalize_stencil

    d, links = grid_views(diag, faces)
    np_dt = torch.empty((), dtype=dt).numpy().dtype
    s_in = grid_views(s_t)[0]
    # s in dt already: the kernels read it as it is (its copy would be one more grid field
    # held for the solve; the kernel writes each cell's own value back, harmlessly)
    s = s_in if s_in.dtype == np_dt else np.empty(grid, dtype=np_dt)
    e = np.empty(grid, dtype=np_dt)
    out = [np.empty(w.shape, dtype=np_dt) for w in links]
    normalize_stencil(s_in, d, *links, s, e, *out)
    return s, e, out


def normalized_graph(level, scale, dt: np.dtype):
    """(s, e, nweight) numpy arrays in dt of a `GraphLevel` for scale s ((N, 1) tensor or
    None: diag^-½), cached on the level per scale."""
    key = ("normalized", np.dtype(dt).str)
    cached = level.cache.get(key)
    if cached is not None and cached[0] is scale:
        return cached[1]
    from deepcd.kernels.normalize import scaled_links

    h = level.host
    s = h["s"] if scale is None else scale.to(torch.float64).numpy().reshape(-1)
    nweight = np.empty(len(h["weight"]), dtype=dt)
    scaled_links(h["indptr"], h["indices"], h["weight"], np.ascontiguousarray(s), nweight)
    out = (s.astype(dt), (s * s * h["diag"]).astype(dt), nweight)
    level.cache[key] = (scale, out)
    return out


def smooth(
    step,
    b_shape,
    h: np.ndarray,
    beta: np.ndarray,
    s: np.ndarray,
    operator_args,
    exchange: Callable[[np.ndarray], None] | None = None,
) -> np.ndarray:
    """s·Σ_k β_k T_k(I − Â) h by Clenshaw with `step` (a Clenshaw kernel taking
    (b1, b2, h, *operator_args, beta, two, use_b2, s, use_s, out)). `exchange(b)`, when
    given, refreshes the neighbour copies (halo) of b in place before each step reads them
    (`deepcd.petsc`: the arrays are a rank's block with its ghost layer)."""
    m = len(beta)
    dt = h.dtype
    if m == 1:
        return (beta[0] * h * s).astype(dt)
    b1 = (beta[m - 1] * h).astype(dt)  # b_{m-1}; b_m = 0
    b2 = np.zeros(b_shape, dtype=dt)
    out = np.empty(b_shape, dtype=dt)
    use_b2 = False
    for k in range(m - 2, 0, -1):
        if exchange is not None:
            exchange(b1)
        step(b1, b2, h, *operator_args, float(beta[k]), 2.0, use_b2, s, False, out)
        b2, b1, out = b1, out, b2
        use_b2 = True
    if exchange is not None:
        exchange(b1)
    step(b1, b2, h, *operator_args, float(beta[0]), 1.0, use_b2, s, True, out)
    return out


def _sweep_shape(grid: tuple[int, ...]) -> tuple[int, int, int]:
    """The (planes, ny, nz) view the wavefront sweeps: a 2D (1, nx, ny) grid as (nx, 1, ny)."""
    return (grid[1], 1, grid[2]) if grid[0] == 1 else tuple(grid)


def grid_kernel(kernel, cells: int):
    """A grid kernel for a level of `cells` cells: its serial copy below GRID_SERIAL_BELOW
    (`deepcd.kernels.aggregate.small`)."""
    from deepcd.kernels.aggregate import small

    return small(kernel, cells, GRID_SERIAL_BELOW)


def grid_threads(cells: int) -> int:
    """The threads (x-chunks) a grid kernel runs on a level of `cells` cells."""
    import numba

    return 1 if cells < GRID_SERIAL_BELOW else numba.get_num_threads()


def wavefront_tile(shape: tuple[int, int, int], m: int, itemsize: int, lag: int = 1) -> int:
    """Rows of an x-plane the wavefront sweeps at a time for a degree-m smoother on the
    (planes, ny, nz) view `shape`: all ny while its ring of m − 1 stages × (2·lag + 1) planes
    fits in RING_UNTILED_MAX bytes, else the largest of WAVEFRONT_TILES whose widened ring
    fits in RING_TILE_MAX (`benchmarks/smoother-bound`: 128³ tiles of 32, 256³ of 16). lag:
    the planes a stage runs behind the one before (> 1 with links off the grid)."""
    stages, ny, nz = m - 1, shape[1], shape[2]

    def ring(rows: int) -> int:
        return stages * (2 * lag + 1) * rows * (nz + 2) * itemsize

    if ring(ny) <= RING_UNTILED_MAX:
        return ny
    for tile in WAVEFRONT_TILES:
        if tile < ny and ring(tile + 2 * lag * stages) <= RING_TILE_MAX:
            return tile
    return WAVEFRONT_TILES[-1]


def wavefront_chunks(grid: tuple[int, ...], m: int, lag: int = 1) -> int:
    """How many x-chunks (threads) the wavefront of a degree-m smoother sweeps a grid level
    of shape `grid` in (3D; 2D as (1, nx, ny)) with stages `lag` planes apart: each at least
    WAVEFRONT_PLANES planes per step; 0 when it cannot run (then one pass per step)."""
    if m < 2:
        return 0
    threads = grid_threads(math.prod(grid))
    return min(threads, _sweep_shape(tuple(grid))[0] // (WAVEFRONT_PLANES * (m - 1) * lag))


def wavefront_work(
    cache: dict, grid: tuple[int, ...], dtype, m: int, lag: int = 1
) -> np.ndarray | None:
    """The wavefront's scratch (nchunks, m − 1, 2·lag + 1, rows, nz + 2) for a degree-m
    smoother on a grid level of shape `grid` (3D; 2D as (1, nx, ny)), kept in `cache`: rows
    = ny, or a tile widened by lag·(m − 1) rows on each side where `wavefront_tile` tiles the
    planes; None when the grid has too few x-planes for it (then `smooth_grid` runs one pass
    per step). lag: as `wavefront_tile`."""
    shape = _sweep_shape(grid)
    nchunks = wavefront_chunks(grid, m, lag)
    if nchunks < 1:
        return None
    tile = wavefront_tile(shape, m, np.dtype(dtype).itemsize, lag)
    rows = shape[1] if tile == shape[1] else tile + 2 * lag * (m - 1)
    # (the rows in the key: the benchmark warm-up sweeps one grid tiled and untiled)
    key = ("wavefront", shape, np.dtype(dtype).str, m, nchunks, lag, rows)
    if key not in cache:
        cache[key] = np.empty((nchunks, m - 1, 2 * lag + 1, rows, shape[2] + 2), dtype=dtype)
    return cache[key]


def sweep_extra(cache: dict, grid: tuple[int, ...], extra: tuple, m: int):
    """A level's links off its grid (`ExtraLinks.host`'s arrays) as the wavefront reads them
    on the (planes, ny, nz) view of `grid` — (xptr, xk, xi, xj, xz, xw): per grid row (i, j)
    its links' range, each link's row cell k and other cell (xi, xj, xz), its normalized
    weight — and the lag they need (the farthest plane, and row where the sweep tiles), kept
    in `cache` per dtype."""
    rows, ptr, cols, _, snorm = extra[:5]
    key = ("sweep_extra", tuple(grid), snorm.dtype.str, m)
    if key not in cache:
        shape = _sweep_shape(tuple(grid))
        cell = np.repeat(rows, np.diff(ptr))
        i, j, k = np.unravel_index(cell, shape)
        xi, xj, xz = np.unravel_index(cols, shape)
        row = i * shape[1] + j  # links come sorted by their row cell: rows in order
        xptr = np.zeros(shape[0] * shape[1] + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=shape[0] * shape[1]), out=xptr[1:])
        lag = max(int(np.abs(xi - i).max(initial=0)), 1)
        tile = wavefront_tile(shape, m, snorm.dtype.itemsize, lag)
        if tile < shape[1]:  # tiles: the other cell must be in the widened rows too
            lag = max(lag, int(np.abs(xj - j).max(initial=0)))
        arrays = (*(a.astype(np.int64) for a in (xptr, k, xi, xj, xz)), snorm)
        cache[key] = (lag, arrays)
    return cache[key]


def padded_z_faces(cache: dict, faces: np.ndarray) -> np.ndarray:
    """The z-faces (nx, ny, nz − 1) of a grid level with a zero face at both ends of every
    row, (nx, ny, nz + 1), as `clenshaw_wavefront` reads them; kept in `cache` while `faces`
    is the same array (held there, so its address stays its own)."""
    from deepcd.kernels.smoother import pad_z_faces

    owner = faces if faces.base is None else faces.base
    key = ("z_faces_padded", faces.shape, faces.__array_interface__["data"][0])
    cached = cache.get(key)
    if cached is None or cached[0] is not owner:
        nx, ny, nzf = faces.shape
        out = np.empty((nx, ny, nzf + 2), dtype=faces.dtype)
        pad_z_faces(faces, out)
        cache[key] = cached = (owner, out)
    return cached[1]


def smooth_grid(
    y: np.ndarray,
    beta: np.ndarray,
    s: np.ndarray,
    e: np.ndarray,
    links,
    work_cache=None,
    into: np.ndarray | None = None,
    extra: tuple | None = None,
) -> np.ndarray:
    """s·Σ_k β_k T_k(I − Â)(s·y) on a grid level (3D arrays; 2D as (1, nx, ny), with `links`
    as `normalized_grid` gives them): all steps in one wavefront sweep over x-planes
    (`deepcd.kernels.smoother.clenshaw_wavefront`) when every thread gets at least
    WAVEFRONT_PLANES planes per step, else one `clenshaw_step` pass per step. work_cache: a
    dict that keeps the wavefront's scratch between calls (`wavefront_work`). into: an
    array like y (C-contiguous) that the result is added to, in place, and returned — the
    wavefront's last step adds it there, so a post-smoother's x + S r takes no pass of its
    own. extra: the level's links off its grid (`ExtraLinks.host`'s arrays in y's dtype),
    part of Â (`clenshaw_wavefront_extra`)."""
    from deepcd.kernels import smoother as K

    if into is not None and (into.shape != y.shape or not into.flags.c_contiguous):
        raise ValueError(f"into must be a C-contiguous array of shape {y.shape}")
    cells = y.size
    cache = {} if work_cache is None else work_cache
    lag, xargs = 1, ()
    if extra is not None:
        lag, xargs = sweep_extra(cache, y.shape, extra, len(beta))
    work = wavefront_work(cache, y.shape, y.dtype, len(beta), lag)
    if work is None and extra is not None:
        return smooth_grid_extra(y, beta, s, e, links, extra, into)
    if work is None:
        step = grid_kernel(K.clenshaw_step, cells)
        out = smooth(step, y.shape, (s * y).astype(y.dtype), beta, s, (e, *links))
        if into is None:
            return out
        into += out
        return into
    shape = _sweep_shape(y.shape)
    faces = sweep_faces(cache, y.shape, links)
    y3, s3, e3 = (a.reshape(shape) for a in (y, s, e))
    out = np.empty(shape, dtype=y.dtype) if into is None else into.reshape(shape)
    beta = np.asarray(beta, dtype=np.float64)
    add = into is not None
    args = (y3, s3, e3, *faces, beta, work.shape[0])
    if work.shape[3] == shape[1]:
        kernel = K.clenshaw_wavefront_extra if xargs else K.clenshaw_wavefront
        grid_kernel(kernel, cells)(*args, work, add, out, *xargs)
    else:  # a large plane: tiles of rows (`wavefront_tile`)
        tile = work.shape[3] - 2 * lag * (len(beta) - 1)
        kernel = K.clenshaw_wavefront_tiled_extra if xargs else K.clenshaw_wavefront_tiled
        grid_kernel(kernel, cells)(*args, tile, work, add, out, *xargs)
    return out.reshape(y.shape) if into is None else into


def smooth_grid_extra(
    y: np.ndarray, beta: np.ndarray, s: np.ndarray, e: np.ndarray, links, extra: tuple,
    into: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """`smooth_grid` on a grid level with links off its grid (`ExtraLinks.host`'s arrays):
    one `clenshaw_step` pass per step, each followed by those links' term
    (`deepcd.kernels.extra_links.extra_add`), which the wavefront could not interleave."""
    from deepcd.kernels.extra_links import extra_add
    from deepcd.kernels.smoother import clenshaw_step

    rows, ptr, cols, _, snorm = extra[:5]
    base = grid_kernel(clenshaw_step, y.size)
    flat_s = s.reshape(-1)

    def step(b1, b2, h, *args):  # args: the stencil, β_k, two, use_b2, s, use_s, out
        base(b1, b2, h, *args)
        two, use_s, out = args[-5], args[-2], args[-1]
        extra_add(b1.reshape(-1), rows, ptr, cols, snorm, two, flat_s, use_s, out.reshape(-1))

    out = smooth(step, y.shape, (s * y).astype(y.dtype), beta, s, (e, *links))
    if into is None:
        return out
    into += out
    return into


def sweep_faces(cache: dict, grid: tuple[int, ...], links) -> tuple[np.ndarray, ...]:
    """A grid level's faces (`normalized_grid`'s links) as the wavefront sweeps them: (x, y,
    padded z) of `sweep_links`, the padded z-faces kept in `cache`."""
    fx, fy, fz = sweep_links(grid, links)
    return fx, fy, padded_z_faces(cache, fz)


def sweep_links(grid: tuple[int, ...], links) -> tuple[np.ndarray, ...]:
    """A grid level's faces (3D arrays; 2D as `grid_views` gives them) as (x, y, z) faces of
    its (planes, ny, nz) view (`_sweep_shape`): a 2D level's y-faces become the sweep's
    x-faces, and it has no y-faces."""
    shape = _sweep_shape(tuple(grid))
    if shape != tuple(grid):
        nx, ny = shape[0], shape[2]
        fx = links[1].reshape(nx - 1, 1, ny)
        fy = np.zeros((nx, 0, ny), dtype=links[1].dtype)
        fz = links[2].reshape(nx, 1, ny - 1)
        return fx, fy, fz
    return tuple(links)


def transfer_args(grid: tuple[int, ...], axes: list[int], pairs: list, omegas: list[float]):
    """(view, args) for the grid transfer kernels: view(t) a grid array (3D; 2D as (1, nx,
    ny)) as the kernels sweep it, args (w0, g0, w1, g1, w2, g2, om0, om1, om2, use) their
    per-axis weights, ω and flags for the S_a with a in `axes` (3D numbering); pairs[a] =
    (ŵ_a, degree_a) and omegas[a] per 3D axis a (degree_a None: a dummy, for the fused
    kernels, which do not read it)."""
    if grid[0] == 1 and 0 not in axes:  # 2D as (1, nx, ny): sweep its x as planes

        def view(t: np.ndarray) -> np.ndarray:
            return t.reshape(t.shape[1], 1, t.shape[2])

        place = {1: 0, 2: 2}
        planes = grid[1]
    else:

        def view(t: np.ndarray) -> np.ndarray:
            return t

        place = {0: 0, 1: 1, 2: 2}
        planes = grid[0]
    dummy = np.zeros((planes, 1, 1), dtype=pairs[axes[0]][0].dtype)
    w, g, om = [dummy] * 3, [dummy] * 3, [0.0] * 3
    use = np.zeros(3, dtype=np.bool_)
    for a in axes:
        b = place[a]
        w[b], g[b] = (dummy if t is None else np.ascontiguousarray(view(t)) for t in pairs[a])
        om[b], use[b] = float(omegas[a]), True
    return view, (w[0], g[0], w[1], g[1], w[2], g[2], *om, use)


def transfer_smooth(v: np.ndarray, axes: list[int], pairs: list, omegas: list[float]) -> np.ndarray:
    """S_{axes[-1]} ⋯ S_{axes[0]} v on a grid level (3D arrays; 2D as (1, nx, ny)) in one
    pass (`deepcd.kernels.aggregate.grid_transfer_smooth`): axes (3D numbering) increasing
    (a restriction) or decreasing (a prolongation); pairs[a] = (ŵ_a, degree_a) and omegas[a]
    per 3D axis a."""
    from deepcd.kernels.aggregate import grid_transfer_smooth

    if sorted(axes) != list(axes) and sorted(axes, reverse=True) != list(axes):
        raise ValueError(f"axes must be increasing or decreasing, got {axes}")
    view, args = transfer_args(v.shape, axes, pairs, omegas)
    v3 = view(v)
    reverse = len(axes) > 1 and axes[0] > axes[-1]
    nchunks = max(1, min(grid_threads(v3.size), v3.shape[0]))
    out = np.empty_like(v3)
    kernel = grid_kernel(grid_transfer_smooth, v3.size)
    kernel(v3, *args, reverse, nchunks, out)
    return out.reshape(v.shape)


def residual_restrict(
    r: np.ndarray, x: np.ndarray, diag: np.ndarray, links, transfer, agg: np.ndarray, m: int, cache
) -> np.ndarray:
    """Pᵀ(r − A x) (m,) on a grid level in one pass (`deepcd.kernels.cycle.residual_restrict`):
    r, x, diag 3D arrays (2D as (1, nx, ny)) with the stencil's `links` as `grid_views` gives
    them; transfer = `transfer_args`' args for the restriction; agg (cells,) int32
    each cell's coarse node of m (−1: none); cache keeps the threads' plane splits."""
    from deepcd.kernels.cycle import residual_restrict as kernel

    shape = _sweep_shape(x.shape)
    splits, slot, shared, check = restrict_splits(cache, x.shape, agg, m)
    out = np.zeros(m, dtype=x.dtype)
    priv = np.zeros((len(splits) - 1, len(shared)), dtype=x.dtype)
    fx, fy, fz = sweep_links(x.shape, links)
    rv, xv, dv = (a.reshape(shape) for a in (r, x, diag))
    args = (*_faces_only(transfer), agg.reshape(shape), splits, slot, check, shared, priv, out)
    grid_kernel(kernel, x.size)(rv, xv, dv, fx, fy, fz, *args)
    return out


def restrict_splits(cache: dict, grid: tuple[int, ...], agg: np.ndarray, m: int) -> tuple:
    """`residual_restrict`'s plane splits and shared coarse nodes on a grid level (`grid`
    its 3D shape) with coarse map agg (cells,) of m nodes (`deepcd.kernels.cycle.plane_splits`),
    kept in `cache` while agg is the same array."""
    from deepcd.kernels.cycle import plane_splits

    shape = _sweep_shape(tuple(grid))
    threads = min(grid_threads(math.prod(shape)), shape[0])
    key = ("plane_splits", threads)
    cached = cache.get(key)
    if cached is None or cached[0] is not agg:
        cache[key] = cached = (agg, plane_splits(agg.reshape(shape), m, threads))
    return cached[1]


def _faces_only(transfer: tuple) -> tuple:
    """`transfer_args`' args without the degrees g_a, which the fused kernels derive."""
    w0, _, w1, _, w2, _, *rest = transfer
    return (w0, w1, w2, *rest)


def prolong_correct(
    xc: np.ndarray, agg: np.ndarray, transfer, c: float, x: np.ndarray, r: np.ndarray,
    diag: np.ndarray, links,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(x + c·P xc, r − A(x + c·P xc)) on a grid level in one pass
    (`deepcd.kernels.cycle.prolong_correct`): xc (m,) the coarse correction, transfer the
    prolongation's `transfer_args` args, the rest as `residual_restrict`."""
    from deepcd.kernels.cycle import prolong_correct as kernel

    shape = _sweep_shape(x.shape)
    x_out, res = np.empty(shape, dtype=x.dtype), np.empty(shape, dtype=x.dtype)
    fx, fy, fz = sweep_links(x.shape, links)
    rv, xv, dv = (a.reshape(shape) for a in (r, x, diag))
    nchunks = max(1, min(grid_threads(x.size), shape[0]))
    grid_kernel(kernel, x.size)(
        xc,
        agg.reshape(shape),
        *_faces_only(transfer),
        c,
        xv,
        rv,
        dv,
        fx,
        fy,
        fz,
        nchunks,
        x_out,
        res,
    )
    return x_out.reshape(x.shape), res.reshape(x.shape)
