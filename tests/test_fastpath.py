"""The CPU inference path of the V-cycle's smoother (issue 12): Clenshaw on the normalized
stencil against the U_j recurrence it replaces, and setup that a second solve does not pay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deepcd
from deepcd.kernels.smoother import chebyshev_step, clenshaw_step
from deepcd.nn.fastpath import _q, clenshaw_coefficients, normalized_grid, smooth
from deepcd.nn.multigrid import StencilLevel
from deepcd.nn.stencil import GridLaplacian
from deepcd.problems import AIR, from_flags, scene
from tests.test_nn_vcycle import random_problem


@pytest.mark.parametrize("degree", [1, 2, 3, 6])
def test_clenshaw_coefficients_reproduce_the_polynomial(degree):
    rng = np.random.default_rng(degree)
    w = rng.dirichlet(np.ones(degree))
    c = 1 - 2.0**-8
    beta = clenshaw_coefficients(w, c)
    lam = rng.uniform(0.0, 2.0, 50)
    got = np.polynomial.chebyshev.chebval(1.0 - lam, beta)
    np.testing.assert_allclose(got, _q(lam, w, c), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(13, 17), (9, 12, 15), (1, 7, 5), (6, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scaled", [False, True])
def test_clenshaw_smoother_equals_the_recurrence(shape, dtype, scaled):
    """The fused Clenshaw passes give the U_j recurrence's s·Σ w_j U_j(Â) s·y (the kernel
    `chebyshev_step` it replaces) on odd shapes, with and without a damped scale."""
    flags = (
        np.random.default_rng(0).choice([0, 1, 2], size=shape, p=[0.8, 0.1, 0.1]).astype(np.int8)
    )
    problem = from_flags(flags, boundary=AIR)
    lap = GridLaplacian.from_problem(problem, dtype=torch.float64)
    level = StencilLevel.from_parts(lap.diag, lap.links())
    dim = len(shape)
    scale = None
    if scaled:
        g = 1.0 + torch.rand_like(level.diag)
        scale = level.inv_sqrt_diag / g.sqrt()
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    s, e, links = normalized_grid(level, scale, dim, tdt)
    grid = s.shape
    # the reference: the recurrence on the unnormalized stencil
    diag = level.diag.numpy().reshape(grid).astype(dtype)
    raw = [
        w.numpy().reshape((1,) * (3 - dim) + tuple(w.shape[2:])).astype(dtype) for w in level.links
    ]
    if dim == 2:
        raw.insert(0, np.zeros((0, *grid[1:]), dtype=dtype))
    rng = np.random.default_rng(1)
    w = rng.dirichlet(np.ones(6))
    c = 1 - 2.0**-8
    y = rng.standard_normal(grid).astype(dtype)
    hat = (s * y).astype(dtype)
    u, q = (c * hat).astype(dtype), (w[0] * c * hat).astype(dtype)
    up, un = np.zeros_like(u), np.empty_like(u)
    for wj in w[1:]:
        chebyshev_step(u, up, hat, s, diag, *raw, c, wj, un, q)
        up, u, un = u, un, up
    want = s * q
    got = smooth(clenshaw_step, grid, hat, clenshaw_coefficients(w, c), s, (e, *links))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_a_second_solve_on_the_same_grid_pays_no_setup():
    problem = scene("smoke-obstacles", (20, 20, 20), seed=0)
    first = deepcd.solve_result(problem, rtol=1e-6)
    again = deepcd.solve_result(problem.with_rhs(2 * problem.b), rtol=1e-6)
    assert not first.settings["hierarchy_cached"] and first.settings["hierarchy_s"] > 0
    assert again.settings["hierarchy_cached"] and again.iterations == first.iterations
    other = deepcd.solve_result(random_problem((20, 20, 20), seed=9, boundary=AIR), rtol=1e-6)
    assert not other.settings["hierarchy_cached"]  # another grid: its own levels
    assert again.settings["jit_compile_s"] == 0.0  # nothing left to compile


def test_compile_clock_counts_a_compilation_once():
    import numba as nb

    from deepcd.kernels.jit import compile_seconds

    @nb.njit
    def inner(x):
        return x.sum()

    @nb.njit
    def outer(x):
        return inner(x) + 1.0

    before = compile_seconds()
    outer(np.ones(3))
    spent = compile_seconds() - before
    assert spent > 0
    outer(np.ones(3))  # compiled: the clock stands still
    assert compile_seconds() - before == spent


def _normalized_level(shape, dtype, seed=0):
    flags = (
        np.random.default_rng(seed).choice([0, 1, 2], size=shape, p=[0.8, 0.1, 0.1]).astype(np.int8)
    )
    lap = GridLaplacian.from_problem(from_flags(flags, boundary=AIR), dtype=torch.float64)
    level = StencilLevel.from_parts(lap.diag, lap.links())
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    return normalized_grid(level, None, len(shape), tdt)


@pytest.mark.parametrize(
    "shape", [(13, 17), (64, 9), (40, 33, 21), (23, 5, 2), (25, 7, 1), (12, 1, 6), (9, 12, 15)]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("degree", [2, 3, 6])
def test_wavefront_smoother_equals_one_pass_per_step(shape, dtype, degree):
    """`smooth_grid` (every Clenshaw step in one sweep over x-planes, or the per-step passes
    when there are too few planes: the last shape) gives `smooth` with `clenshaw_step`, on
    odd shapes, z extents of 1 and 2 and 2D grids included."""
    from deepcd.nn.fastpath import smooth_grid

    s, e, links = _normalized_level(shape, dtype)
    rng = np.random.default_rng(2)
    y = rng.standard_normal(s.shape).astype(dtype)
    beta = clenshaw_coefficients(rng.dirichlet(np.ones(degree)), 1 - 2.0**-8)
    want = smooth(clenshaw_step, s.shape, (s * y).astype(dtype), beta, s, (e, *links))
    cache: dict = {}
    got = smooth_grid(y, beta, s, e, links, cache)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    assert got.dtype == dtype and got.shape == y.shape
    np.testing.assert_array_equal(smooth_grid(y, beta, s, e, links, cache), got)  # reused


@pytest.mark.parametrize("nchunks", [1, 2, 3, 5])
def test_wavefront_chunks_give_the_same_sweep(nchunks):
    """The x-chunks recompute their neighbours' planes: any chunk count, the same result."""
    from deepcd.kernels.smoother import clenshaw_wavefront
    from deepcd.nn.fastpath import padded_z_faces

    s, e, (fx, fy, fz) = _normalized_level((31, 6, 7), np.float64, seed=4)
    y = np.random.default_rng(5).standard_normal(s.shape)
    beta = clenshaw_coefficients(np.random.default_rng(6).dirichlet(np.ones(6)), 1 - 2.0**-8)
    want = smooth(clenshaw_step, s.shape, s * y, beta, s, (e, fx, fy, fz))
    out = np.empty_like(y)
    work = np.full((nchunks, 5, 3, 6, 7 + 2), np.nan)  # stale scratch must never be read
    clenshaw_wavefront(y, s, e, fx, fy, padded_z_faces({}, fz), beta, nchunks, work, False, out)
    np.testing.assert_allclose(out, want, rtol=1e-13, atol=1e-13 * np.abs(want).max())
    # add: the last step adds into out (a post-smoother's x + S r), the same sums
    x = np.random.default_rng(7).standard_normal(s.shape)
    acc = x.copy()
    clenshaw_wavefront(y, s, e, fx, fy, padded_z_faces({}, fz), beta, nchunks, work, True, acc)
    np.testing.assert_array_equal(acc, x + out)


