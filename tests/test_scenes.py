"""Scenes (deepcd.problems.scenes) and the MAC divergence (deepcd.problems.mac)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from deepcd.problems.flags import AIR, FLUID, SOLID, normalize_boundary, validate_flags
from deepcd.problems.mac import divergence, face_shapes, solid_face_masks
from deepcd.problems.scenes import SceneData, _vortex_ring, make_scene, scene_names

REQUIRED = {"box", "smoke-plume", "smoke-obstacles", "bunny", "pool", "poisson-box", "closed-box"}
SHAPES = [(16, 16), (24, 20), (16, 16, 16), (12, 16, 20)]
SHAPE_IDS = ["16x16", "24x20", "16x16x16", "12x16x20"]
CASES = [(name, shape) for name in sorted(REQUIRED) for shape in SHAPES]
CASE_IDS = [f"{name}-{sid}" for name in sorted(REQUIRED) for sid in SHAPE_IDS]


@pytest.fixture(scope="module")
def generated():
    """Scenes made once per (name, shape, seed) for the whole module."""
    cache = {}

    def get(name, shape, seed=0):
        key = (name, shape, seed)
        if key not in cache:
            cache[key] = make_scene(name, shape, seed=seed)
        return cache[key]

    return get


# ---------------------------------------------------------------------------------------------
# helpers written independently of the package


def padded_flags(flags: np.ndarray, boundary) -> np.ndarray:
    """The grid with one ring of outside cells carrying the boundary flags (corners: SOLID)."""
    nd = flags.ndim
    pad = np.pad(flags, 1, constant_values=SOLID)
    for a in range(nd):
        key = [slice(1, -1)] * nd
        key[a] = 0
        pad[tuple(key)] = boundary[2 * a]
        key[a] = -1
        pad[tuple(key)] = boundary[2 * a + 1]
    return pad


def closed_fluid_regions(flags: np.ndarray, boundary) -> list[int]:
    """Labels of face-connected FLUID regions with no AIR neighbour (cell or boundary face)."""
    labels, count = ndimage.label(flags == FLUID)
    pad_air = padded_flags(flags, boundary) == AIR
    near_air = ndimage.binary_dilation(pad_air)[(slice(1, -1),) * flags.ndim]
    touching = set(np.unique(labels[near_air & (flags == FLUID)]).tolist())
    return sorted(set(range(1, count + 1)) - touching)


def roughness(rhs: np.ndarray, flags: np.ndarray, margin: int = 2) -> float:
    """Mean squared neighbour difference / (2 mean square) over the fluid interior.

    Only cells at least `margin` cells away from any non-fluid cell or grid face count, so wall
    layers are left out. White noise gives about 1; a smooth field gives much less.
    """
    inner = ndimage.binary_erosion(flags == FLUID, iterations=margin, border_value=0)
    num, pairs = 0.0, 0
    for a in range(rhs.ndim):
        lo = [slice(None)] * rhs.ndim
        hi = [slice(None)] * rhs.ndim
        lo[a], hi[a] = slice(None, -1), slice(1, None)
        both = inner[tuple(lo)] & inner[tuple(hi)]
        num += float(np.sum((rhs[tuple(hi)][both] - rhs[tuple(lo)][both]) ** 2))
        pairs += int(both.sum())
    assert pairs > 20, "too little interior to judge smoothness"
    return num / pairs / (2.0 * float(np.mean(rhs[inner] ** 2)))


def loop_divergence(velocity, flags, boundary, solid_velocity) -> np.ndarray:
    """Cell by cell: a face whose other side is SOLID carries the solid velocity."""
    nd = flags.ndim
    out = np.zeros(flags.shape)
    for cell in np.ndindex(*flags.shape):
        if flags[cell] != FLUID:
            continue
        total = 0.0
        for a in range(nd):
            for side, sign in ((0, -1.0), (1, 1.0)):
                neighbour = list(cell)
                neighbour[a] += 1 if side else -1
                if 0 <= neighbour[a] < flags.shape[a]:
                    other = flags[tuple(neighbour)]
                else:
                    other = boundary[2 * a + side]
                face = list(cell)
                face[a] += side
                source = solid_velocity if other == SOLID else velocity
                total += sign * float(source[a][tuple(face)])
        out[cell] = total
    return out


# ---------------------------------------------------------------------------------------------
# scenes


def test_scene_names_sorted_and_complete():
    names = scene_names()
    assert names == sorted(names)
    assert REQUIRED <= set(names)


@pytest.mark.parametrize("name, shape", CASES, ids=CASE_IDS)
def test_scene_output_is_valid(name, shape, generated):
    data = generated(name, shape)
    assert isinstance(data, SceneData)
    flags, rhs = data.flags, data.rhs
    assert flags.dtype == np.int8 and flags.shape == shape
    validate_flags(flags)
    assert set(np.unique(flags).tolist()) <= {FLUID, SOLID, AIR}
    assert np.count_nonzero(flags == FLUID) > 0
    assert isinstance(data.boundary, tuple) and len(data.boundary) == 2 * len(shape)
    assert normalize_boundary(data.boundary, len(shape)) == data.boundary
    assert rhs.dtype == np.float64 and rhs.shape == shape
    assert np.all(np.isfinite(rhs))
    assert np.all(rhs[flags != FLUID] == 0.0)
    assert np.any(rhs[flags == FLUID] != 0.0)
    assert isinstance(data.params, dict)
    json.dumps(data.params)


@pytest.mark.parametrize("name, shape", CASES, ids=CASE_IDS)
def test_scene_is_deterministic_per_seed(name, shape, generated):
    a = generated(name, shape, seed=5)
    b = make_scene(name, shape, seed=5)
    assert np.array_equal(a.flags, b.flags) and a.boundary == b.boundary
    assert a.rhs.tobytes() == b.rhs.tobytes()
    assert json.dumps(a.params, sort_keys=True) == json.dumps(b.params, sort_keys=True)
    c = generated(name, shape, seed=6)
    assert not np.array_equal(a.rhs, c.rhs)


@pytest.mark.parametrize("name, shape", CASES, ids=CASE_IDS)
def test_fluid_regions_touch_air(name, shape, generated):
    data = generated(name, shape)
    if name == "closed-box":
        assert data.boundary == (SOLID,) * (2 * len(shape))
        assert not np.any(data.flags == AIR)
        assert len(closed_fluid_regions(data.flags, data.boundary)) == 1
    else:
        assert closed_fluid_regions(data.flags, data.boundary) == []


@pytest.mark.parametrize("name, shape", CASES, ids=CASE_IDS)
def test_rhs_is_smooth_not_white_noise(name, shape, generated):
    data = generated(name, shape)
    rng = np.random.default_rng(0)
    noise = np.where(data.flags == FLUID, rng.standard_normal(shape), 0.0)
    assert roughness(noise, data.flags) > 0.7  # the criterion rejects white noise
    if name == "poisson-box":
        assert roughness(data.rhs, data.flags) > 0.7
    else:
        assert roughness(data.rhs, data.flags) < 0.5


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_scene_boundaries(shape, generated):
    nd = len(shape)
    open_top = (SOLID,) * (2 * nd - 1) + (AIR,)
    for name in ("box", "smoke-plume", "smoke-obstacles", "pool"):
        assert generated(name, shape).boundary == open_top, name
    assert generated("poisson-box", shape).boundary == (AIR,) * (2 * nd)
    assert generated("bunny", shape).boundary == (SOLID, AIR) + (SOLID,) * (2 * nd - 2)
    assert np.all(generated("poisson-box", shape).flags == FLUID)
    assert np.all(generated("closed-box", shape).flags == FLUID)
    assert np.all(generated("box", shape).flags == FLUID)


@pytest.mark.parametrize("shape", [(16, 16), (12, 16, 20)], ids=["2d", "3d"])
def test_pool_has_liquid_below_air(shape, generated):
    flags = generated("pool", shape).flags
    assert not np.any(flags == SOLID)
    depth = np.count_nonzero(flags == FLUID, axis=-1)
    assert depth.min() >= 1
    # each column: FLUID from the floor up to the surface, AIR above
    z = np.arange(shape[-1])
    expected = np.where(z < depth[..., None], FLUID, AIR)
    assert np.array_equal(flags, expected)
    # a flat surface at a quarter of the height: exactly the cell centres below it are liquid
    flat = make_scene("pool", shape, seed=0, surface_height=0.25, wave_amplitude=0.0)
    assert np.count_nonzero(flat.flags == FLUID) == flags.size // 4


@pytest.mark.parametrize("shape", [(24, 20), (16, 16, 16)], ids=["2d", "3d"])
def test_obstacles_and_blob(shape, generated):
    data = generated("smoke-obstacles", shape)
    assert np.any(data.flags == SOLID)
    assert 3 <= data.params["n_obstacles"] <= 6
    assert len(data.params["obstacles"]) + data.params["dropped_obstacles"] <= 6
    centre = tuple(int(f * n) for f, n in zip(data.params["source_center"], shape, strict=False))
    assert data.flags[(*centre, 0)] == FLUID  # the source stays fluid
    none = make_scene("smoke-obstacles", shape, seed=0, n_obstacles=0)
    assert not np.any(none.flags == SOLID) and none.params["obstacles"] == []
    many = make_scene("smoke-obstacles", shape, seed=1, n_obstacles=30)
    assert closed_fluid_regions(many.flags, many.boundary) == []
    assert isinstance(many.params["filled_cells"], int)
    bunny = generated("bunny", shape)
    middle = tuple(n // 2 for n in shape)
    assert bunny.flags[middle] == SOLID
    assert 0.02 < np.mean(bunny.flags == SOLID) < 0.5
    assert bunny.params["filled_cells"] == 0


def test_overriding_a_parameter_keeps_the_others():
    base = make_scene("smoke-plume", (24, 20), seed=3)
    changed = make_scene("smoke-plume", (24, 20), seed=3, plume_radius=0.1)
    assert changed.params["plume_radius"] == 0.1
    for key, value in base.params.items():
        if key != "plume_radius":
            assert changed.params[key] == value, key
    assert not np.array_equal(base.rhs, changed.rhs)


def test_closed_box_rhs_is_compatible_unless_offset():
    data = make_scene("closed-box", (16, 12, 10), seed=2)
    assert abs(data.rhs.sum()) < 1e-5 * np.abs(data.rhs).sum()
    shifted = make_scene("closed-box", (16, 12, 10), seed=2, offset=0.5)
    assert shifted.params["offset"] == 0.5
    np.testing.assert_allclose(shifted.rhs - data.rhs, 0.5)


def test_geometry_free_scenes_accept_small_shapes():
    assert make_scene("poisson-box", (3, 2), seed=0).rhs.shape == (3, 2)
    assert make_scene("closed-box", (4, 4, 4), seed=0).flags.shape == (4, 4, 4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"name": "nope", "shape": (16, 16)}, ValueError, "smoke-plume"),
        ({"name": "box", "shape": (16,)}, ValueError, "shape"),
        ({"name": "box", "shape": (16, 16, 16, 16)}, ValueError, "shape"),
        ({"name": "box", "shape": (7, 16)}, ValueError, "at least 8"),
        ({"name": "pool", "shape": (16, 16, 4)}, ValueError, "at least 8"),
        ({"name": "box", "shape": (16.0, 16)}, ValueError, "int"),
        ({"name": "box", "shape": "16x16"}, ValueError, "shape"),
        ({"name": "box", "shape": (16, 16), "bogus": 1}, TypeError, "bogus"),
        ({"name": "poisson-box", "shape": (16, 16), "flow_amplitude": 1.0}, TypeError, "flow"),
        ({"name": "pool", "shape": (16, 16), "surface_height": "high"}, TypeError, "number"),
        ({"name": "pool", "shape": (16, 16), "surface_height": 2.0}, ValueError, "surface"),
        ({"name": "smoke-obstacles", "shape": (16, 16), "n_obstacles": 2.5}, TypeError, "integer"),
        ({"name": "box", "shape": (16, 16), "ring_axis": [0.0, 0.0]}, ValueError, "zero"),
        ({"name": "box", "shape": (16, 16), "ring_center": [0.5]}, ValueError, "2 numbers"),
    ],
)
def test_make_scene_rejects_bad_input(kwargs, error, message):
    name, shape = kwargs.pop("name"), kwargs.pop("shape")
    with pytest.raises(error, match=message):
        make_scene(name, shape, seed=0, **kwargs)


# ---------------------------------------------------------------------------------------------
# MAC divergence


@pytest.mark.parametrize(
    "shape, boundary",
    [
        ((6, 5), (SOLID, AIR, SOLID, AIR)),
        ((4, 5, 3), (AIR, SOLID, SOLID, SOLID, SOLID, AIR)),
    ],
    ids=["2d", "3d"],
)
def test_divergence_matches_loop(shape, boundary):
    rng = np.random.default_rng(11)
    flags = rng.choice(np.array([FLUID, FLUID, FLUID, SOLID, AIR], np.int8), size=shape)
    faces = face_shapes(shape)
    velocity = tuple(rng.standard_normal(s) for s in faces)
    solid_velocity = tuple(rng.standard_normal(s) for s in faces)
    got = divergence(velocity, flags, boundary, solid_velocity)
    assert got.dtype == np.float64 and got.shape == shape
    np.testing.assert_allclose(got, loop_divergence(velocity, flags, boundary, solid_velocity))
    zeros = tuple(np.zeros(s) for s in faces)
    np.testing.assert_allclose(
        divergence(velocity, flags, boundary), loop_divergence(velocity, flags, boundary, zeros)
    )
    # float32 input: float64 output, same values to float32 precision
    single = tuple(v.astype(np.float32) for v in velocity)
    out32 = divergence(single, flags, boundary)
    assert out32.dtype == np.float64
    np.testing.assert_allclose(out32, divergence(velocity, flags, boundary), atol=1e-5)


def test_solid_face_masks_small_case():
    flags = np.array([[FLUID, SOLID], [AIR, FLUID]], np.int8)
    u_mask, v_mask = solid_face_masks(flags, (SOLID, AIR, AIR, AIR))
    assert u_mask.shape == (3, 2) and v_mask.shape == (2, 3)
    # u faces along x: outside x-lo is SOLID, outside x-hi is AIR; cell (0, 1) is SOLID
    assert u_mask.tolist() == [[True, True], [False, True], [False, False]]
    # v faces along y: both outside faces AIR; row 0 has the solid cell (0, 1)
    assert v_mask.tolist() == [[False, True, True], [False, False, False]]


def stream_function_velocity(psi: np.ndarray):
    """u, v of a 2D node stream function: discretely divergence-free."""
    u = psi[:, 1:] - psi[:, :-1]
    v = -(psi[1:, :] - psi[:-1, :])
    return u, v


def test_divergence_of_stream_function_flow_is_zero():
    rng = np.random.default_rng(4)
    nx, ny = 12, 9
    psi = rng.standard_normal((nx + 1, ny + 1))
    flags = np.zeros((nx, ny), np.int8)
    flags[3:5, 6:8] = AIR  # interior free surface cells keep their faces
    div = divergence(stream_function_velocity(psi), flags, AIR)
    np.testing.assert_allclose(div, 0.0, atol=1e-12)
    # solid walls that the flow does not cross: psi constant on the boundary nodes
    psi[0, :] = psi[-1, :] = psi[:, 0] = psi[:, -1] = 0.0
    div = divergence(stream_function_velocity(psi), flags, SOLID)
    np.testing.assert_allclose(div, 0.0, atol=1e-12)


def test_divergence_of_curl_is_zero_3d():
    rng = np.random.default_rng(5)
    nx, ny, nz = 6, 5, 7
    ax = rng.standard_normal((nx, ny + 1, nz + 1))  # edge-centred vector potential
    ay = rng.standard_normal((nx + 1, ny, nz + 1))
    az = rng.standard_normal((nx + 1, ny + 1, nz))
    u = np.diff(az, axis=1) - np.diff(ay, axis=2)
    v = np.diff(ax, axis=2) - np.diff(az, axis=0)
    w = np.diff(ay, axis=0) - np.diff(ax, axis=1)
    div = divergence((u, v, w), np.zeros((nx, ny, nz), np.int8), AIR)
    np.testing.assert_allclose(div, 0.0, atol=1e-12)


def test_vortex_ring_is_nearly_divergence_free():
    shape = (40, 40, 40)
    ring, lo, hi = _vortex_ring([20.0, 20.0, 20.0], [0.6, 0.0, 0.8], 8.0, 3.0, 1.0)
    coords = [
        (np.arange(n + (d == a), dtype=np.float32) + (0.0 if d == a else 0.5)).reshape(
            [-1 if e == d else 1 for e in range(3)]
        )
        for a in range(3)
        for d, n in enumerate(shape)
    ]
    velocity = tuple(
        np.broadcast_to(ring(a, coords[3 * a : 3 * a + 3]), face_shapes(shape)[a]) for a in range(3)
    )
    speed = max(float(np.abs(c).max()) for c in velocity)
    assert 0.3 < speed < 2.0
    gradient = float(np.abs(np.diff(velocity[2], axis=2)).max())
    div = divergence(velocity, np.zeros(shape, np.int8), AIR)
    assert np.abs(div).max() < 0.05 * gradient
    assert all(l_ <= 20.0 - 8.0 for l_ in lo) and all(h >= 20.0 + 8.0 for h in hi)


def test_divergence_rejects_bad_input():
    flags = np.zeros((4, 3), np.int8)
    u, v = np.zeros((5, 3)), np.zeros((4, 4))
    with pytest.raises(ValueError, match=r"velocity\[0\].*\(5, 3\).*\(4, 3\)"):
        divergence((np.zeros((4, 3)), v), flags)
    with pytest.raises(ValueError, match="2 face arrays"):
        divergence((u,), flags)
    with pytest.raises(TypeError, match="tuple"):
        divergence(np.zeros((5, 3)), flags)
    bad = u.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        divergence((bad, v), flags)
    bad[1, 1] = np.inf
    with pytest.raises(ValueError, match="Inf"):
        divergence((bad, v), flags)
    with pytest.raises(ValueError, match=r"solid_velocity\[1\].*\(4, 4\)"):
        divergence((u, v), flags, SOLID, (u, np.zeros((4, 3))))
    with pytest.raises(TypeError, match="real"):
        divergence((u.astype(complex), v), flags)
    with pytest.raises(ValueError, match="boundary"):
        divergence((u, v), flags, (SOLID, AIR))
    with pytest.raises(ValueError, match="flags"):
        divergence((u, v), np.full((4, 3), 7, np.int8))
    # None entries of solid_velocity mean zero
    np.testing.assert_array_equal(
        divergence((u + 1.0, v), flags, SOLID, (None, None)), divergence((u + 1.0, v), flags)
    )
