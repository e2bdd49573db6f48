"""deepcd.cfd.project: divergence-free results, walls, free surfaces, closed boxes, warm starts."""

from __future__ import annotations

import numpy as np
import pytest

from deepcd.cfd import Projector, project
from deepcd.problems import AIR, FLUID, SOLID, scene
from deepcd.problems.mac import divergence, face_shapes, solid_face_masks


def random_velocity(shape, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(s).astype(dtype) for s in face_shapes(shape))


def fluid_div_norm(velocity, flags, boundary, solid_velocity=None) -> float:
    div = divergence(velocity, flags, boundary, solid_velocity)
    return float(np.linalg.norm(div[flags == FLUID]))


def obstacles_with_surface(shape):
    flags = np.zeros(shape, np.int8)
    centre = tuple(n // 2 for n in shape)
    flags[tuple(slice(c - 2, c + 2) for c in centre)] = SOLID
    flags[..., -3:] = AIR  # a free surface near the top
    return flags


CASES = {
    "2d-obstacle-surface": (obstacles_with_surface((24, 20)), SOLID),
    "3d-obstacle-surface": (obstacles_with_surface((14, 12, 16)), SOLID),
    "3d-open-top": (scene("smoke-obstacles", (16, 16, 16), seed=1).flags, (1, 1, 1, 1, 1, 2)),
    "2d-closed-box": (np.zeros((20, 18), np.int8), SOLID),
    "3d-closed-box-obstacle": (obstacles_with_surface((12, 12, 12))[..., :-3].copy(), SOLID),
}


@pytest.mark.filterwarnings("error::deepcd.SingularSystemWarning")  # project stays quiet
@pytest.mark.parametrize("method", ["dcdm", "cg", "mic0"])
@pytest.mark.parametrize("case", list(CASES))
def test_divergence_free_to_the_tolerance(case, method):
    flags, boundary = CASES[case]
    velocity = random_velocity(flags.shape, seed=len(case))
    before = divergence(velocity, flags, boundary)
    fluid = flags == FLUID
    # a closed region can only be made divergence-free up to its mean (the compatible part)
    closed = not (flags == AIR).any() and AIR not in np.atleast_1d(boundary)
    ref = before[fluid] - (before[fluid].mean() if closed else 0.0)
    rtol = 1e-7
    new, pressure, result = project(
        velocity, flags, boundary=boundary, method=method, rtol=rtol, dt=0.5, dx=0.1
    )
    assert result.converged
    after = divergence(new, flags, boundary)[fluid]
    assert np.linalg.norm(after) <= 1.01 * rtol * np.linalg.norm(ref)
    assert np.all(pressure[~fluid] == 0)
    if closed:
        assert abs(pressure[fluid].mean()) < 1e-9 * np.abs(pressure).max()
    for comp, mask in zip(new, solid_face_masks(flags, boundary), strict=True):
        assert np.all(comp[mask] == 0)  # walls are impermeable


def test_moving_walls_keep_their_velocity():
    flags, _boundary = CASES["3d-obstacle-surface"]
    velocity = random_velocity(flags.shape, 3)
    walls = tuple(np.full(s, 0.25) for s in face_shapes(flags.shape))
    walls = (walls[0], None, walls[2])
    new, _p, result = project(velocity, flags, solid_velocity=walls, method="cg", rtol=1e-8)
    assert result.converged
    masks = solid_face_masks(flags)
    np.testing.assert_array_equal(new[0][masks[0]], 0.25)
    np.testing.assert_array_equal(new[1][masks[1]], 0.0)
    assert fluid_div_norm(new, flags, SOLID, walls) <= 1e-7 * fluid_div_norm(
        velocity, flags, SOLID, walls
    )


def test_units_scale_the_pressure_not_the_velocity():
    flags, _boundary = CASES["2d-obstacle-surface"]
    velocity = random_velocity(flags.shape, 4)
    a, pa, _ = project(velocity, flags, method="cg", rtol=1e-10)
    b, pb, _ = project(velocity, flags, method="cg", rtol=1e-10, dx=0.5, dt=0.1, density=1000.0)
    for u, w in zip(a, b, strict=True):
        np.testing.assert_allclose(u, w, atol=1e-8)
    np.testing.assert_allclose(pb, pa * 1000.0 * 0.5 / 0.1, rtol=1e-6, atol=1e-6)


def test_float32_velocity_stays_float32():
    flags, _ = CASES["2d-obstacle-surface"]
    new, _p, _r = project(random_velocity(flags.shape, 5, np.float32), flags, method="cg")
    assert all(c.dtype == np.float32 for c in new)


def test_warm_start_lowers_iterations_on_a_similar_step():
    problem = scene("smoke-obstacles", (24, 24, 24), seed=2)
    projector = Projector(problem.flags, boundary=problem.boundary)
    v1 = random_velocity(problem.shape, 6)
    _, p1, _r1 = projector.project(v1, rtol=1e-8)
    v2 = tuple(c + 0.01 * n for c, n in zip(v1, random_velocity(problem.shape, 7), strict=True))
    _, _, cold = projector.project(v2, rtol=1e-8)
    _, _, warm = projector.project(v2, rtol=1e-8, pressure0=p1)
    assert warm.converged and cold.converged
    assert warm.iterations < cold.iterations


def test_bad_input_is_a_clear_error():
    flags, _ = CASES["2d-obstacle-surface"]
    good = random_velocity(flags.shape)
    with pytest.raises(ValueError, match="shape"):
        project((good[0][:-1], good[1]), flags)
    with pytest.raises(ValueError, match="2 face arrays"):
        project((*good, good[0]), flags)
    with pytest.raises(ValueError, match="shape"):
        project(random_velocity((10, 10)), flags)
    bad = (good[0].copy(), good[1])
    bad[0][3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        project(bad, flags)
    with pytest.raises(TypeError, match="tuple"):
        project(good[0], flags)
    with pytest.raises(ValueError, match="dt"):
        project(good, flags, dt=0.0)
    with pytest.raises(ValueError, match="pressure0"):
        project(good, flags, pressure0=np.zeros((3, 3)))


@pytest.mark.parametrize("method", ["dcdm", "cg"])
def test_flags_edited_in_place_between_projections_are_picked_up(method):
    """Issue 14.1: a simulation moves an obstacle by editing its flags array in place."""
    shape = (16, 16, 16)
    flags = np.zeros(shape, np.int8)
    flags[4:8, 4:8, 4:8] = SOLID
    boundary = (1, 1, 1, 1, 1, 2)
    projector = Projector(flags, boundary=boundary, method=method)
    projector.project(random_velocity(shape, 0), rtol=1e-6)
    # move the obstacle: same FLUID count
    flags[4:8, 4:8, 4:8] = FLUID
    flags[8:12, 6:10, 5:9] = SOLID
    velocity = random_velocity(shape, 1)
    new, _, result = projector.project(velocity, rtol=1e-6)
    assert result.converged
    assert projector.rebuilds == 1
    before = fluid_div_norm(velocity, flags, boundary)
    assert fluid_div_norm(new, flags, boundary) <= 1e-5 * before
    # a changed FLUID count: no shape error, the new grid is used
    flags[0:3, :, :] = SOLID
    new, _, result = projector.project(random_velocity(shape, 2), rtol=1e-6)
    assert result.converged and projector.rebuilds == 2
    assert np.abs(divergence(new, flags, boundary)[flags == FLUID]).max() < 1e-4


def test_problem_owns_its_flags_and_rhs():
    from deepcd.problems import from_flags

    flags = np.zeros((8, 8), np.int8)
    rhs = np.ones(64)
    problem = from_flags(flags, rhs)
    flags[2:4, 2:4] = SOLID
    rhs[:] = 7.0
    assert not problem.flags.any() and np.all(problem.b == 1.0)
    with pytest.raises(ValueError, match="read-only"):
        problem.flags[0, 0] = SOLID
    with pytest.raises(ValueError, match="read-only"):
        problem.b[0] = 2.0
