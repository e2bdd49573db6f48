"""Level 0's fused restriction and prolongation (`deepcd.kernels.cycle`, issue 12) against the
unfused passes they replace: odd shapes, every set of halved axes, any number of threads,
coarse nodes that reach past their block; and the V-cycle with and without them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepcd.kernels.aggregate import grid_transfer_smooth, members_of, prolong_copy, restrict_sum
from deepcd.kernels.cycle import _node_planes, plane_splits, prolong_correct, residual_restrict
from deepcd.kernels.smoother import stencil_residual
from deepcd.problems import scene

SHAPES = [(9, 5, 7), (8, 4, 6), (1, 3, 5), (3, 1, 9), (7, 6, 1)]
USES = [(1, 1, 1), (0, 1, 1), (1, 0, 1), (1, 1, 0), (1, 0, 0), (0, 0, 0)]


def random_level(shape, dtype, seed=0):
    """Stencil, transfer weights and a coarse map on `shape`: 2×2×2 blocks, a tenth of the
    cells without a coarse node, and some cells in the block after theirs along x (as merged
    components reach past their block)."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape

    def field(*s):
        return rng.random(s).astype(dtype)

    r, x, d = field(*shape), field(*shape), field(*shape) + 6
    faces = field(nx - 1, ny, nz), field(nx, ny - 1, nz), field(nx, ny, nz - 1)
    transfer = [field(*f.shape) for f in faces]
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    block = (i // 2 * ((ny + 1) // 2) + j // 2) * ((nz + 1) // 2) + k // 2
    move = (i % 2 == 1) & (i < nx - 1) & (rng.random(shape) < 0.2)
    block = np.where(move, block + ((ny + 1) // 2) * ((nz + 1) // 2), block)
    block[rng.random(shape) < 0.1] = -1
    nodes, inverse = np.unique(block[block >= 0], return_inverse=True)
    agg = np.full(shape, -1, dtype=np.int32)
    agg[block >= 0] = inverse
    return r, x, d, faces, transfer, agg, len(nodes)


def transfer_args(transfer, use, dtype):
    """`grid_transfer_smooth`'s weights, ω and flags (g_a the sum of a cell's two ŵ_a)."""
    om = (0.2, 0.35, 0.25)
    args = []
    for a, (w, on) in enumerate(zip(transfer, use, strict=True)):
        g = np.zeros((*w.shape[:a], w.shape[a] + 1, *w.shape[a + 1 :]), dtype)
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        g[tuple(lo)] += w
        g[tuple(hi)] += w
        args += [w, g] if on else [np.zeros((1, 1, 1), dtype)] * 2
    return (*args, *om, np.array(use, dtype=np.bool_))


def faces_only(args):
    w0, _, w1, _, w2, _, *rest = args
    return (w0, w1, w2, *rest)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("use", USES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_residual_restrict_equals_the_unfused_passes(shape, use, dtype):
    r, x, d, faces, transfer, agg, m = random_level(shape, dtype)
    args = transfer_args(transfer, use, dtype)
    res, smoothed = np.empty_like(x), np.empty_like(x)
    stencil_residual(r, x, d, *faces, res)
    grid_transfer_smooth(res, *args, False, 1, smoothed)
    mstart, members = members_of(agg.reshape(-1).astype(np.int64), m)
    want = np.empty(m, dtype=dtype)
    restrict_sum(smoothed.reshape(-1), mstart, members, want)
    tol = (1e-5 if dtype == np.float32 else 1e-12) * np.abs(want).max()
    for threads in (1, 2, 3, 5):
        splits, slot, shared, check = plane_splits(agg, m, threads)
        got = np.zeros(m, dtype=dtype)
        priv = np.zeros((len(splits) - 1, len(shared)), dtype=dtype)
        split = (splits, slot, check, shared, priv)
        residual_restrict(r, x, d, *faces, *faces_only(args), agg, *split, got)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("use", USES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prolong_correct_equals_the_unfused_passes(shape, use, dtype):
    r, x, d, faces, transfer, agg, m = random_level(shape, dtype, seed=1)
    args = transfer_args(transfer, use, dtype)
    xc = np.random.default_rng(2).standard_normal(m).astype(dtype)
    copied, smoothed = np.empty(x.size, dtype=dtype), np.empty_like(x)
    prolong_copy(xc, agg.reshape(-1), copied)
    grid_transfer_smooth(copied.reshape(shape), *args, True, 1, smoothed)
    want_x = x + dtype(0.8) * smoothed
    want_res = np.empty_like(x)
    stencil_residual(r, want_x, d, *faces, want_res)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for nchunks in sorted({1, 2, 3, shape[0]} & set(range(1, shape[0] + 1))):
        got_x, got_res = np.empty_like(x), np.empty_like(x)
        prolong_correct(xc, agg, *faces_only(args), 0.8, x, r, d, *faces, nchunks, got_x, got_res)
        np.testing.assert_allclose(got_x, want_x, rtol=0, atol=tol * np.abs(want_x).max())
        np.testing.assert_allclose(got_res, want_res, rtol=0, atol=tol * np.abs(want_res).max())


def test_plane_splits_are_even_and_name_the_nodes_they_cut():
    """`plane_splits`: even splits; the shared nodes are exactly those with cells on both
    sides of a split, and the checked planes exactly those holding their cells."""
    _, _, _, _, _, agg, m = random_level((24, 6, 6), np.float32, seed=3)
    first, last = _node_planes(agg, m)
    for threads in range(1, 9):
        splits, slot, shared, check = plane_splits(agg, m, threads)
        assert np.array_equal(splits, np.arange(threads + 1) * 24 // threads)
        cut = np.zeros(m, dtype=bool)
        for p in splits[1:-1]:
            cut |= (first < p) & (last >= p)
        assert np.array_equal(np.sort(shared), np.flatnonzero(cut))
        assert cut.any() == (threads > 1)  # the moved cells reach past their block
        assert np.array_equal(slot[shared], np.arange(len(shared)))
        assert np.all(slot[~cut] == -1)
        planes = np.zeros(24, dtype=bool)
        for node in shared:
            planes[first[node] : last[node] + 1] = True
        assert np.array_equal(check, planes)


@pytest.mark.parametrize(
    "dim,shape,name,model",
    [
        (3, (21, 18, 17), "smoke-obstacles", None),
        (3, (24, 20, 18), "splash", "vcycle-3d"),
        (3, (20, 20, 20), "porous", "vcycle-3d"),
        (3, (20, 18, 16), "two-phase", "vcycle-3d"),
        (2, (70, 60), "maze", "vcycle-2d"),
        (2, (45, 38), "splash", "vcycle-2d"),
    ],
)
def test_fused_cycle_gives_the_same_vcycle(dim, shape, name, model):
    """The V-cycle with level 0's transfers fused (`VCycleNet.fused_cycle`) against the
    unfused passes: trained networks (the 2D one with local weights) and random weights."""
    from deepcd.nn import build_network
    from deepcd.nn.direction import NetworkDirection
    from deepcd.nn.weights import load_solver

    problem = scene(name, shape, seed=0)
    if model is None:
        net = build_network("vcycle", dim, smooth=2, degree=4)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.3 * torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
    else:
        net, _ = load_solver(model)
    net.fine_layout = "grid"
    direction = NetworkDirection(net, problem)
    r = np.random.default_rng(1).standard_normal(problem.n)
    fused = direction(r)
    net.fused_cycle = False
    unfused = direction(r)
    # float32 sums in another order; a maze's V-cycle magnifies them most (1e-6 relative)
    np.testing.assert_allclose(fused, unfused, rtol=0, atol=1e-5 * np.abs(unfused).max())


@pytest.mark.parametrize(
    "dim,name,shared",
    [(3, "smoke-obstacles", True), (3, "two-phase", False), (2, "smoke-obstacles", True)],
)
def test_flag_laplacian_transfers_read_the_stencil_faces(dim, name, shared):
    """A flag Laplacian's normalized transfer faces ŵ equal its stencil faces, so level 0's
    fused passes get the stencil's arrays for both (read once from memory); a variable-
    coefficient stencil keeps its own ŵ. The V-cycle is the same either way."""
    from deepcd.nn import build_network
    from deepcd.nn.direction import NetworkDirection
    from deepcd.nn.weights import load_solver

    problem = scene(name, (20, 18, 16)[:dim], seed=0)
    # 2D: global weights (the shipped 2D solver's local ω fold into its ŵ)
    net = load_solver("vcycle-3d")[0] if dim == 3 else build_network("vcycle", 2)
    direction = NetworkDirection(net, problem)
    direction.prepare()
    h = net._cache[2]
    faces = net._grid_arrays(h.grid, torch.float32)[2][3 - dim :]  # 2D: no x-faces
    omegas = net._level_omegas(h, 0)
    weights = net._grid_axis_arrays(h, torch.float32, omegas)
    for (w, _), face in zip(weights, faces, strict=True):
        assert (w is face) == shared
        if not shared:
            assert not np.array_equal(w, face)


@pytest.mark.parametrize("name", ["smoke-obstacles", "two-phase"])
def test_fused_transfers_make_no_degree_fields(name):
    """The fused passes read ŵ only: CPU inference makes no degree fields (three grid
    fields, 192 MiB at 256³); asked for later (the unfused passes), the degrees come paired
    with the ŵ already held, the numbers of a fresh build, and the V-cycle is the same."""
    from deepcd.nn import multigrid as mg
    from deepcd.nn.direction import NetworkDirection
    from deepcd.nn.weights import load_solver

    problem = scene(name, (20, 18, 16), seed=0)
    net = load_solver("vcycle-3d")[0]
    direction = NetworkDirection(net, problem)
    direction.prepare()
    r = np.random.default_rng(2).standard_normal(problem.n)
    before = direction(r)
    h = net._cache[2]
    assert h._grid_axis is None and h._grid_faces is not None
    faces = h.grid_axis_faces
    fresh = mg._grid_axis_weights(h.grid)
    for (w, deg), face, (w0, deg0) in zip(h.grid_axis, faces, fresh, strict=True):
        assert w is face and torch.equal(w, w0) and torch.equal(deg, deg0)
    np.testing.assert_array_equal(direction(r), before)
