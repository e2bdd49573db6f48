"""A drop-in for PhiFlow's pressure projection that solves with deepcd.

    velocity, pressure = fluid.make_incompressible(velocity, obstacles)            # PhiFlow
    velocity, pressure = deepcd.cfd.phiflow.make_incompressible(velocity, obstacles)  # deepcd

Needs PhiFlow (``pip install deepcd[phiflow]``), imported only when called. The StaggeredGrid
is converted to deepcd's MAC face arrays, projected with `deepcd.cfd.project` and converted
back; PhiFlow's own operators are not used for the solve.

What is mapped, and how (it reproduces the discrete problem of PhiFlow 3.4's
`make_incompressible` with `order=2`, so both agree to the solver tolerance):

* Domain sides, from the velocity's (normal) extrapolation per side: a constant (`ZERO`, or a
  constant inflow value) is a closed wall, deepcd's SOLID boundary, with that constant as the
  outer-face velocity; PhiFlow then uses a zero-gradient pressure. `BOUNDARY` (zero gradient,
  an open side) is deepcd's AIR boundary: p = 0 in the ghost cell, as PhiFlow's `ZERO` pressure
  extrapolation. Periodic and other extrapolations raise NotImplementedError.
* Obstacles: a cell is SOLID when its centre lies inside an obstacle (PhiFlow's own `active`
  mask). Before the solve the velocity is masked exactly as PhiFlow does
  (`phi.physics.fluid.apply_boundary_conditions`: each face scaled by 1 − f, f the fraction of
  its staggered cell inside the obstacle, plus f·obstacle velocity). A face touching a SOLID
  cell gets no pressure gradient. With ``walls="phiflow"`` (default) it keeps that masked
  value, as in PhiFlow; for a grid-aligned box f = 1 on its surface, so the wall is
  impermeable, but on curved obstacles PhiFlow leaves (1 − f)·u through the wall faces. With
  ``walls="impermeable"`` those faces take the obstacle's velocity instead (0 when stationary;
  rotating obstacles are not supported there).
* Units: PhiFlow's make_incompressible has no dt or density; it solves ∇²p = ∇·u and returns
  u − ∇p. deepcd is called with dt = 1, density = 1 and dx = the grid spacing, which is the
  same equation, so the returned pressure is in PhiFlow's own units (velocity × length,
  i.e. physical pressure · dt/ρ). It is 0 inside obstacles. In a closed domain (no open side)
  the pressure is defined up to a constant: deepcd returns it with zero mean over the fluid
  cells, PhiFlow with whatever constant its solver ends with.

Beyond PhiFlow's own projection (off by default, so the default reproduces PhiFlow):

* ``density=``: PhiFlow 3.4's make_incompressible has no density; a simulation that tracks
  one as a Field passes it here — a number, a CenteredGrid (cell densities) or a
  StaggeredGrid (face densities) on the velocity's grid, or deepcd's own arrays — and deepcd
  solves ∇·(∇p/ρ) = ∇·u, returning u − ∇p/ρ and p in units of pressure · dt.
* ``cut_cells=True``: PhiFlow's own obstacle fractions — f, the part of each face's staggered
  cell inside an obstacle, the very mask `apply_boundary_conditions` computes
  (``resample(geometry, velocity, soft=True, balance=1)``) — become deepcd's open fractions
  α = Π(1 − f) (`deepcd.cfd.project`'s solid_fraction, a cut-cell / variational pressure):
  the velocity is not pre-scaled, the divergence weights each face by α and the system's face
  weights are α/ρ. Cells whose centre lies in an obstacle stay SOLID; walls are impermeable
  (the obstacle's velocity on faces touching them and in the covered part of cut faces;
  rotating obstacles are not supported). PhiFlow's soft mask is an approximation, passed
  through as it is: beside a grid-aligned box it gives f ≈ 0.29 to the faces between the two
  fluid cells just outside the box's sides (measured with PhiFlow 3.4).

Not supported: batch dimensions (loop over them), non-uniform spacing, PhiFlow's `active`,
higher `order`, `wide_stencil`, and tracing (jit/autodiff): values go through NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deepcd.cfd.projection import project
from deepcd.problems.flags import AIR, SOLID
from deepcd.problems.mac import solid_face_masks

__all__ = ["make_incompressible"]

# PhiFlow keywords with no deepcd counterpart: the values accepted (their defaults).
_PHIFLOW_DEFAULTS = {
    "active": (None,),
    "order": (2,),
    "correct_skew": (False,),
    "wide_stencil": (None, False),
}


def _import_phi():
    try:
        from phi import field, geom, math
        from phi.math import extrapolation
        from phi.physics import fluid
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("deepcd.cfd.phiflow needs PhiFlow: pip install deepcd[phiflow]") from exc
    return math, extrapolation, field, geom, fluid


def _side(ext, dim: str, upper: bool, extrapolation) -> tuple[int, float | None]:
    """(deepcd flag, outer-face normal velocity or None) of one domain side."""
    normal = extrapolation.get_normal(ext)
    # a mixed extrapolation (combine_sides, or a dict boundary) holds one per side; phiml has
    # no public per-side accessor in 3.4/1.16, so use its lookup where it exists
    at_boundary = getattr(normal, "_at_boundary", None)
    if at_boundary is not None:
        normal = at_boundary(f"{dim}{'+' if upper else '-'}")
    if isinstance(normal, extrapolation.ConstantExtrapolation):
        value = normal.value
        if "vector" in value.shape:
            value = value.vector[dim]
        if value.shape.volume != 1:
            raise NotImplementedError(
                f"a non-uniform constant boundary on side {dim}{'+' if upper else '-'} "
                f"is not supported, got {normal.value.shape}"
            )
        return SOLID, float(value)
    if normal == extrapolation.BOUNDARY:
        return AIR, None
    raise NotImplementedError(
        f"velocity extrapolation {normal!r} on side {dim}{'+' if upper else '-'} is not "
        "supported: use a constant (closed wall, e.g. ZERO) or BOUNDARY (open side)"
    )


def _obstacle_list(obstacles, fluid, geom) -> list:
    if isinstance(obstacles, (fluid.Obstacle, geom.Geometry)):
        obstacles = [obstacles]
    if not isinstance(obstacles, (tuple, list)):
        raise TypeError(
            "obstacles must be an Obstacle, a Geometry or a tuple/list of them, "
            f"got {type(obstacles).__name__}"
        )
    out = []
    for obs in obstacles:
        if isinstance(obs, geom.Geometry):
            obs = fluid.Obstacle(obs)
        if not isinstance(obs, fluid.Obstacle):
            raise TypeError(f"obstacles must be Obstacle or Geometry, got {type(obs).__name__}")
        out.append(obs)
    return out


def _cells_inside(geometry, velocity, names: tuple[str, ...], math) -> np.ndarray:
    """Bool grid: cells whose centre lies inside `geometry` (PhiFlow's hard obstacle mask)."""
    if math.batch(geometry):
        raise ValueError(f"obstacles with batch dimensions are not supported: {geometry.shape}")
    inside = geometry.lies_inside(velocity.geometry.center)
    return np.asarray(inside.numpy(names), dtype=bool)


def _uniform_dx(velocity, names: tuple[str, ...]) -> float:
    dx = np.asarray(velocity.dx.numpy("vector"), dtype=np.float64).reshape(-1)
    if not np.allclose(dx, dx[0], rtol=1e-9, atol=0.0):
        spacing = ", ".join(f"{n}={d:g}" for n, d in zip(names, dx, strict=True))
        raise ValueError(
            f"deepcd needs a uniform grid spacing (square/cubic cells), got {spacing}; "
            "choose bounds and resolution with equal size/resolution per axis"
        )
    return float(dx[0])


def _component(values, dim: str, axis: int, names, stored, walls) -> np.ndarray:
    """One face array in deepcd's layout (n+1 faces along `axis`) from PhiFlow's component,
    which leaves out the outer faces a constant side fixes (`stored[k]` False): those get the
    wall value `walls[k]` (None: a copy of the nearest stored face)."""
    arr = np.asarray(values[{"~vector": dim}].numpy(names))
    shape = list(arr.shape)
    shape[axis] = 1
    parts = [arr]
    for k, end in ((0, 0), (1, arr.shape[axis] - 1)):
        if stored[k]:
            continue
        if walls[k] is None:
            part = np.take(arr, [end], axis=axis)
        else:
            part = np.full(shape, walls[k], dtype=arr.dtype)
        parts.insert(0, part) if k == 0 else parts.append(part)
    return np.concatenate(parts, axis=axis)


def _density(density, velocity, names, field, math):
    """deepcd's density from a number, a CenteredGrid / StaggeredGrid on the velocity's grid
    or deepcd's own arrays (validated by `project`)."""
    if density is None:
        return 1.0
    if isinstance(density, field.Field):
        if not density.is_grid or density.resolution != velocity.resolution:
            raise ValueError(
                f"density must be a grid on the velocity's resolution {velocity.resolution}, "
                f"got {density.resolution if density.is_grid else 'a non-grid Field'}"
            )
        if math.batch(density.values):
            raise ValueError(f"density with batch dimensions is not supported: {density.shape}")
        if density.is_staggered:
            ext = density.extrapolation
            return tuple(
                _component(
                    density.values, dim, axis, names, ext.valid_outer_faces(dim), (None,) * 2
                )
                for axis, dim in enumerate(names)
            )
        return np.asarray(density.values.numpy(names))
    if isinstance(density, math.Tensor):
        return np.asarray(density.numpy(names))
    return density


def make_incompressible(
    velocity,
    obstacles=(),
    solve=None,
    *,
    method: str = "dcdm",
    rtol: float | None = None,
    walls: str | None = None,
    cut_cells: bool = False,
    density=None,
    **solve_options: Any,
):
    """Project a PhiFlow StaggeredGrid onto a divergence-free field with a deepcd solver.

    velocity: a 2D/3D `StaggeredGrid` (Field) with square/cubic cells, no batch dimensions.
    obstacles: an `Obstacle`/`Geometry` or a tuple/list of them, as for PhiFlow.
    solve: an optional `phi.math.Solve`; only its `x0` (the previous pressure, a warm start)
    and `rel_tol` (used when `rtol` is not given) are read, its method is ignored.
    method: any `deepcd.solve` method ("dcdm", "cg", "ic0", "amg-sa", ...); rtol: the
    divergence left relative to the input's (default 1e-6); walls: "phiflow" (the default
    without cut cells) or "impermeable" (see the module docstring); cut_cells: use PhiFlow's
    obstacle fractions as open fractions; density: a number or a Centered/StaggeredGrid
    (module docstring); solve_options: passed to `deepcd.solve`.
    Returns (velocity: StaggeredGrid like the input, same dtype/boundary/bounds/resolution;
    pressure: CenteredGrid, PhiFlow's units, 0 in obstacles), as PhiFlow does.
    """
    math, extrapolation, field, geom, fluid = _import_phi()
    for key, accepted in _PHIFLOW_DEFAULTS.items():
        if key in solve_options:
            value = solve_options.pop(key)
            plain = value is None or isinstance(value, (bool, int))
            if not (plain and any(value is a or value == a for a in accepted)):
                raise NotImplementedError(
                    f"{key}={value!r} is not supported by deepcd's PhiFlow adapter"
                )
    if walls is None:
        walls = "impermeable" if cut_cells else "phiflow"
    if walls not in ("phiflow", "impermeable"):
        raise ValueError(f'walls must be "phiflow" or "impermeable", got {walls!r}')
    if cut_cells and walls != "impermeable":
        raise ValueError(
            'cut_cells=True weights the faces by their open part: walls must be "impermeable"'
        )
    if not isinstance(velocity, field.Field) or not (velocity.is_grid and velocity.is_staggered):
        raise TypeError(
            f"velocity must be a PhiFlow StaggeredGrid, got {type(velocity).__name__}"
            + (" (a centered or non-grid Field)" if isinstance(velocity, field.Field) else "")
        )
    names = tuple(velocity.resolution.names)
    ndim = len(names)
    if ndim not in (2, 3):
        raise ValueError(f"deepcd supports 2D and 3D grids, got {ndim}D ({names})")
    if math.batch(velocity.values) or math.batch(velocity.geometry):
        raise ValueError(
            f"batch dimensions are not supported ({math.batch(velocity.values)}); "
            "call make_incompressible once per batch entry"
        )
    dx = _uniform_dx(velocity, names)
    obstacles = _obstacle_list(obstacles, fluid, geom)

    ext = velocity.extrapolation
    sides = [_side(ext, dim, upper, extrapolation) for dim in names for upper in (False, True)]
    boundary = tuple(flag for flag, _ in sides)

    # PhiFlow's own input masking (soft obstacle fractions, obstacle velocities), so that both
    # codes project the same field.
    if cut_cells:  # the fractions weight the fluxes instead of scaling the velocity
        masked = velocity
        covered = [field.resample(o.geometry, velocity, soft=True, balance=1) for o in obstacles]
    else:
        masked = fluid.apply_boundary_conditions(velocity, obstacles) if obstacles else velocity
        covered = []
    flags = np.zeros(tuple(velocity.resolution.sizes), dtype=np.int8)
    solid_by_obstacle = [_cells_inside(o.geometry, velocity, names, math) for o in obstacles]
    for solid in solid_by_obstacle:
        flags[solid] = SOLID

    comps, stored = [], []
    for axis, dim in enumerate(names):
        keep = ext.valid_outer_faces(dim)
        outer = (sides[2 * axis][1], sides[2 * axis + 1][1])
        for upper in (False, True):
            if not keep[upper] and outer[upper] is None:
                raise NotImplementedError(
                    f"extrapolation {ext!r} fixes the outer faces of side "
                    f"{dim}{'+' if upper else '-'} but is not a constant"
                )
        arr = _component(masked.values, dim, axis, names, keep, outer)
        expected = tuple(s + 1 if d == axis else s for d, s in enumerate(flags.shape))
        if arr.shape != expected:
            raise ValueError(
                f"unexpected staggered layout: component {dim} has shape {arr.shape} after "
                f"adding the fixed outer faces, expected {expected}"
            )
        comps.append(arr)
        stored.append(keep)
    # per obstacle and axis, the covered part f of each face (cut_cells only)
    parts = [
        [_component(f.values, dim, a, names, stored[a], (0.0, 0.0)) for a, dim in enumerate(names)]
        for f in covered
    ]
    fractions = None
    if parts:  # open fractions α = Π(1 − f) (sequential masking, as apply_boundary_conditions)
        fractions = tuple(
            np.clip(np.prod([1.0 - p[a] for p in parts], axis=0), 0.0, 1.0) for a in range(ndim)
        )

    if walls == "phiflow":
        solid_velocity = tuple(c.copy() for c in comps)  # faces at walls keep their value
    else:
        solid_velocity = _impermeable_walls(
            comps, obstacles, solid_by_obstacle, boundary, sides, names, math, parts
        )

    pressure0 = solve_options.pop("pressure0", None)
    if solve is not None:
        if pressure0 is None and solve.x0 is not None:
            pressure0 = solve.x0
        if rtol is None and solve.rel_tol is not None:
            rtol = float(solve.rel_tol)
    if pressure0 is not None:
        values = pressure0.values if isinstance(pressure0, field.Field) else pressure0
        if isinstance(values, math.Tensor):
            values = values.numpy(names)
        pressure0 = np.asarray(values, dtype=np.float64)
    rtol = 1e-6 if rtol is None else float(rtol)

    new, pressure, _ = project(
        comps,
        flags,
        dx=dx,
        dt=1.0,
        density=_density(density, velocity, names, field, math),
        solid_fraction=fractions,
        method=method,
        pressure0=pressure0,
        rtol=rtol,
        solid_velocity=solid_velocity,
        boundary=boundary,
        **solve_options,
    )

    backend = math.choose_backend(velocity.values)
    template = velocity.values
    tensors = {}
    for axis, dim in enumerate(names):
        lo, hi = stored[axis]
        n = new[axis].shape[axis]
        key = tuple(
            slice(0 if lo else 1, n if hi else n - 1) if d == axis else slice(None)
            for d in range(ndim)
        )
        comp_shape = template[{"~vector": dim}].shape
        tensors[dim] = math.tensor(np.ascontiguousarray(new[axis][key]), comp_shape)
    new_values = math.convert(math.stack(tensors, math.dual("vector")), backend)
    new_velocity = velocity.with_values(new_values)

    p_sides = {
        dim: tuple(
            extrapolation.BOUNDARY if boundary[2 * axis + k] == SOLID else extrapolation.ZERO
            for k in (0, 1)
        )
        for axis, dim in enumerate(names)
    }
    p_values = math.tensor(pressure.astype(new[0].dtype, copy=False), velocity.resolution)
    p_field = field.Field(
        velocity.geometry, math.convert(p_values, backend), extrapolation.combine_sides(**p_sides)
    )
    return new_velocity, p_field


def _impermeable_walls(
    comps: Sequence[np.ndarray], obstacles, solid_by_obstacle, boundary, sides, names, math, parts
) -> tuple[np.ndarray, ...]:
    """Face velocities for walls="impermeable": each obstacle's velocity on the faces touching
    its cells and, with cut cells, on the faces it covers in part (`parts`: per obstacle, the
    per-axis covered fractions, or empty); later obstacles win, as in PhiFlow; the wall
    constant on outer wall faces."""
    ndim = len(names)
    out = [np.zeros_like(c) for c in comps]
    for axis in range(ndim):
        for upper in (False, True):
            value = sides[2 * axis + upper][1]
            if value is not None:
                key = tuple((-1 if upper else 0) if d == axis else slice(None) for d in range(ndim))
                out[axis][key] = value
    for k, (obs, solid) in enumerate(zip(obstacles, solid_by_obstacle, strict=True)):
        if obs.is_rotating:
            raise NotImplementedError('walls="impermeable" does not support rotating obstacles')
        if not obs.is_moving:
            speeds = [0.0] * ndim
        else:
            vel = obs.velocity
            if not isinstance(vel, math.Tensor):
                speeds = [float(vel)] * ndim
            elif "vector" in vel.shape:
                speeds = [float(vel.vector[dim]) for dim in names]
            else:
                speeds = [float(vel)] * ndim
        only = np.where(solid, SOLID, 0).astype(np.int8)
        touching = solid_face_masks(only, boundary=AIR)  # outer faces: inside cell only
        for axis in range(ndim):
            out[axis][touching[axis]] = speeds[axis]
            if parts:
                out[axis][parts[k][axis] > 0] = speeds[axis]
    return tuple(out)
