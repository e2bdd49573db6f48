"""The normalized grid stencils of `deepcd.kernels.normalize` (CPU) against their torch forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepcd.nn import fastpath
from deepcd.nn import multigrid as mg
from deepcd.problems import AIR, FLUID, SOLID, from_flags, scene


def _level(name: str, shape, dtype) -> mg.StencilLevel:
    """Level 0 on the grid of a scene's flags ("random": FLUID/SOLID/AIR cells at random)."""
    if name == "random":
        rng = np.random.default_rng(0)
        cells = rng.choice([FLUID, SOLID, AIR], size=shape, p=[0.7, 0.2, 0.1]).astype(np.int8)
        problem = from_flags(cells)
    else:
        problem = scene(name, shape, seed=1)
    flags = torch.tensor(problem.flags)[None]
    return mg.build_hierarchy(flags, problem.boundary, [], dtype=dtype).grid


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "name,shape",
    [("smoke-obstacles", (17, 16, 19)), ("maze", (16, 17, 18)), ("porous", (20, 21)),
     ("splash", (33, 31)), ("random", (9, 7, 5)), ("random", (1, 6, 5)), ("random", (7, 1))],
)  # fmt: skip
def test_host_forms_equal_the_torch_forms_bit_for_bit(name, shape, dtype):
    grid = _level(name, shape, dtype)
    dim = len(shape)
    view = (1,) * (3 - dim) + tuple(shape)
    for scale in (grid.inv_sqrt_diag, 0.75 * grid.inv_sqrt_diag):  # diag^-½, a local scale
        for dt in (torch.float32, torch.float64):
            args = (scale, grid.diag, grid.links, view, dt)
            got, want = fastpath._normalized_host(*args), fastpath._normalized_torch(*args)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
            assert [w.shape for w in got[2]] == [w.shape for w in want[2]]
            for g, w in zip(got[2], want[2], strict=True):
                assert g.dtype == w.dtype
                np.testing.assert_array_equal(g, w)
    host, ref = mg._grid_axis_weights_host(grid), mg._grid_axis_weights_torch(grid)
    assert len(host) == len(ref) == dim
    for (nl, deg), (nl_ref, deg_ref) in zip(host, ref, strict=True):
        torch.testing.assert_close(nl, nl_ref, rtol=0, atol=0)
        torch.testing.assert_close(deg, deg_ref, rtol=0, atol=0)


def test_variable_coefficients_bit_for_bit():
    """Face weights that differ by 1000x (two-phase): the normalization's divisions too."""
    from deepcd.nn.stencil import GridLaplacian

    problem = scene("two-phase", (16, 17, 18), seed=0)
    lap = GridLaplacian.from_problem(problem, "cpu", torch.float32)
    grid = mg.StencilLevel.from_parts(lap.diag, list(lap.links()))
    for (nl, deg), (nl_ref, deg_ref) in zip(
        mg._grid_axis_weights_host(grid), mg._grid_axis_weights_torch(grid), strict=True
    ):
        torch.testing.assert_close(nl, nl_ref, rtol=0, atol=0)
        torch.testing.assert_close(deg, deg_ref, rtol=0, atol=0)
    args = (grid.inv_sqrt_diag, grid.diag, grid.links, (16, 17, 18), torch.float32)
    got, want = fastpath._normalized_host(*args), fastpath._normalized_torch(*args)
    for g, w in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]], strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(
    "case", ["smoke-obstacles", "maze", "splash", "two-phase", "one-half", "all-two", "negative"]
)
def test_transfer_weights_without_degrees_equal_the_torch_form(case):
    """The fused path's ŵ (no degrees): a flag Laplacian's faces (0 or 1) are held as they
    are, and any other faces — variable coefficients, a single 0.5, every face 2 (whose ŵ
    are 1, not 2), a negative face (ŵ 0) — are computed; either way the torch form's ŵ."""
    from deepcd.kernels.normalize import binary_faces
    from deepcd.nn.fastpath import grid_views
    from deepcd.nn.stencil import GridLaplacian

    shape = (17, 18) if case == "splash" else (16, 17, 18)
    name = case if case in ("smoke-obstacles", "maze", "splash", "two-phase") else "maze"
    lap = GridLaplacian.from_problem(scene(name, shape, seed=1), "cpu", torch.float32)
    links = [w.clone() for w in lap.links()]
    if case == "one-half":
        links[-1].view(-1)[torch.nonzero(links[-1].view(-1))[3]] = 0.5
    elif case == "all-two":
        links = [2 * w for w in links]
    elif case == "negative":
        links[0].view(-1)[5] = -1.0
    grid = mg.StencilLevel.from_parts(lap.diag, links)
    binary = case in ("smoke-obstacles", "maze", "splash")
    assert binary_faces(*grid_views(grid.diag, grid.links)[1]) == binary
    got = mg._grid_axis_weights_host(grid, degrees=False)
    for (nl, deg), (ref, _), link in zip(
        got, mg._grid_axis_weights_torch(grid), links, strict=True
    ):
        assert deg is None
        torch.testing.assert_close(nl, ref, rtol=0, atol=0)
        if binary:  # held, not computed and copied
            assert nl is link


@pytest.mark.parametrize("n,most", [(0, 0), (1, 0), (50, 3), (400, 7)])
def test_graph_link_kernels_equal_their_numpy_forms(n, most):
    """`scaled_links` and `largest_normalized_links` give the numpy expressions they replace,
    bit for bit (nodes without links included)."""
    from deepcd.kernels.normalize import largest_normalized_links, scaled_links

    rng = np.random.default_rng(n)
    deg = rng.integers(0, most + 1, n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(deg, out=indptr[1:])
    indices = rng.integers(0, max(n, 1), indptr[-1]).astype(np.int32)
    w = rng.uniform(0.0, 3.0, indptr[-1])
    s = rng.uniform(0.1, 2.0, n)
    rows = np.repeat(np.arange(n), deg)
    for dtype in (np.float32, np.float64):
        got = np.empty(len(w), dtype=dtype)
        scaled_links(indptr, indices, w, s, got)
        np.testing.assert_array_equal(got, (s[rows] * w * s[indices]).astype(dtype))
    wmax = np.zeros(n)
    wmax[deg > 0] = np.maximum.reduceat(w, indptr[:-1][deg > 0]) if w.size else 0.0
    want = w / np.maximum(np.maximum(wmax[rows], wmax[indices]), 1e-300)
    got = np.empty(len(w))
    largest_normalized_links(indptr, indices, w, got)
    np.testing.assert_array_equal(got, want)
