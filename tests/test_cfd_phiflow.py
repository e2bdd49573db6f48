"""deepcd.cfd.phiflow.make_incompressible against PhiFlow's own fluid.make_incompressible."""

import warnings

import numpy as np
import pytest

with warnings.catch_warnings():  # PhiFlow's import warns about its experimental extrapolations
    warnings.simplefilter("ignore", DeprecationWarning)
    pytest.importorskip("phi")
    from phi import field, math
    from phi.flow import (
        Box,
        CenteredGrid,
        Noise,
        Obstacle,
        Solve,
        Sphere,
        StaggeredGrid,
        extrapolation,
        fluid,
        vec,
    )

from deepcd.cfd import project
from deepcd.cfd.phiflow import make_incompressible
from deepcd.problems import FLUID, SOLID
from deepcd.problems.mac import divergence

RTOL = 1e-8

pytestmark = [
    pytest.mark.filterwarnings("ignore:Rank deficiency:RuntimeWarning"),  # PhiFlow, closed box
    pytest.mark.filterwarnings("ignore::DeprecationWarning:phi"),  # PhiFlow's internals
]


@pytest.fixture(autouse=True)
def float64():
    """PhiFlow computes in float32 by default; the comparisons need float64."""
    old = math.get_precision()
    math.set_global_precision(64)
    yield
    math.set_global_precision(old)


def _velocity(boundary, seed, **resolution):
    math.seed(seed)
    return StaggeredGrid(Noise(scale=4), boundary, **resolution)


def _components(grid) -> list[np.ndarray]:
    names = grid.resolution.names
    return [grid.values[{"~vector": d}].numpy(names) for d in names]


def _reference(velocity, obstacles):
    # a much tighter solve than deepcd's, so that the difference measures deepcd's error
    return fluid.make_incompressible(
        velocity, obstacles, Solve("CG", 1e-13, 1e-13, max_iterations=20_000)
    )


def _velocity_error(new, ref) -> float:
    """max |new − ref| over all faces, relative to max |ref|."""
    err = max(np.abs(a - b).max() for a, b in zip(_components(new), _components(ref), strict=True))
    return err / max(np.abs(b).max() for b in _components(ref))


def _divergence_ratio(new, velocity, obstacles) -> float:
    """‖div new‖ / ‖div velocity‖ on the fluid cells, by PhiFlow's own divergence operator
    (the input with PhiFlow's obstacle masking applied, which both solvers start from)."""
    names = new.resolution.names
    fluid_cells = np.ones(tuple(new.resolution.sizes), dtype=bool)
    for obs in obstacles:
        fluid_cells &= ~obs.lies_inside(new.geometry.center).numpy(names)
    masked = fluid.apply_boundary_conditions(velocity, obstacles) if obstacles else velocity
    div_new = field.divergence(new).values.numpy(names)[fluid_cells]
    div_old = field.divergence(masked).values.numpy(names)[fluid_cells]
    if not velocity.extrapolation.is_flexible:  # closed domain: the mean cannot be removed
        div_old = div_old - div_old.mean()
    return np.linalg.norm(div_new) / np.linalg.norm(div_old)


# The boxes lie on cell boundaries (integer coordinates with unit cells). Then PhiFlow's cell
# mask (centre inside) and its face mask (f = 1 on the box surface) mark exactly the cells and
# faces deepcd treats as solid, and the two solvers project the same discrete problem.
CASES = {
    "2d-closed-box": (dict(x=32, y=24), extrapolation.ZERO, [Box(x=(10, 16), y=(8, 14))]),
    "2d-inflow-open": (
        dict(x=32, y=24),
        {"x-": vec(x=1.0, y=0.0), "x+": extrapolation.BOUNDARY, "y": 0},
        [Box(x=(6, 9), y=(10, 15))],
    ),
    "3d-closed-box": (
        dict(x=16, y=12, z=14),
        extrapolation.ZERO,
        [Box(x=(5, 9), y=(3, 7), z=(4, 10))],
    ),
    # A sphere covers faces partially: PhiFlow scales them by 1 − f; the adapter applies the
    # same masking (walls="phiflow"), so the results agree here too.
    "3d-sphere-open-top": (
        dict(x=16, y=12, z=14),
        {"x": 0, "y": 0, "z-": 0, "z+": extrapolation.BOUNDARY},
        [Sphere(x=8.3, y=5.7, z=6.1, radius=3.2)],
    ),
}


