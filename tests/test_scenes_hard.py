"""Scenes for hard geometry (deepcd.problems.scenes_hard)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy import ndimage

import deepcd
from deepcd.iterative.nullspace import SingularSystemWarning, closed_components
from deepcd.problems import AIR, FLUID, SOLID, scene, scenes
from deepcd.problems.scenes import make_scene, scene_names

HARD = ["baffles", "maze", "porous", "pockets", "splash"]
SHAPES = [(16, 16), (32, 20), (16, 16, 16), (24, 16, 20)]
CASES = [(name, shape) for name in HARD for shape in SHAPES]
IDS = [f"{name}-{'x'.join(map(str, shape))}" for name, shape in CASES]
# one parameter per scene, overridden with its drawn value: the output must not change
PARAM = {
    "baffles": "n_baffles",
    "maze": "corridor",
    "porous": "grain_radius",
    "pockets": "pocket_density",
    "splash": "n_bubbles",
}


@pytest.fixture(scope="module")
def generated():
    cache = {}

    def get(name, shape, seed=0, **params):
        key = (name, shape, seed, tuple(sorted(params.items())))
        if key not in cache:
            cache[key] = make_scene(name, shape, seed=seed, **params)
        return cache[key]

    return get


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask)


def test_registered():
    for name in HARD:
        assert name in scene_names()
        assert name in scenes()
    p = scene("maze", (16, 16), seed=3)
    assert p.generator == "maze" and p.params["corridor"] == 1


@pytest.mark.parametrize("name", HARD)
def test_size_and_parameters_checked(name):
    with pytest.raises(ValueError, match="16"):
        make_scene(name, (15, 16))
    with pytest.raises(TypeError, match="unknown parameter"):
        make_scene(name, (16, 16), bogus=1)


@pytest.mark.parametrize(("name", "shape"), CASES, ids=IDS)
def test_basic_outputs(generated, name, shape):
    data = generated(name, shape)
    assert data.flags.dtype == np.int8 and data.flags.shape == shape
    assert set(np.unique(data.flags).tolist()) <= {FLUID, SOLID, AIR}
    assert (data.flags == FLUID).any()
    assert len(data.boundary) == 2 * len(shape)
    assert set(data.boundary) <= {SOLID, AIR}
    assert data.rhs.dtype == np.float64 and data.rhs.shape == shape
    assert np.all(np.isfinite(data.rhs))
    assert np.all(data.rhs[data.flags != FLUID] == 0.0)
    assert np.abs(data.rhs).max() > 0
    json.dumps(data.params)


@pytest.mark.parametrize(("name", "shape"), CASES, ids=IDS)
def test_seeded(generated, name, shape):
    a, b = generated(name, shape), make_scene(name, shape, seed=0)
    assert np.array_equal(a.flags, b.flags) and np.array_equal(a.rhs, b.rhs)
    assert a.params == b.params
    c = generated(name, shape, seed=1)
    assert not (np.array_equal(a.flags, c.flags) and np.array_equal(a.rhs, c.rhs))
    key = PARAM[name]
    d = make_scene(name, shape, seed=0, **{key: a.params[key]})
    assert np.array_equal(a.flags, d.flags) and np.array_equal(a.rhs, d.rhs)


# ---------------------------------------------------------------------------------------------
# geometry


@pytest.mark.parametrize("thickness", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_baffles_split_the_box_except_at_holes(generated, shape, thickness):
    data = generated("baffles", shape, thickness=thickness)
    flags, prm = data.flags, data.params
    ndim = len(shape)
    hole = prm["hole"]
    assert data.boundary[1] == AIR and data.boundary.count(AIR) == 1
    assert len(prm["baffle_x"]) == prm["n_baffles"] >= 1
    closed = flags.copy()
    for k, x0 in enumerate(prm["baffle_x"]):
        slab = flags[x0 : x0 + thickness]
        assert np.count_nonzero(slab == FLUID) == thickness * hole ** (ndim - 1)
        assert np.all(flags[x0 - 1] != SOLID) and np.all(flags[x0 + thickness] != SOLID)
        ys = np.flatnonzero((slab == FLUID).any(axis=tuple(d for d in range(ndim) if d != 1)))
        assert ys.size == hole
        assert (ys[0] == 0) if k % 2 == 0 else (ys[-1] == shape[1] - 1)  # alternating ends
        closed[x0 : x0 + thickness] = SOLID
    assert components(flags == FLUID)[1] == 1
    assert components(closed == FLUID)[1] == prm["n_baffles"] + 1
    solid_x = np.flatnonzero((flags == SOLID).any(axis=tuple(range(1, ndim))))
    assert solid_x.size == thickness * prm["n_baffles"]  # nothing else is SOLID


@pytest.mark.parametrize("corridor", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_maze_corridors(generated, shape, corridor):
    data = generated("maze", shape, corridor=corridor)
    flags = data.flags
    ndim = len(shape)
    fluid = flags == FLUID
    assert data.boundary == (SOLID,) * (2 * ndim)
    assert np.count_nonzero(flags == AIR) == corridor ** (ndim - 1)  # one exit
    assert components(fluid)[1] == 1  # a perfect maze: every room reachable
    exit_near = ndimage.binary_dilation(flags == AIR) & fluid
    assert exit_near.any()
    # every fluid cell lies in a corridor-wide all-fluid cube, and none in a wider one
    c = np.ones((corridor,) * ndim, bool)
    assert np.array_equal(ndimage.binary_opening(fluid, c), fluid)
    assert not ndimage.binary_erosion(fluid, np.ones((corridor + 1,) * ndim, bool)).any()
    if corridor == 1:  # the fluid cells form a tree: cells - 1 face adjacencies
        pairs = sum(
            int(np.count_nonzero(np.take(fluid, range(1, n), d) & np.take(fluid, range(n - 1), d)))
            for d, n in enumerate(shape)
        )
        assert pairs == np.count_nonzero(fluid) - 1
    rooms = data.params["rooms"]
    assert rooms == [(n - 1) // (corridor + 1) for n in shape]
    assert np.count_nonzero(fluid) >= np.prod(rooms) * corridor**ndim


def percolates(flags: np.ndarray) -> bool:
    labels, _ = ndimage.label(flags == FLUID)
    top, bottom = set(np.unique(labels[..., -1])) - {0}, set(np.unique(labels[..., 0])) - {0}
    return bool(top & bottom)


@pytest.mark.parametrize("fraction", [0.3, 0.45, 0.6])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_porous_fraction_and_percolation(generated, shape, fraction):
    data = generated("porous", shape, solid_fraction=fraction)
    flags = data.flags
    achieved = np.count_nonzero(flags == SOLID) / flags.size
    assert abs(achieved - fraction) <= 0.04 + 0.03 * (len(shape) == 2)
    assert data.params["solid_fraction_achieved"] == pytest.approx(achieved)
    assert data.boundary[-1] == AIR
    if len(shape) == 3 or fraction <= 0.45:  # 2D pore space stops percolating near 0.6
        assert data.params["percolates"] and percolates(flags)
    assert data.params["percolates"] == percolates(flags)


def test_porous_has_many_closed_regions_and_zero_rows():
    p = scene("porous", (32, 32, 32), seed=0, solid_fraction=0.55)
    count = p.closed_regions[1]
    assert count >= 20
    assert np.count_nonzero(p.diagonal == 0) >= 5


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_splash_bubbles_droplets_sheets(generated, shape):
    data = generated("splash", shape)
    flags, prm = data.flags, data.params
    air_labels, _ = components(flags == AIR)
    top = set(np.unique(air_labels[..., -1])) - {0}
    bubbles = set(np.unique(air_labels)) - {0} - top
    assert len(bubbles) >= 1  # AIR pockets inside the liquid
    fluid_labels, n_fluid = components(flags == FLUID)
    pool = set(np.unique(fluid_labels[..., 0])) - {0}
    assert n_fluid - len(pool) >= 2  # droplets and sheets in the air
    assert prm["sheets"]
    for s in prm["sheets"]:
        key = tuple(slice(a, b) for a, b in zip(s["lo"], s["hi"], strict=True))
        z = s["z"]
        assert np.all(flags[(*key, z)] == FLUID)
        assert not (flags[(*key, z - 1)] == FLUID).any()
        assert not (flags[(*key, z + 1)] == FLUID).any()
    assert data.boundary[-1] == AIR


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_pockets_are_closed_regions(shape):
    p = scene("pockets", shape, seed=0)
    n = p.params["n_pockets"]
    assert n >= (5 if len(shape) == 2 else 15)
    assert p.closed_regions[1] == n
    assert closed_components(p.A)[1] == n  # the matrix's own null-space detection agrees
    assert np.count_nonzero(p.diagonal == 0) == p.params["single_cell_pockets"] >= 1


def test_pockets_scale_with_size():
    assert make_scene("pockets", (64, 64)).params["n_pockets"] >= 100


# ---------------------------------------------------------------------------------------------
# solving


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)], ids=["32x32", "16x16x16"])
@pytest.mark.parametrize("name", HARD)
def test_cg_converges(name, shape):
    p = scene(name, shape, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularSystemWarning)
        result = deepcd.solve_result(p, method="cg", rtol=1e-6)
    assert result.info == 0, result.message
    assert result.final_relres <= 1e-6
