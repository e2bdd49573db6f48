"""The parallel aggregation against its serial reference, and the level-0 graph's numbering."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_aggregate import serial_aggregate

from deepcd.kernels import aggregate as K
from deepcd.kernels.grid_aggregate import _cube_at, grid_aggregate, grid_node_features
from deepcd.nn import coarsening_plan
from deepcd.nn import multigrid as mg
from deepcd.nn.local import graph_features
from deepcd.nn.multigrid import DENSE_MAX, MERGE_BELOW, STRENGTH
from deepcd.nn.stencil import GridLaplacian
from deepcd.problems import scene

CASES = [
    ("maze", (24, 20, 18)),
    ("maze", (64, 48)),
    ("baffles", (20, 20, 20)),
    ("porous", (19, 17, 21)),
    ("splash", (48, 40)),
    ("pockets", (18, 18, 18)),
    ("two-phase", (17, 19, 16)),
    ("cut-cells", (37, 29)),
]


def grid_stencil_3d(problem) -> tuple[np.ndarray, list[np.ndarray]]:
    """A problem's float64 stencil as `grid_graph` takes it (3D numbering)."""
    lap = GridLaplacian.from_problem(problem, dtype=torch.float64)
    dim = lap.diag.ndim - 2

    def view(t):
        a = t.numpy()[0, 0]
        return a.reshape((1,) * (3 - dim) + a.shape)

    links = [view(w) for w in lap.links()]
    if dim == 2:
        links.insert(0, np.zeros((0, *view(lap.diag).shape[1:])))
    return view(lap.diag), links


def level_zero(problem) -> tuple[dict, np.ndarray]:
    """Level 0's graph of a problem's own stencil (coefficients included), 3D numbering."""
    diag, links = grid_stencil_3d(problem)
    _, coords, d, indptr, indices, weight, axis = K.grid_graph(diag, *links)
    level = dict(coords=coords, d=d, indptr=indptr, indices=indices, w=weight, axis=axis)
    return level, np.array(diag.shape, dtype=np.int64)


def assert_same_level(new, old, exact_floats: bool):
    agg, coords, d, indptr, indices, weight, axis = new
    r_agg, r_coords, r_d, r_indptr, r_indices, r_weight, r_axis = old
    for a, b in [(agg, r_agg), (coords, r_coords), (indptr, r_indptr), (indices, r_indices)]:
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(axis, r_axis)
    if exact_floats:
        np.testing.assert_array_equal(weight, r_weight)
        np.testing.assert_array_equal(d, r_d)
    else:  # the diagonal of an aggregate merged across blocks sums in another order
        np.testing.assert_allclose(weight, r_weight, rtol=1e-13, atol=0)
        np.testing.assert_allclose(d, r_d, rtol=1e-12, atol=1e-12 * np.abs(r_d).max())


