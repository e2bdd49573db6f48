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


# -- variable coefficients: density, ghost-fluid free surface, cut cells -----------------------


def _heights(shape):
    """Cell-centre heights (cells, from the floor) on the grid."""
    return np.indices(shape)[-1] + 0.5


def _surface(shape, mean=0.55, amp=0.08):
    """φ (< 0 below) of a wavy surface at `mean` of the height."""
    x = np.indices(shape)[0] + 0.5
    return _heights(shape) - shape[-1] * (mean + amp * np.cos(2 * np.pi * x / shape[0]))


def _obstacle(shape):
    flags = np.zeros(shape, np.int8)
    lo = [n // 4 for n in shape]
    flags[tuple(slice(a, a + 3) for a in lo)] = SOLID
    return flags


def _open_fractions(shape, seed):
    """Per-axis face fractions: smooth values in (0, 1], a few faces closed."""
    rng = np.random.default_rng(seed)
    out = []
    for s in face_shapes(shape):
        f = rng.uniform(0.05, 1.0, s)
        f[rng.uniform(size=s) < 0.05] = 0.0
        f[rng.uniform(size=s) < 0.5] = 1.0
        out.append(f)
    return tuple(out)


def coefficient_case(name, shape):
    """(flags, boundary, keywords for project) of a variable-coefficient projection."""
    open_top = (SOLID,) * (2 * len(shape) - 1) + (AIR,)
    phi = _surface(shape)
    if name == "density-cells-1000":  # two phases: liquid 1000, gas 1, every cell FLUID
        return _obstacle(shape), open_top, {"density": np.where(phi < 0, 1000.0, 1.0)}
    if name == "density-faces-sharp":  # the same with the sharp face density of the level set
        from deepcd.cfd.twophase import two_phase_face_density

        return _obstacle(shape), open_top, {"density": two_phase_face_density(phi, 1000.0, 1.0)}
    if name == "ghost-fluid":  # a free surface: liquid FLUID, AIR above, θ from φ
        flags = np.where(phi < 0, FLUID, AIR).astype(np.int8) | _obstacle(shape)
        return flags, SOLID, {"liquid_phi": phi, "density": 1000.0}
    if name == "cut-cells":
        return _obstacle(shape), open_top, {"solid_fraction": _open_fractions(shape, 1)}
    if name == "all":  # cell density + ghost fluid + cut cells at once
        flags = np.where(phi < 0, FLUID, AIR).astype(np.int8) | _obstacle(shape)
        rng = np.random.default_rng(2)
        return (
            flags,
            SOLID,
            {
                "density": np.exp(rng.uniform(-3, 3, shape)),
                "liquid_phi": phi,
                "solid_fraction": _open_fractions(shape, 3),
            },
        )
    raise KeyError(name)


def weighted_divergence(velocity, flags, boundary, fraction=None):
    """The fraction-weighted divergence Σ ±α·u (stationary walls), from the face arrays."""
    if fraction is not None:
        velocity = tuple(f * u for f, u in zip(fraction, velocity, strict=True))
    return divergence(velocity, flags, boundary)


COEFFICIENT_CASES = ["density-cells-1000", "density-faces-sharp", "ghost-fluid", "cut-cells", "all"]


@pytest.mark.parametrize("method", ["dcdm", "cg", "mic0"])
@pytest.mark.parametrize("shape", [(24, 20), (12, 12, 16)], ids=["2d", "3d"])
@pytest.mark.parametrize("case", COEFFICIENT_CASES)
def test_projection_with_coefficients_leaves_divergence_below_rtol(case, shape, method):
    flags, boundary, kw = coefficient_case(case, shape)
    velocity = random_velocity(shape, seed=len(case))
    fraction = kw.get("solid_fraction")
    fluid = flags == FLUID
    rtol = 1e-7
    new, pressure, result = project(
        velocity, flags, boundary=boundary, method=method, rtol=rtol, dt=0.5, dx=0.1, **kw
    )
    assert result.converged
    before = weighted_divergence(velocity, flags, boundary, fraction)[fluid]
    after = weighted_divergence(new, flags, boundary, fraction)[fluid]
    assert np.linalg.norm(after) <= 1.01 * rtol * np.linalg.norm(before)
    assert np.all(pressure[~fluid] == 0) and np.abs(pressure).max() > 0
    walls = solid_face_masks(flags, boundary)
    for axis, (comp, mask) in enumerate(zip(new, walls, strict=True)):
        closed = mask if fraction is None else mask | (fraction[axis] == 0)
        assert np.all(comp[closed] == 0)  # walls, cut-cell walls included, are impermeable


@pytest.mark.parametrize("two_phase", [False, True], ids=["ghost-fluid", "two-phase"])
def test_liquid_at_rest_stays_at_rest_with_the_hydrostatic_pressure(two_phase):
    """Gravity on a resting column: the projection must cancel it exactly and return
    p = ∫ρg — with the surface between cell centres (ghost fluid: p = 0 at the surface, not
    at the AIR centre) or a 1000× density jump inside the column (two-phase)."""
    shape, g, dx, dt, rho = (8, 20), 9.81, 0.05, 0.01, 1000.0
    level = 13.3  # the surface, in cells
    z = _heights(shape)
    phi = z - level
    velocity = tuple(np.zeros(s) for s in face_shapes(shape))
    velocity[1][:] = -g * dt  # u* after the gravity step
    if two_phase:
        from deepcd.cfd.twophase import two_phase_face_density

        flags = np.zeros(shape, np.int8)
        face_rho = two_phase_face_density(phi, rho, 1.0)
        kw = {"density": face_rho}
        boundary = (SOLID, SOLID, SOLID, AIR)
    else:
        flags = np.where(phi < 0, FLUID, AIR).astype(np.int8)
        kw = {"density": rho, "liquid_phi": phi}
        boundary = SOLID
    new, pressure, result = project(
        velocity, flags, boundary=boundary, dx=dx, dt=dt, method="cg", rtol=1e-12, **kw
    )
    assert result.converged
    fluid = np.pad(flags == FLUID, ((0, 0), (1, 1)))
    wet = fluid[:, 1:] | fluid[:, :-1]  # vertical faces beside a FLUID cell (AIR–AIR keep u*)
    np.testing.assert_allclose(new[1][wet], 0.0, atol=1e-9)
    np.testing.assert_allclose(new[0], 0.0, atol=1e-9)
    if two_phase:  # p = 0 in the AIR cell outside the open top, then Σ ρ_f g dx downwards
        expected = np.zeros(shape)
        expected[:, -1] = face_rho[1][:, -1] * g * dx
        for k in range(shape[1] - 2, -1, -1):
            expected[:, k] = expected[:, k + 1] + face_rho[1][:, k + 1] * g * dx
    else:
        expected = np.where(phi < 0, rho * g * (level - z) * dx, 0.0)
    np.testing.assert_allclose(pressure, expected, rtol=1e-9, atol=1e-9 * expected.max())


@pytest.mark.parametrize("method", ["cg", "dcdm"])
def test_unit_coefficients_reproduce_the_constant_projection(method):
    flags, boundary = CASES["3d-obstacle-surface"]
    shape = flags.shape
    velocity = random_velocity(shape, 11)
    plain = Projector(flags, boundary=boundary, method=method)
    assert plain.coefficients is None  # scalar density: today's constant-coefficient path
    # θ = 1 everywhere: the level set crosses zero at the AIR cells' centres
    phi = _heights(shape) - (shape[-1] - 3 + 0.5)
    ones = Projector(
        flags,
        boundary=boundary,
        method=method,
        density=np.ones(shape),
        liquid_phi=phi,
        solid_fraction=tuple(np.ones(s) for s in face_shapes(shape)),
    )
    assert ones.coefficients is not None
    A, B = plain.problem.A, ones.problem.A
    assert (A != B).nnz == 0 and A.nnz == B.nnz  # the very same matrix
    a, pa, _ = plain.project(velocity, rtol=1e-12, dt=0.3)
    b, pb, _ = ones.project(velocity, rtol=1e-12, dt=0.3)
    for u, w in zip(a, b, strict=True):
        np.testing.assert_allclose(u, w, rtol=0, atol=1e-10)
    np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-10 * np.abs(pa).max())
    # a uniform density array of 1000 is the scalar 1000
    c, pc, _ = project(velocity, flags, boundary=boundary, method="cg", rtol=1e-12, density=1e3)
    d, pd, _ = project(
        velocity, flags, boundary=boundary, method="cg", rtol=1e-12, density=np.full(shape, 1e3)
    )
    for u, w in zip(c, d, strict=True):
        np.testing.assert_allclose(u, w, rtol=0, atol=1e-10)
    np.testing.assert_allclose(pc, pd, rtol=1e-9)