_TRANSFER_CASES = [  # (shape, halved axes in order): an axis of length 1 is never halved
    (shape, axes)
    for shape in [(9, 7, 5), (1, 11, 6), (5, 1, 4), (2, 3, 8), (1, 1, 5)]
    for axes in [(0, 1, 2), (2, 1, 0), (1, 2), (2, 1), (0, 2), (2, 0), (0, 1), (2,)]
    if all(shape[a] > 1 for a in axes)
]


@pytest.mark.parametrize("shape,axes", _TRANSFER_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transfer_smoothing_in_one_pass_equals_one_pass_per_axis(shape, axes, dtype):
    """`transfer_smooth` (every halved axis in one sweep over x-planes) gives
    `grid_axis_smooth` once per axis in the same order, odd shapes and 2D views included."""
    from deepcd.kernels.aggregate import grid_axis_smooth
    from deepcd.nn.fastpath import transfer_smooth

    rng = np.random.default_rng(len(axes) + sum(shape))
    pairs, omegas = [], []
    for a in range(3):
        face_shape = tuple(n - (a == b) for b, n in enumerate(shape))
        w = rng.uniform(0.2, 1.0, face_shape).astype(dtype)
        g = np.zeros(shape, dtype=dtype)
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[a], hi[a] = slice(0, shape[a] - 1), slice(1, shape[a])
        g[tuple(lo)] += w
        g[tuple(hi)] += w
        pairs.append((w, g))
        omegas.append(rng.uniform(0.1, 0.5))
    x = rng.standard_normal(shape).astype(dtype)
    want = x.copy()
    for a in axes:
        out = np.empty_like(want)
        grid_axis_smooth(want, *pairs[a], a, omegas[a], out)
        want = out
    got = transfer_smooth(x, list(axes), pairs, omegas)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert got.dtype == dtype


@pytest.mark.parametrize("dim,shape", [(3, (21, 18, 17)), (2, (45, 38))])
def test_fused_transfers_give_the_same_vcycle(dim, shape):
    from deepcd.nn import build_network
    from deepcd.nn.direction import NetworkDirection

    problem = scene("smoke-obstacles", shape, seed=0)
    net = build_network("vcycle", dim, smooth=1, degree=4)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    direction = NetworkDirection(net, problem)
    r = np.random.default_rng(1).standard_normal(problem.n)
    fused = direction(r)
    net.fused_transfers = False
    np.testing.assert_allclose(fused, direction(r), rtol=0, atol=2e-6 * np.abs(fused).max())


@pytest.mark.parametrize("dim,shape,name", [(3, (24, 20, 18), "splash"), (2, (70, 60), "maze")])
def test_serial_grid_kernels_give_the_same_vcycle(dim, shape, name, monkeypatch):
    """Grid levels below GRID_SERIAL_BELOW cells run the grid kernels' serial copies (the
    wavefront on one chunk): the same V-cycle, bit for bit, as the parallel kernels."""
    import deepcd.nn.fastpath as fp
    from deepcd.kernels.smoother import clenshaw_wavefront
    from deepcd.nn.direction import NetworkDirection
    from deepcd.nn.weights import load_solver

    assert fp.grid_kernel(clenshaw_wavefront, fp.GRID_SERIAL_BELOW) is clenshaw_wavefront
    serial = fp.grid_kernel(clenshaw_wavefront, fp.GRID_SERIAL_BELOW - 1)
    assert serial is not clenshaw_wavefront and serial.py_func.__name__.endswith("_serial")
    assert fp.grid_threads(fp.GRID_SERIAL_BELOW - 1) == 1
    problem = scene(name, shape, seed=0)
    net, _ = load_solver(f"vcycle-{dim}d")
    direction = NetworkDirection(net, problem)
    direction.prepare()
    r = np.random.default_rng(2).standard_normal(problem.n)
    small = direction(r)
    monkeypatch.setattr(fp, "GRID_SERIAL_BELOW", 1)  # every grid level parallel
    np.testing.assert_array_equal(direction(r), small)


@pytest.mark.parametrize("shape", [(31, 17, 7), (20, 9, 1), (24, 40, 5), (15, 3, 12)])
@pytest.mark.parametrize("tile", [1, 4, 5, 16])
@pytest.mark.parametrize("nchunks", [1, 2])
def test_tiled_wavefront_equals_the_untiled_sweep(shape, tile, nchunks):
    """`clenshaw_wavefront_tiled` (the x-planes' rows swept `tile` at a time, each stage
    widened by what the next reads) gives `clenshaw_wavefront` bit for bit: tiles that do not
    divide ny, wider than ny, of one row; any chunk count; stale scratch never read."""
    from deepcd.kernels.smoother import clenshaw_wavefront, clenshaw_wavefront_tiled
    from deepcd.nn.fastpath import padded_z_faces

    s, e, (fx, fy, fz) = _normalized_level(shape, np.float32, seed=7)
    y = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    beta = clenshaw_coefficients(np.random.default_rng(9).dirichlet(np.ones(6)), 1 - 2.0**-8)
    nzp = padded_z_faces({}, fz)
    want = np.empty_like(y)
    work = np.empty((nchunks, 5, 3, shape[1], shape[2] + 2), dtype=np.float32)
    clenshaw_wavefront(y, s, e, fx, fy, nzp, beta, nchunks, work, False, want)
    got = np.empty_like(y)
    work = np.full((nchunks, 5, 3, tile + 10, shape[2] + 2), np.nan, dtype=np.float32)
    clenshaw_wavefront_tiled(y, s, e, fx, fy, nzp, beta, nchunks, tile, work, False, got)
    np.testing.assert_array_equal(got, want)
    x = np.random.default_rng(10).standard_normal(shape).astype(np.float32)
    acc = x.copy()
    clenshaw_wavefront_tiled(y, s, e, fx, fy, nzp, beta, nchunks, tile, work, True, acc)
    np.testing.assert_array_equal(acc, x + want)


@pytest.mark.parametrize("shape", [(26, 21, 9), (3, 5, 4)])  # a wavefront; one pass per step
def test_smooth_grid_adds_into(shape):
    """`smooth_grid(..., into=x)` adds the smoothing to x in place (a post-smoother's x + S r),
    the same numbers as adding it after; x must match y's shape and be contiguous."""
    import deepcd.nn.fastpath as fp

    s, e, links = _normalized_level(shape, np.float32, seed=3)
    rng = np.random.default_rng(4)
    y = rng.standard_normal(shape).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    beta = clenshaw_coefficients(rng.dirichlet(np.ones(6)), 1 - 2.0**-8)
    want = x + fp.smooth_grid(y, beta, s, e, links, {})
    acc = x.copy()
    assert fp.smooth_grid(y, beta, s, e, links, {}, into=acc) is acc
    np.testing.assert_array_equal(acc, want)
    with pytest.raises(ValueError, match="C-contiguous"):
        fp.smooth_grid(y, beta, s, e, links, {}, into=np.zeros(shape[::-1], np.float32).T)


def test_smooth_grid_tiles_large_planes(monkeypatch):
    """`smooth_grid` sweeps tiles of rows where the ring outgrows RING_UNTILED_MAX
    (`wavefront_tile`), with the same result; the tile sizes the rule picks here."""
    import deepcd.nn.fastpath as fp

    assert fp.wavefront_tile((64, 64, 64), 7, 4) == 64  # 0.3 MB: untiled
    assert fp.wavefront_tile((128, 128, 128), 7, 4) == 32
    assert fp.wavefront_tile((128, 128, 128), 6, 4) == 32  # the shipped degree 6: 1.0 MB
    assert fp.wavefront_tile((96, 96, 96), 6, 4) == 96  # 0.56 MB: untiled
    assert fp.wavefront_tile((256, 256, 256), 7, 4) == 16
    assert fp.wavefront_tile((1024, 1, 1024), 7, 4) == 1  # 2D sweeps: one row per plane
    s, e, links = _normalized_level((26, 21, 9), np.float32, seed=3)
    y = np.random.default_rng(4).standard_normal(s.shape).astype(np.float32)
    beta = clenshaw_coefficients(np.random.default_rng(5).dirichlet(np.ones(6)), 1 - 2.0**-8)
    want = fp.smooth_grid(y, beta, s, e, links, {})
    monkeypatch.setattr(fp, "RING_UNTILED_MAX", 1)
    monkeypatch.setattr(fp, "WAVEFRONT_TILES", (4,))
    cache: dict = {}
    got = fp.smooth_grid(y, beta, s, e, links, cache)
    (work,) = [v for k, v in cache.items() if k[0] == "wavefront"]
    assert work.shape[3] == 4 + 2 * 5  # tiles of 4 rows, widened by 5 stages each side
    np.testing.assert_array_equal(got, want)


def _with_extra_links(shape, pairs: int, seed: int, reach: int | None = None) -> StencilLevel:
    """A random flag stencil plus `pairs` random links between active cells that are no face
    neighbours, at most `reach` cells apart along every axis (both directions, their weight
    added to both diagonals): a grid form's level."""
    from deepcd.nn.multigrid import ExtraLinks

    rng = np.random.default_rng(seed)
    flags = rng.choice([0, 1, 2], size=shape, p=[0.8, 0.1, 0.1]).astype(np.int8)
    lap = GridLaplacian.from_problem(from_flags(flags, boundary=AIR), dtype=torch.float64)
    diag = lap.diag.clone()
    active = np.flatnonzero(diag.numpy().reshape(-1) > 0)
    links: dict[tuple[int, int], float] = {}
    coords = np.array(np.unravel_index(active, shape)).T
    while len(links) < pairs:
        i, j = rng.choice(len(active), 2, replace=False)
        d = np.abs(coords[i] - coords[j])
        if d.sum() == 1 or (active[i], active[j]) in links:
            continue
        if reach is not None and d.max() > reach:
            continue
        w = rng.uniform(0.2, 2.0)
        links[active[i], active[j]] = links[active[j], active[i]] = w
        diag.view(-1)[[active[i], active[j]]] += w
    level = StencilLevel.from_parts(diag, lap.links())
    keys = sorted(links)
    rows_all = np.array([k[0] for k in keys])
    cols = np.array([k[1] for k in keys])
    w = np.array([links[k] for k in keys])
    rows, start = np.unique(rows_all, return_index=True)
    d = diag.numpy().reshape(-1)
    level.extra = ExtraLinks(
        rows=rows, ptr=np.append(start, len(keys)), cols=cols, weight=w,
        snorm=w / np.sqrt(d[rows_all] * d[cols]), nweight=w / 2.0,
        axis=rng.integers(0, len(shape), len(keys)).astype(np.int8),
    )  # fmt: skip
    return level


@pytest.mark.parametrize("shape", [(9, 8, 7), (13, 11), (4, 5, 6)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("into", [False, True])
def test_smoother_with_links_off_the_grid_is_the_polynomial_of_the_whole_operator(
    shape, dtype, into
):
    """`smooth_grid_extra`: s·Σ β_k T_k(I − Â)(s·y) with Â the normalized stencil plus the
    level's links off its grid (`ExtraLinks`), against the dense operator's recurrence."""
    from deepcd.nn.fastpath import smooth_grid_extra

    level = _with_extra_links(shape, 6, seed=len(shape))
    dim, cells = len(shape), int(np.prod(shape))
    eye = torch.eye(cells, dtype=torch.float64).reshape(cells, 1, *shape)
    A = level.apply(eye).reshape(cells, cells).numpy()
    np.testing.assert_allclose(A, A.T, atol=1e-12)  # the links count both ways
    s64 = level.inv_sqrt_diag.numpy().reshape(-1)
    hat_A = s64[:, None] * A * s64[None, :]
    rng = np.random.default_rng(3)
    beta = rng.standard_normal(5)
    y = rng.standard_normal(cells)
    # reference: Clenshaw with the dense I − Â on s·y
    h, b1, b2 = s64 * y, np.zeros(cells), np.zeros(cells)
    for k in range(len(beta) - 1, 0, -1):
        b1, b2 = beta[k] * h + 2.0 * (b1 - hat_A @ b1) - b2, b1
    want = s64 * (beta[0] * h + (b1 - hat_A @ b1) - b2)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    s, e, links = normalized_grid(level, None, dim, tdt)
    grid = s.shape
    extra = level.extra.host(dtype)
    base = rng.standard_normal(grid).astype(dtype)
    out = base.copy() if into else None
    got = smooth_grid_extra(y.astype(dtype).reshape(grid), beta, s, e, links, extra, out)
    if into:
        assert got is out
        got = got - base
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got.reshape(-1), want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("shape", [(40, 9, 7), (60, 12), (36, 13, 6)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tile", [None, 4])
@pytest.mark.parametrize("nchunks", [1, 2, 3])
def test_wavefront_with_links_off_the_grid_equals_one_pass_per_step(
    shape, dtype, tile, nchunks, monkeypatch
):
    """The wavefront on a level with links off its grid (`clenshaw_wavefront_extra`, a stage
    `lag` planes behind the one before; tiled: `lag` rows wider) gives the one-pass-per-step
    smoother with those links (`smooth_grid_extra`), into an array or not, in chunks and
    tiles, links up to 3 planes and rows apart."""
    import deepcd.nn.fastpath as fp

    level = _with_extra_links(shape, 8, seed=7 + len(shape), reach=3)
    dim = len(shape)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    s, e, links = normalized_grid(level, None, dim, tdt)
    extra = level.extra.host(dtype)
    rng = np.random.default_rng(5)
    beta = rng.standard_normal(5)
    y = rng.standard_normal(s.shape).astype(dtype)
    want = fp.smooth_grid_extra(y, beta, s, e, links, extra)
    monkeypatch.setattr(fp, "WAVEFRONT_PLANES", 1)  # chunks of (m − 1)·lag planes and up
    monkeypatch.setattr(fp, "grid_threads", lambda cells: nchunks)
    if tile is not None:  # every plane tiled
        monkeypatch.setattr(fp, "RING_UNTILED_MAX", 0)
        monkeypatch.setattr(fp, "WAVEFRONT_TILES", (tile,))
    cache: dict = {}
    got = fp.smooth_grid(y, beta, s, e, links, cache, extra=extra)
    lag = fp.sweep_extra(cache, s.shape, extra, len(beta))[0]
    assert lag > 1
    work = next(v for k, v in cache.items() if k[0] == "wavefront")
    assert (
        work.shape[0] == min(nchunks, fp._sweep_shape(s.shape)[0]) and work.shape[2] == 2 * lag + 1
    )
    if tile is not None:
        assert work.shape[3] == tile + 2 * lag * (len(beta) - 1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    base = rng.standard_normal(s.shape).astype(dtype)
    acc = base.copy()
    assert fp.smooth_grid(y, beta, s, e, links, cache, acc, extra) is acc
    np.testing.assert_allclose(acc - base, want, rtol=tol, atol=tol * np.abs(want).max())