@pytest.mark.parametrize("name,shape", CASES)
@pytest.mark.parametrize("merge_below,strength", [(MERGE_BELOW, STRENGTH), (0, 0.0), (3, 0.3)])
def test_parallel_aggregation_equals_the_serial_reference(name, shape, merge_below, strength):
    """Every level of a full coarsening, geometric then pairwise, is the serial one's: the
    same partition and numbering, the same coarse CSR, the same weights."""
    level, grid = level_zero(scene(name, shape, seed=1))
    plan = [(False,) * (3 - len(shape)) + h for h in coarsening_plan(shape, 2)]
    steps = 0
    while len(level["d"]) > 1 and steps < 12:
        pairwise = steps >= len(plan)
        if pairwise and len(level["d"]) <= DENSE_MAX // 8:
            break
        halved = np.array((False,) * 3 if pairwise else plan[steps], dtype=np.bool_)
        grid = np.where(halved, (grid + 1) // 2, grid)
        args = (
            level["coords"], level["d"], level["indptr"], level["indices"], level["w"],
            level["axis"], halved, grid, 0.5, pairwise, strength, 0 if pairwise else merge_below,
        )  # fmt: skip
        new, old = K.aggregate(*args), serial_aggregate(*args)
        assert_same_level(new, old, exact_floats=merge_below < 2)
        _, coords, d, indptr, indices, weight, axis = new
        if len(d) == 0:
            break
        level = dict(coords=coords, d=d, indptr=indptr, indices=indices, w=weight, axis=axis)
        steps += 1
    assert steps >= 2


def test_aggregation_with_given_largest_links():
    """wmax_in (a rank's block in deepcd.petsc) gives what the serial reference gives."""
    level, grid = level_zero(scene("porous", (16, 16, 16), seed=2))
    rng = np.random.default_rng(0)
    wmax = K._largest_links(level["indptr"], level["w"]) * rng.uniform(1.0, 3.0, len(level["d"]))
    halved = np.ones(3, dtype=np.bool_)
    args = (
        level["coords"], level["d"], level["indptr"], level["indices"], level["w"],
        level["axis"], halved, (grid + 1) // 2, 0.5, False, 0.3, 2, wmax,
    )  # fmt: skip
    assert_same_level(K.aggregate(*args), serial_aggregate(*args), exact_floats=False)


def test_empty_and_single_node_levels():
    for n in (0, 1):
        level = dict(
            coords=np.zeros((n, 3), np.int32), d=np.ones(n), indptr=np.zeros(n + 1, np.int64),
            indices=np.zeros(0, np.int32), w=np.zeros(0), axis=np.zeros(0, np.int8),
        )  # fmt: skip
        args = (
            level["coords"], level["d"], level["indptr"], level["indices"], level["w"],
            level["axis"], np.ones(3, np.bool_), np.ones(3, np.int64), 0.5, False, 0.02, 2,
        )  # fmt: skip
        assert_same_level(K.aggregate(*args), serial_aggregate(*args), exact_floats=True)


@pytest.mark.parametrize("shape", [(1, 13, 17), (7, 5, 9), (4, 1, 6)])
def test_level_zero_numbers_cells_in_c_order_and_links_every_face(shape):
    """grid_graph against numpy: node ids, coords and diagonal in C order; each node's links
    are its faces with w > 0 to cells with a node, by axis."""
    rng = np.random.default_rng(3)
    diag = np.where(rng.random(shape) < 0.7, rng.uniform(1, 6, shape), 0.0)
    faces = [tuple(n - (a == ax) for a, n in enumerate(shape)) for ax in range(3)]
    links = [np.where(rng.random(s) < 0.8, rng.uniform(0.1, 1, s), 0.0) for s in faces]
    node, coords, d, indptr, indices, weight, axis = K.grid_graph(diag, *links)
    active = diag > 0
    np.testing.assert_array_equal(node[active], np.arange(active.sum()))
    assert np.all(node[~active] == -1)
    np.testing.assert_array_equal(coords, np.argwhere(active))
    np.testing.assert_array_equal(d, diag[active])
    for a, c in enumerate(coords):
        got = {
            (int(indices[p]), float(weight[p]), int(axis[p]))
            for p in range(indptr[a], indptr[a + 1])
        }
        want = set()
        for ax in range(3):
            for step in (-1, 1):
                nb_ = c.copy()
                nb_[ax] += step
                if not 0 <= nb_[ax] < shape[ax] or node[tuple(nb_)] < 0:
                    continue
                face = tuple(np.minimum(c, nb_))
                if links[ax][face] > 0:
                    want.add((int(node[tuple(nb_)]), float(links[ax][face]), ax))
        assert got == want
        assert indptr[a + 1] - indptr[a] == len(want)


@pytest.mark.parametrize("name,shape", CASES)
@pytest.mark.parametrize("merge_below,strength", [(MERGE_BELOW, STRENGTH), (0, 0.0), (3, 0.3)])
def test_grid_aggregation_equals_the_csr_one(name, shape, merge_below, strength):
    """Level 1 straight from the grid is `aggregate` of level 0's CSR, bit for bit: node
    numbering, agg, coarse cells, CSR, weights, axes, and level 0's link count."""
    diag, links = grid_stencil_3d(scene(name, shape, seed=1))
    node, coords, d, indptr, indices, weight, axis = K.grid_graph(diag, *links)
    plan = [(False,) * (3 - len(shape)) + h for h in coarsening_plan(shape, 2)]
    halved = np.array(plan[0], dtype=np.bool_)
    coarse = np.where(halved, (np.array(diag.shape) + 1) // 2, diag.shape)
    args = (halved, coarse, 0.5, False, strength, merge_below)
    want = K.aggregate(coords, d, indptr, indices, weight, axis, *args)
    g_node, index, agg, nlinks, lv = grid_aggregate(
        diag, *links, halved, coarse, 0.5, strength, merge_below
    )
    np.testing.assert_array_equal(g_node, node)
    np.testing.assert_array_equal(index, np.flatnonzero(node.ravel() >= 0))
    assert nlinks == len(indices)
    got = (agg, *(lv[k] for k in ("coords", "d", "indptr", "indices", "w", "axis")))
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_grid_aggregation_refuses_an_axis_its_cell_packing_cannot_hold():
    """grid_aggregate packs a node's cell in 21 bits per axis: a longer axis is an error, not
    a silent wrap into another cell."""
    n = 1 << 21
    diag = np.ones((1, 1, n))
    faces = [np.zeros((0, 1, n)), np.zeros((1, 0, n)), np.ones((1, 1, n - 1))]
    halved = np.array([False, False, True])
    with pytest.raises(ValueError, match="too big"):
        grid_aggregate(diag, *faces, halved, np.array([1, 1, n // 2]), 0.5, 0.0)


HIERARCHY_CASES = [
    ("maze", (24, 20, 18)),
    ("two-phase", (17, 19, 16)),
    ("splash", (48, 40)),
    ("smoke-obstacles", (20, 24, 22)),
]


@pytest.mark.parametrize("name,shape", HIERARCHY_CASES)
def test_hierarchy_from_the_grid_equals_the_csr_path(name, shape):
    """A one-field hierarchy (level 1 from the grid, level 0's graph built on first use) has
    the levels of the CSR path (`_host_levels`), level 0's graph included."""
    problem = scene(name, shape, seed=2)
    lap = GridLaplacian.from_problem(problem, dtype=torch.float64)
    plan = coarsening_plan(shape, 2)
    flags = torch.as_tensor(np.array(problem.flags))[None]
    h = mg.build_hierarchy(flags, problem.boundary, plan, dtype=torch.float64, operator=lap)
    diag, links = grid_stencil_3d(problem)
    plan3 = [(False,) * (3 - len(shape)) + tuple(p) for p in plan]
    want = mg._host_levels(diag, links, plan3, 0.5)
    assert len(h.levels) == len(want)
    np.testing.assert_array_equal(h.index.numpy(), np.flatnonzero(want[0]["node"].ravel() >= 0))
    keys = {"indptr": "indptr", "indices": "indices", "weight": "w", "diag": "d", "agg": "agg"}
    for level, lv in zip(h.levels, want, strict=True):
        assert level.n == len(lv["d"])
        for ours, theirs in keys.items():
            if theirs in lv:
                np.testing.assert_array_equal(level.host[ours], lv[theirs])
    x = torch.as_tensor(np.random.default_rng(0).standard_normal((h.levels[0].n, 1)))
    np.testing.assert_allclose(
        h.levels[0].apply(x), h.to_nodes(h.grid.apply(h.from_nodes(x))), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("name,shape", [*HIERARCHY_CASES, ("ghost-splash", (20, 18, 22))])
def test_grid_node_features_equal_the_graph_ones(name, shape):
    """Level 0's local-weight node features from the grid (no link CSR) are
    `graph_features`' from its graph (float32; the same sums in the same order)."""
    diag, links = grid_stencil_3d(scene(name, shape, seed=4))
    node, _, d, indptr, indices, w, _ = K.grid_graph(diag, *links)
    host = dict(diag=d, weight=w, indptr=indptr, indices=indices)
    host["nweight"] = mg._normalized(dict(d=d, w=w, indptr=indptr, indices=indices))
    out = np.empty((len(d), 3))
    grid_node_features(diag, *links, np.flatnonzero(node.ravel() >= 0), out)
    np.testing.assert_allclose(out.astype(np.float32), graph_features(host)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(9, 7, 8), (11, 12)])
def test_hierarchy_of_isolated_cells_falls_back_to_one_level(shape):
    """Every FLUID region two cells inside one block, walled in (closed: its constant is in
    A's null space, so it gets no coarse unknown): level 1 would be empty, and the one-field
    grid path hands the single level to the CSR path, which solves it exactly."""
    from deepcd.problems.flags import FLUID, SOLID
    from deepcd.problems.problem import from_flags

    flags = np.full(shape, SOLID, dtype=np.int8)
    lead = (slice(None, None, 3),) * (len(shape) - 1)
    flags[(*lead, slice(0, None, 4))] = FLUID
    flags[(*lead, slice(1, None, 4))] = FLUID
    problem = from_flags(flags, boundary=SOLID)
    h = mg.build_hierarchy(
        torch.as_tensor(flags)[None], problem.boundary, coarsening_plan(shape, 2)
    )
    assert len(h.levels) == 1 and h.grid_agg is None and h.coarse_inverse is not None
    assert h.levels[0].n == int((flags == FLUID).sum())


def _random_laplacian(seed: int):
    """A random Laplacian stencil (float64): faces spanning decades, holes, some Dirichlet
    cells."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(5, 12, size=3))
    active = rng.random(shape) < 0.85
    diag = np.where(rng.random(shape) < 0.1, rng.random(shape), 0.0)  # a Dirichlet share
    links = []
    for a in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        lo, hi = tuple(lo), tuple(hi)
        w = rng.random(active[lo].shape) ** 6
        w = np.where((rng.random(w.shape) < 0.1) | ~active[lo] | ~active[hi], 0.0, w)
        diag[lo] += w
        diag[hi] += w
        links.append(w)
    diag = np.where(active, diag, 0.0)
    return diag, links


def _halved_level_is_aggregates(diag, links, strength, merge_below):
    """Asserts that `grid_aggregate` halving every axis of the stencil (diag, links) gives
    `aggregate`'s level of its CSR, bit for bit (node numbering, agg, coarse cells, CSR,
    weights, axes, dtypes); returns its (agg, level)."""
    node, coords, d, indptr, indices, weight, axis = K.grid_graph(diag, *links)
    halved = np.array([True, True, True])
    coarse = (np.array(diag.shape) + 1) // 2
    args = (halved, coarse, 0.5, False, strength, merge_below)
    want = K.aggregate(coords, d, indptr, indices, weight, axis, *args)
    g_node, _, agg, _, lv = grid_aggregate(diag, *links, halved, coarse, 0.5, strength, merge_below)
    np.testing.assert_array_equal(g_node, node)
    got = (agg, *(lv[k] for k in ("coords", "d", "indptr", "indices", "w", "axis")))
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    return agg, lv


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("merge_below,strength", [(2, 0.3), (4, 0.5)])
def test_grid_aggregation_equals_the_csr_one_on_random_weak_links(seed, merge_below, strength):
    """A random Laplacian (faces spanning decades: many weak links, so many small block
    components that join a neighbour — chains of joins, joins inside a block whose pieces
    interleave, joins across blocks; holes; some Dirichlet cells): the grid path's joins and
    numbering stay those of the CSR's."""
    _, lv = _halved_level_is_aggregates(*_random_laplacian(seed), strength, merge_below)
    # a component dropped as closed (cd ≤ 1e-9 max) yet linked by a tiny weight leaves no
    # unset slot in its neighbours' rows
    assert ((lv["indices"] >= 0) & (lv["indices"] < len(lv["d"]))).all()
    assert (lv["w"] > 0).all() and lv["indptr"][-1] == len(lv["indices"])


def _open_laplacian(shape, seed: int, closed: float):
    """An open box's random Laplacian (float64): every cell active, faces in [0.5, 1] — so a
    coarse block's cells are one component, a whole 2×2×2 cube inside the box — a share
    `closed` of them 0 (inside cubes too), some Dirichlet cells."""
    rng = np.random.default_rng(seed)
    diag = np.where(rng.random(shape) < 0.1, rng.random(shape), 0.0)
    links = []
    for a in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        w = 0.5 + 0.5 * rng.random(diag[tuple(lo)].shape)
        w = np.where(rng.random(w.shape) < closed, 0.0, w)
        diag[tuple(lo)] += w
        diag[tuple(hi)] += w
        links.append(w)
    return diag, links


@pytest.mark.parametrize("shape", [(16, 16, 16), (17, 15, 13)])
@pytest.mark.parametrize("closed", [0.0, 0.15])
def test_grid_aggregation_of_whole_cubes_equals_the_csr_one(shape, closed):
    """A component that is a whole 2×2×2 cube (most of an open region's) takes the grid path's
    shortcut (`_cube_at`: its sums and coarse links without looking its cells' links up), and
    level 1 is still `aggregate`'s bit for bit — cubes at the walls, faces of weight 0 inside
    cubes, partial blocks at the far ends of odd axes."""
    diag, links = _open_laplacian(shape, seed=sum(shape), closed=closed)
    agg, _ = _halved_level_is_aggregates(diag, links, STRENGTH, MERGE_BELOW)
    sizes = np.bincount(agg[agg >= 0])
    assert (sizes == 8).mean() > 0.5  # the shortcut is what ran, mostly


def _packed(cells):
    return np.array([(x << 42) | (y << 21) | z for x, y, z in cells], dtype=np.int64)


CUBE = [(x, y, z) for x in (2, 3) for y in (4, 5) for z in (0, 1)]


@pytest.mark.parametrize(
    "cells,origin",
    [
        (CUBE, (2, 4, 0)),
        (CUBE[:7], None),  # seven cells
        ([(x + 1, y, z) for x, y, z in CUBE], None),  # a cube at an odd x
        ([*CUBE[:7], (4, 5, 1)], None),  # eight cells of two blocks (a merged component)
        ([CUBE[1], CUBE[0], *CUBE[2:]], None),  # the cube's cells out of C order
    ],
)
def test_cube_at_takes_only_a_whole_cube_in_c_order(cells, origin):
    """`_cube_at` answers a cube's corner only for its 8 cells at even coordinates in C order:
    anything else (fewer cells, an odd corner, cells of two blocks, another order) takes
    the generic path."""
    cell = _packed(cells)
    members = np.arange(len(cells), dtype=np.int32)[::-1].copy()
    cell = cell[::-1].copy()  # members point at their cells through any numbering
    got = _cube_at(cell, members, 0, len(cells))
    assert (tuple(got) if got[0] >= 0 else None) == origin


@pytest.mark.parametrize("case", ["random-0", "random-1", "random-2", "two-phase", "maze"])
def test_grid_aggregation_of_a_float32_stencil_is_that_of_its_float64_copy(case):
    """The hierarchy hands the aggregation a float32 stencil as it is (no float64 copy):
    every sum is float64, so level 1 is that of the exact float64 copy, bit for bit — on
    faces spanning decades too."""
    if case.startswith("random"):
        diag, links = _random_laplacian(int(case[-1]))
    else:
        diag, links = grid_stencil_3d(scene(case, (17, 19, 16), seed=1))
    d32, l32 = diag.astype(np.float32), [w.astype(np.float32) for w in links]
    halved = np.array([True, True, True])
    coarse = (np.array(diag.shape) + 1) // 2
    args = (halved, coarse, 0.5, 0.3, 3)
    want = grid_aggregate(d32.astype(np.float64), *(w.astype(np.float64) for w in l32), *args)
    got = grid_aggregate(d32, *l32, *args)
    for a, b in zip(got[:3], want[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert got[3] == want[3] and got[4].keys() == want[4].keys()
    for k in want[4]:
        assert got[4][k].dtype == want[4][k].dtype
        np.testing.assert_array_equal(got[4][k], want[4][k])