def test_set_coefficients_rebuilds_the_system():
    flags, boundary, kw = coefficient_case("density-cells-1000", (24, 20))
    projector = Projector(flags, boundary=boundary, method="cg")
    velocity = random_velocity(flags.shape, 12)
    _, p1, _ = projector.project(velocity, rtol=1e-10)
    projector.set_coefficients(**kw)
    _, p2, _ = projector.project(velocity, rtol=1e-10)
    _, p3, _ = project(velocity, flags, boundary=boundary, method="cg", rtol=1e-10, **kw)
    assert np.abs(p2 - p1).max() > 1e-3 * np.abs(p1).max()
    np.testing.assert_allclose(p2, p3, rtol=1e-8, atol=1e-8 * np.abs(p3).max())


def test_bad_coefficients_are_a_clear_error():
    shape = (12, 10)
    flags = np.zeros(shape, np.int8)
    flags[..., -2:] = AIR
    good = random_velocity(shape)
    faces = face_shapes(shape)
    cells = np.ones(shape)

    def with_value(arr, value):
        arr = arr.copy()
        arr.flat[7] = value
        return arr

    for density in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="density"):
            project(good, flags, density=density)
        with pytest.raises(ValueError, match="density"):
            project(good, flags, density=with_value(cells, density))
        with pytest.raises(ValueError, match=r"density\[1\]"):
            project(
                good, flags, density=(np.ones(faces[0]), with_value(np.ones(faces[1]), density))
            )
    with pytest.raises(ValueError, match=r"density.*shape"):
        project(good, flags, density=np.ones((12, 11)))
    with pytest.raises(ValueError, match="density"):
        project(good, flags, density=(np.ones(faces[0]),))
    with pytest.raises(ValueError, match=r"density\[0\].*shape"):
        project(good, flags, density=(np.ones(faces[1]), np.ones(faces[1])))
    with pytest.raises(TypeError, match="density"):
        project(good, flags, density="water")
    with pytest.raises(TypeError, match="density"):
        project(good, flags, density=cells.astype(complex))
    for value in (np.nan, np.inf):
        with pytest.raises(ValueError, match=r"liquid_phi.*NaN"):
            project(good, flags, liquid_phi=with_value(cells, value))
    with pytest.raises(ValueError, match=r"liquid_phi.*shape"):
        project(good, flags, liquid_phi=np.ones((10, 12)))
    with pytest.raises(TypeError, match="liquid_phi"):
        project(good, flags, liquid_phi=cells.astype(complex))
    ones = [np.ones(s) for s in faces]
    for value in (-0.1, 1.5, np.nan):
        with pytest.raises(ValueError, match=r"solid_fraction\[1\]"):
            project(good, flags, solid_fraction=(ones[0], with_value(ones[1], value)))
    with pytest.raises(ValueError, match=r"solid_fraction\[0\].*shape"):
        project(good, flags, solid_fraction=(ones[1], ones[1]))
    with pytest.raises(ValueError, match="solid_fraction"):
        project(good, flags, solid_fraction=(*ones, ones[0]))
    with pytest.raises(TypeError, match="solid_fraction"):
        project(good, flags, solid_fraction=np.ones(shape))
    projector = Projector(flags, method="cg")
    with pytest.raises(ValueError, match="density"):
        projector.set_coefficients(density=with_value(cells, 0.0))