@pytest.mark.parametrize("method", ["cg", "dcdm"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_phiflow(case, method):
    resolution, boundary, obstacles = CASES[case]
    velocity = _velocity(boundary, seed=len(case), **resolution)
    ref_v, ref_p = _reference(velocity, obstacles)
    new_v, new_p = make_incompressible(velocity, obstacles, method=method, rtol=RTOL)

    assert new_v.is_staggered and new_v.extrapolation == velocity.extrapolation
    assert new_v.values.shape == velocity.values.shape
    assert new_v.bounds == velocity.bounds
    assert new_p.is_centered and new_p.resolution == velocity.resolution

    # pressure: the same units and values (closed domains: deepcd's has zero mean on the fluid
    # cells, PhiFlow's any constant)
    names = velocity.resolution.names
    p, q = new_p.values.numpy(names), ref_p.values.numpy(names)
    if not velocity.extrapolation.is_flexible:
        q = np.where(p != 0, q - q[p != 0].mean(), 0.0)
    p_err = np.abs(p - q).max() / np.abs(q).max()

    err = _velocity_error(new_v, ref_v)
    ratio = _divergence_ratio(new_v, velocity, obstacles)
    print(f"{case} {method}: velocity {err:.1e}, pressure {p_err:.1e}, div ratio {ratio:.1e}")
    assert err < 10 * RTOL
    assert ratio < 2 * RTOL  # deepcd's rtol is exactly this ratio
    # the pressure error is the residual amplified by up to 1/λ_min of the Laplacian
    assert p_err < 100 * RTOL


def test_impermeable_walls_on_a_sphere():
    """walls="impermeable" zeroes every face touching an obstacle cell (PhiFlow leaks (1−f)·u
    through them) and is still divergence-free on the fluid cells."""
    resolution, boundary, obstacles = CASES["3d-sphere-open-top"]
    velocity = _velocity(boundary, seed=3, **resolution)
    new_v, _ = make_incompressible(velocity, obstacles, method="cg", rtol=RTOL, walls="impermeable")
    names = velocity.resolution.names
    solid = obstacles[0].lies_inside(velocity.geometry.center).numpy(names)
    for axis, comp in enumerate(_components(new_v)):
        pad = [(0, 0)] * 3
        pad[axis] = (1, 1)
        padded = np.pad(solid, pad)
        lo = padded[tuple(slice(None, -1) if d == axis else slice(None) for d in range(3))]
        hi = padded[tuple(slice(1, None) if d == axis else slice(None) for d in range(3))]
        touching = lo | hi
        if axis == 2:  # z-: a wall, not stored; z+: open, stored last
            touching = touching[:, :, 1:]
        else:
            touching = touching[tuple(slice(1, -1) if d == axis else slice(None) for d in range(3))]
        assert touching.any()
        assert np.abs(comp[touching]).max() == 0.0
    div = field.divergence(new_v).values.numpy(names)[~solid]
    assert np.abs(div).max() < 1e-6 * np.abs(_components(velocity)[0]).max()


def test_impermeable_equals_phiflow_walls_on_an_aligned_box():
    resolution, boundary, obstacles = CASES["2d-closed-box"]
    velocity = _velocity(boundary, seed=5, **resolution)
    a, _ = make_incompressible(velocity, obstacles, method="cg", rtol=RTOL)
    b, _ = make_incompressible(velocity, obstacles, method="cg", rtol=RTOL, walls="impermeable")
    # f is 1 up to rounding on the box surface, so the walls agree to round-off x solve error
    for x, y in zip(_components(a), _components(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=10 * RTOL)


def test_moving_obstacle_and_solve_argument():
    """A moving box (PhiFlow imposes its velocity inside it); the Solve's x0 and rel_tol are
    used as warm start and tolerance."""
    velocity = _velocity(extrapolation.ZERO, seed=7, x=24, y=20)
    obstacles = [Obstacle(Box(x=(8, 12), y=(6, 11)), velocity=vec(x=0.5, y=-0.25))]
    ref_v, ref_p = _reference(velocity, obstacles)
    cold, _ = make_incompressible(velocity, obstacles, Solve(rel_tol=RTOL), method="cg")
    warm, _ = make_incompressible(velocity, obstacles, Solve(x0=ref_p, rel_tol=RTOL), method="cg")
    err, err_warm = _velocity_error(cold, ref_v), _velocity_error(warm, ref_v)
    print(f"moving box cg: velocity {err:.1e}, warm-started from PhiFlow's pressure {err_warm:.1e}")
    assert err < 10 * RTOL
    assert err_warm < RTOL
    imp, _ = make_incompressible(velocity, obstacles, method="cg", rtol=RTOL, walls="impermeable")
    u = _components(imp)[0]
    assert np.allclose(u[7:12, 6:11], 0.5)  # x-faces 8..12 of the box: stored from face 1


def test_float32_default_precision():
    math.set_global_precision(32)
    resolution, boundary, obstacles = CASES["2d-closed-box"]
    velocity = _velocity(boundary, seed=9, **resolution)
    new_v, new_p = make_incompressible(velocity, obstacles, method="cg", rtol=1e-6)
    assert all(c.dtype == np.float32 for c in _components(new_v))
    assert new_p.values.numpy(new_p.resolution.names).dtype == np.float32
    assert _divergence_ratio(new_v, velocity, obstacles) < 1e-4


def test_errors():
    velocity = _velocity(extrapolation.ZERO, seed=1, x=8, y=6)
    with pytest.raises(TypeError, match="StaggeredGrid"):
        make_incompressible(CenteredGrid(0, x=8, y=6))
    with pytest.raises(ValueError, match="uniform grid spacing"):
        make_incompressible(StaggeredGrid(0, 0, x=8, y=6, bounds=Box(x=8, y=12)))
    with pytest.raises(NotImplementedError, match="periodic"):
        make_incompressible(StaggeredGrid(0, extrapolation.PERIODIC, x=8, y=6))
    with pytest.raises(NotImplementedError, match="active"):
        make_incompressible(velocity, active=CenteredGrid(1, x=8, y=6))
    with pytest.raises(ValueError, match="batch"):
        make_incompressible(StaggeredGrid(Noise(math.batch(b=2)), 0, x=8, y=6))
    with pytest.raises(ValueError, match="walls"):
        make_incompressible(velocity, walls="leaky")


# -- PhiFlow's fractions and densities passed through -------------------------------------------


def _deepcd_faces(grid) -> list[np.ndarray]:
    """A closed-box StaggeredGrid's components in deepcd's layout (zero outer faces added)."""
    out = []
    for axis, comp in enumerate(_components(grid)):
        pad = [(0, 0)] * comp.ndim
        pad[axis] = (1, 1)
        out.append(np.pad(comp, pad))
    return out


def test_cut_cells_use_phiflows_fractions_and_leave_no_divergence():
    velocity = _velocity(extrapolation.ZERO, seed=11, x=24, y=20)
    sphere = Sphere(x=11.3, y=9.6, radius=4.4)
    new_v, _ = make_incompressible(velocity, [sphere], method="cg", rtol=RTOL, cut_cells=True)
    # α = 1 − f, f: PhiFlow's own soft obstacle mask of each face
    covered = _deepcd_faces(field.resample(sphere, velocity, soft=True, balance=1))
    alpha = [1.0 - f for f in covered]
    assert any(((a > 0.05) & (a < 0.95)).any() for a in alpha)  # real cut faces
    names = velocity.resolution.names
    solid = sphere.lies_inside(velocity.geometry.center).numpy(names)
    flags = np.where(solid, SOLID, FLUID).astype(np.int8)
    before = divergence([a * u for a, u in zip(alpha, _deepcd_faces(velocity), strict=True)], flags)
    after = divergence([a * u for a, u in zip(alpha, _deepcd_faces(new_v), strict=True)], flags)
    fluid = flags == FLUID
    centred = before[fluid] - before[fluid].mean()  # a closed box: only the compatible part
    assert np.linalg.norm(after[fluid]) <= 1.01 * RTOL * np.linalg.norm(centred)
    # the result differs from PhiFlow's own (binary-face) projection: the fractions were used
    ref_v, _ = _reference(velocity, [sphere])
    assert _velocity_error(new_v, ref_v) > 1e-3


def test_cut_cells_are_deepcds_projection_with_phiflows_fractions():
    """The adapter's cut-cell call is `deepcd.cfd.project` with α = 1 − f on PhiFlow's cell
    mask. PhiFlow's soft mask is approximate: beside a grid-aligned box's surface it gives
    f ≈ 0.29 to faces between two fluid cells, so α < 1 there too."""
    velocity = _velocity(extrapolation.ZERO, seed=13, x=24, y=20)
    box = Box(x=(8, 14), y=(6, 12))
    new_v, _ = make_incompressible(velocity, [box], method="cg", rtol=1e-10, cut_cells=True)
    alpha = [1.0 - f for f in _deepcd_faces(field.resample(box, velocity, soft=True, balance=1))]
    assert np.isclose(alpha[0][8:15, 5], 1 - 0.2929, atol=1e-3).all()  # below the box
    names = velocity.resolution.names
    flags = np.where(box.lies_inside(velocity.geometry.center).numpy(names), SOLID, FLUID)
    ref, _, _ = project(
        _deepcd_faces(velocity),
        flags.astype(np.int8),
        solid_fraction=alpha,
        method="cg",
        rtol=1e-10,
    )
    for x, y in zip(_deepcd_faces(new_v), ref, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-8)


def test_density_from_phiflow_grids():
    resolution, boundary, obstacles = CASES["2d-inflow-open"]
    velocity = _velocity(boundary, seed=15, **resolution)
    names = velocity.resolution.names
    plain_v, plain_p = make_incompressible(velocity, obstacles, method="cg", rtol=RTOL)
    uniform = CenteredGrid(2.0, 0, **resolution)
    v2, p2 = make_incompressible(velocity, obstacles, method="cg", rtol=RTOL, density=uniform)
    assert _velocity_error(v2, plain_v) < 10 * RTOL
    np.testing.assert_allclose(
        p2.values.numpy(names), 2.0 * plain_p.values.numpy(names), rtol=1e-5, atol=1e-8
    )
    # a heavy lower half: the velocity changes, and stays divergence-free by PhiFlow's measure
    heavy = CenteredGrid(lambda x: 1.0 + 999.0 * (x.vector["y"] < 12), 0, **resolution)
    for density in (heavy, field.resample(heavy, velocity)):  # cell and face densities
        v3, _ = make_incompressible(velocity, obstacles, method="cg", rtol=RTOL, density=density)
        assert _velocity_error(v3, plain_v) > 1e-3
        assert _divergence_ratio(v3, velocity, obstacles) < 2 * RTOL


def test_fraction_and_density_errors():
    velocity = _velocity(extrapolation.ZERO, seed=1, x=8, y=6)
    with pytest.raises(ValueError, match="cut_cells"):
        make_incompressible(velocity, [Box(x=(2, 4), y=(2, 4))], cut_cells=True, walls="phiflow")
    with pytest.raises(ValueError, match="density"):
        make_incompressible(velocity, density=CenteredGrid(1.0, 0, x=4, y=3))
    with pytest.raises(ValueError, match="density"):
        make_incompressible(velocity, density=CenteredGrid(0.0, 0, x=8, y=6))
    with pytest.raises(ValueError, match="density"):
        make_incompressible(velocity, density=-1.0)
