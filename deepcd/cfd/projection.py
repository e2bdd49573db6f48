"""Pressure projection of a staggered (MAC) velocity onto divergence-free fields.

    new_velocity, pressure, result = deepcd.cfd.project(velocity, flags, dx=dx, dt=dt)

Discretization (cell-centred pressure, face-normal velocities, spacing dx; see
`deepcd.problems.mac` for the face layout). A face between two non-SOLID cells gets
u ← u − dt/(ρ·dx)·(p_high − p_low), with p = 0 in AIR cells (free surface / open boundary)
and outside an AIR face of the grid; a face that touches a SOLID cell takes the solid's
velocity (0 or `solid_velocity`) and no gradient. Requiring the new divergence to vanish on
every FLUID cell gives exactly deepcd's pressure Poisson system
    A p = −(ρ·dx/dt) · div(u*)     (div: the unit-spacing face difference)
with A the 5/7-point Laplacian of the flags. So the relative residual of the solve equals
‖div u_new‖ / ‖div u*‖ on the FLUID cells: `rtol` bounds the divergence left, relative to the
input's. Closed regions (no AIR contact) are singular; their divergence is made compatible
(mean removed, as `solve` does, silently here) and their pressure has zero mean.

Variable coefficients (any of `density` as a cell or face array, `liquid_phi`,
`solid_fraction`). Per face f: ρ_f the face density (a cell density is averaged over the
face's two cells, `deepcd.problems.coefficients.face_average`, except that a FLUID–AIR face
takes the FLUID cell's: AIR carries no mass), α_f ∈ [0, 1] the open fraction (cut cells;
default 1) and, on FLUID–AIR faces, θ_f ∈ (0, 1] the ghost-fluid fraction from the level set
(`ghost_fluid_theta`: the liquid's part of the segment between the two cell centres; 1
without φ). The divergence is fraction-weighted, D(u)_c = Σ_f ±(α_f u_f + (1 − α_f) u_solid,f),
and each face with α_f > 0 that touches no SOLID cell and some FLUID cell gets
    u_f ← u_f − dt/(ρ_f·dx) · (p_high − p_low) / θ_f,
p = 0 in AIR: the ghost-fluid gradient with the surface pressure 0 at distance θ_f·dx from
the FLUID centre (Gibou et al. 2002); faces with α_f = 0 are walls. D(u_new) = 0 on FLUID
cells is then  A p = −(dx/dt)·D(u*)  with A the operator of `Coefficients(beta = α/ρ_f,
theta = θ)` (the assembly rule of `deepcd.problems.coefficients`, built by `Problem`), so
again ‖D u_new‖/‖D u*‖ on the FLUID cells is the solve's relative residual. With ρ ≡ 1, θ ≡ 1
and α ≡ 1 this is the flag system above; a scalar density with no φ and no fractions takes
that constant-coefficient path itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepcd.api import solve_result
from deepcd.iterative.nullspace import SingularSystemWarning
from deepcd.iterative.result import SolveResult
from deepcd.problems.coefficients import (
    Coefficients,
    face_average,
    ghost_fluid_theta,
    require_in_range,
)
from deepcd.problems.flags import AIR, FLUID, SOLID, normalize_boundary, validate_flags
from deepcd.problems.mac import _along, check_faces, divergence, face_shapes, solid_face_masks
from deepcd.problems.problem import Problem

__all__ = ["Projector", "project"]

Density = float | np.ndarray | Sequence[np.ndarray]


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _positive_array(name: str, arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real array, got dtype {arr.dtype}")
    arr = np.array(arr, dtype=np.float64, copy=True)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    if arr.size and arr.min() <= 0:
        first = tuple(int(i) for i in np.argwhere(arr <= 0)[0])
        raise ValueError(
            f"{name} must be positive everywhere; {int((arr <= 0).sum())} values are not "
            f"(first at {first}: {arr[first]:g})"
        )
    arr.flags.writeable = False
    return arr


def _check_density(density, shape: tuple[int, ...]) -> float | np.ndarray | tuple[np.ndarray, ...]:
    """A validated density: a positive float, a (*grid) cell array or per-axis face arrays."""
    if np.isscalar(density) or (isinstance(density, np.ndarray) and density.ndim == 0):
        if isinstance(density, (str, bytes)):
            raise TypeError(f"density must be a number or an array, got {density!r}")
        return _positive("density", density)
    if isinstance(density, np.ndarray):
        if density.shape != shape:
            raise ValueError(
                f"density must be a scalar, a cell array of the grid's shape {shape} or one "
                f"face array per axis {face_shapes(shape)}; got an array of shape {density.shape}"
            )
        return _positive_array("density", density)
    if not isinstance(density, Sequence):
        raise TypeError(
            f"density must be a number, a cell array or a tuple of face arrays, got "
            f"{type(density).__name__}"
        )
    faces = check_faces(density, face_shapes(shape), "density", allow_none=False)
    return tuple(_positive_array(f"density[{a}]", f) for a, f in enumerate(faces))


def _check_phi(phi, shape: tuple[int, ...]) -> np.ndarray | None:
    if phi is None:
        return None
    phi = np.asarray(phi)
    if phi.dtype.kind not in "iuf":
        raise TypeError(f"liquid_phi must be a real array, got dtype {phi.dtype}")
    if phi.shape != shape:
        raise ValueError(f"liquid_phi must have the grid's shape {shape}, got {phi.shape}")
    phi = np.array(phi, dtype=np.float64, copy=True)
    if not np.isfinite(phi).all():
        raise ValueError("liquid_phi contains NaN or Inf")
    phi.flags.writeable = False
    return phi


def _check_fraction(fraction, shape: tuple[int, ...]) -> tuple[np.ndarray, ...] | None:
    if fraction is None:
        return None
    faces = check_faces(fraction, face_shapes(shape), "solid_fraction", allow_none=False)
    out = []
    for a, f in enumerate(faces):
        f = np.array(f, dtype=np.float64, copy=True)
        require_in_range(f"solid_fraction[{a}] (open fraction of each face)", f, 0, 1, open_lo=True)
        f.flags.writeable = False
        out.append(f)
    return tuple(out)


class Projector:
    """A pressure projection for fixed cell flags and coefficients, reused across time steps.

    Keeps the assembled problem (CSR, stencil, closed regions) and, for method="dcdm", the
    loaded trained solver, so each `project` call only builds the divergence and solves.
    Flags edited in place between calls are picked up (the setup is rebuilt, `rebuilds`
    counts how often); `set_flags` replaces them explicitly, `set_coefficients` the density,
    level set and fractions (a two-phase flow changes them every step).
    flags: int8 grid (FLUID=0, SOLID=1, AIR=2); boundary: the flag outside each grid face
    (SOLID or AIR, one or one per face). Other arguments as for `project`.
    """

    def __init__(
        self,
        flags: np.ndarray,
        *,
        boundary=SOLID,
        dx: float = 1.0,
        density: Density = 1.0,
        liquid_phi: np.ndarray | None = None,
        solid_fraction: Sequence[np.ndarray] | None = None,
        method: str = "dcdm",
        **solve_options: Any,
    ):
        self.dx = _positive("dx", dx)
        self.method = method
        self.options = dict(solve_options)
        self._boundary_given = boundary
        shape = validate_flags(flags).shape
        self._inputs = (
            _check_density(density, shape),
            _check_phi(liquid_phi, shape),
            _check_fraction(solid_fraction, shape),
        )
        self.set_flags(flags)
        if method == "dcdm" and "model" not in self.options and self.problem.n:
            from deepcd.api import resolve_device
            from deepcd.nn.weights import default_solver, load_solver

            device = self.options.get("device", "auto")
            self.options["model"] = load_solver(
                default_solver(self.ndim), device=resolve_device(device)
            )[0]

    @property
    def density(self) -> float | np.ndarray | tuple[np.ndarray, ...]:
        """The density as given (validated, read-only): float, cell array or face arrays."""
        return self._inputs[0]

    def set_flags(self, flags: np.ndarray) -> None:
        """Rebuild the setup for new cell flags (obstacles moved, liquid advected).

        `project` calls it by itself when the array given here (or to the constructor) was
        changed in place since: the projector keeps its own read-only copy and compares the
        two before every projection, so a stale setup is never used. The density, level set
        and fractions are kept; they must fit the new grid.
        """
        self._source = flags if isinstance(flags, np.ndarray) else None
        self.flags = validate_flags(flags).copy()
        self.flags.flags.writeable = False
        self.ndim = self.flags.ndim
        self.boundary = normalize_boundary(self._boundary_given, self.ndim)
        self.shapes = face_shapes(self.flags.shape)
        self.solid_faces = solid_face_masks(self.flags, self.boundary)
        self._build()
        self.rebuilds = getattr(self, "rebuilds", -1) + 1

    def set_coefficients(
        self,
        *,
        density: Density = 1.0,
        liquid_phi: np.ndarray | None = None,
        solid_fraction: Sequence[np.ndarray] | None = None,
    ) -> None:
        """Replace the density, the liquid level set and the open fractions (all three; see
        `project`) and rebuild the system for them."""
        self._sync_flags()
        shape = self.flags.shape
        self._inputs = (
            _check_density(density, shape),
            _check_phi(liquid_phi, shape),
            _check_fraction(solid_fraction, shape),
        )
        self._build()

    def _build(self) -> None:
        """The face density, θ, α and the Problem (with `Coefficients` where they vary)."""
        density, phi, fraction = self._inputs
        shape = self.flags.shape
        for name, value in (("liquid_phi", phi), ("density", density)):
            if isinstance(value, np.ndarray) and value.shape != shape:
                raise ValueError(f"{name} has shape {value.shape}, the new grid is {shape}")
        if isinstance(density, tuple) and tuple(d.shape for d in density) != self.shapes:
            raise ValueError("density's face arrays do not fit the new grid")
        if fraction is not None and tuple(f.shape for f in fraction) != self.shapes:
            raise ValueError("solid_fraction's face arrays do not fit the new grid")
        self.fraction = fraction
        self.theta = None if phi is None else ghost_fluid_theta(self.flags, phi)
        if isinstance(density, float):
            self.face_density = None
        elif isinstance(density, tuple):
            self.face_density = density
        else:
            self.face_density = self._cell_to_faces(density)
        n = int((self.flags == FLUID).sum())
        if self.face_density is None and phi is None and fraction is None:
            self.coefficients = None  # the flag Laplacian, scaled by the constant density
        else:
            rho = self.face_density
            beta = []
            for a, sh in enumerate(self.shapes):
                inv = 1.0 / density if rho is None else 1.0 / rho[a]
                beta.append(np.broadcast_to(inv, sh) * (1.0 if fraction is None else fraction[a]))
            self.coefficients = Coefficients.validated(shape, beta, self.theta)
        self.problem = Problem(
            self.flags, np.zeros(n), self.boundary, coefficients=self.coefficients
        )
        self.gradient_faces = self._gradient_faces()

    def _cell_to_faces(self, rho: np.ndarray) -> tuple[np.ndarray, ...]:
        """Face densities of a cell density: the two cells' mean, the FLUID cell's on
        FLUID–AIR faces (outer faces: the cell inside)."""
        out = []
        for a, face in enumerate(face_average(rho)):
            n = self.flags.shape[a]
            lo, hi = _along(a, self.ndim, slice(0, n - 1)), _along(a, self.ndim, slice(1, n))
            f_lo, f_hi = self.flags[lo], self.flags[hi]
            inner = face[_along(a, self.ndim, slice(1, n))]
            inner[:] = np.where((f_lo == FLUID) & (f_hi == AIR), rho[lo], inner)
            inner[:] = np.where((f_hi == FLUID) & (f_lo == AIR), rho[hi], inner)
            face.flags.writeable = False
            out.append(face)
        return tuple(out)

    def _sync_flags(self) -> None:
        """Pick up in-place edits of the caller's flags array (one int8 comparison)."""
        src = self._source
        if src is None:
            return
        if src.shape != self.flags.shape or not np.array_equal(src, self.flags):
            self.set_flags(src)

    def _gradient_faces(self) -> tuple[np.ndarray, ...]:
        """Per axis, the faces the pressure gradient acts on: not touching SOLID, open
        (α > 0), and with a FLUID cell on at least one side (AIR–AIR faces keep their
        velocity)."""
        fluid = self.flags == FLUID
        out = []
        for axis in range(self.ndim):
            touches = np.zeros(self.shapes[axis], dtype=bool)
            lo = _along(axis, self.ndim, slice(None, -1))
            hi = _along(axis, self.ndim, slice(1, None))
            touches[hi] |= fluid  # the cell below face i+1 is cell i
            touches[lo] |= fluid  # the cell above face i is cell i
            faces = touches & ~self.solid_faces[axis]
            if self.fraction is not None:
                faces &= self.fraction[axis] > 0
            out.append(faces)
        return tuple(out)

    def wall_faces(self) -> tuple[np.ndarray, ...]:
        """Per axis, the faces that take the solid's velocity: touching SOLID, or α = 0."""
        if self.fraction is None:
            return self.solid_faces
        return tuple(m | (f == 0) for m, f in zip(self.solid_faces, self.fraction, strict=True))

    def gradient(self, pressure: np.ndarray) -> tuple[np.ndarray, ...]:
        """The face-normal pressure gradients (p_high − p_low)/(θ·dx), 0 where no gradient
        acts. pressure: the grid (zero off FLUID cells; AIR and AIR boundaries count as
        p = 0); θ: the ghost-fluid fractions (1 without a level set)."""
        p = np.where(self.flags == FLUID, pressure, 0.0)
        grads = []
        for axis in range(self.ndim):
            pad = [(0, 0)] * self.ndim
            pad[axis] = (1, 1)  # outside cells: p = 0 (AIR); SOLID faces are masked anyway
            padded = np.pad(p, pad)
            hi = padded[_along(axis, self.ndim, slice(1, None))]
            lo = padded[_along(axis, self.ndim, slice(None, -1))]
            g = (hi - lo) / self.dx
            if self.theta is not None:
                g = g / self.theta[axis]  # θ = 1 off FLUID–AIR faces
            grads.append(np.where(self.gradient_faces[axis], g, 0.0))
        return tuple(grads)

    def _fluxes(self, comps, walls) -> list:
        """α·u + (1 − α)·u_solid per face (the velocity itself without fractions)."""
        if self.fraction is None:
            return list(comps)
        out = []
        for comp, wall, frac in zip(comps, walls, self.fraction, strict=True):
            flux = frac * np.asarray(comp, dtype=np.float64)
            if wall is not None:
                flux += (1.0 - frac) * wall
            out.append(flux)
        return out

    def _unit_divergence(self, comps, walls) -> np.ndarray:
        return divergence(self._fluxes(comps, walls), self.flags, self.boundary, walls)

    def divergence(self, velocity, solid_velocity=None) -> np.ndarray:
        """The physical divergence (1/dx units) of a MAC velocity on this grid, fluxes
        weighted by the open fractions (0 off FLUID); float64 (*grid)."""
        comps = check_faces(velocity, self.shapes, "velocity", allow_none=False)
        walls = (
            [None] * self.ndim
            if solid_velocity is None
            else check_faces(solid_velocity, self.shapes, "solid_velocity", allow_none=True)
        )
        return self._unit_divergence(comps, walls) / self.dx

    def project(
        self,
        velocity: Sequence[np.ndarray],
        *,
        dt: float = 1.0,
        pressure0: np.ndarray | None = None,
        rtol: float = 1e-6,
        solid_velocity: Sequence[np.ndarray | None] | None = None,
        **solve_options: Any,
    ) -> tuple[tuple[np.ndarray, ...], np.ndarray, SolveResult]:
        """(divergence-free velocity, pressure grid, solver result); see `project`."""
        dt = _positive("dt", dt)
        self._sync_flags()
        comps = check_faces(velocity, self.shapes, "velocity", allow_none=False)
        walls = (
            [None] * self.ndim
            if solid_velocity is None
            else check_faces(solid_velocity, self.shapes, "solid_velocity", allow_none=True)
        )
        if pressure0 is not None:
            pressure0 = np.asarray(pressure0, dtype=np.float64)
            if pressure0.shape != self.flags.shape:
                raise ValueError(
                    f"pressure0 must have the grid's shape {self.flags.shape}, "
                    f"got {pressure0.shape}"
                )
            if not np.isfinite(pressure0).all():
                raise ValueError("pressure0 contains NaN or Inf")
        div = self._unit_divergence(comps, walls)
        # constant coefficients: A is the flag Laplacian and ρ scales b; else A holds 1/ρ_f
        scale = (self.density if self.coefficients is None else 1.0) * self.dx / dt
        b = self.problem.from_grid(-scale * div)
        problem = self.problem.with_rhs(b)
        x0 = None if pressure0 is None else self.problem.from_grid(pressure0)
        options = {**self.options, **solve_options}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SingularSystemWarning)  # closed regions: expected
            result = solve_result(problem, x0=x0, rtol=rtol, method=self.method, **options)
        pressure = self.problem.to_grid(result.x)
        grads = self.gradient(pressure)
        masks = self.wall_faces()
        out = []
        for axis in range(self.ndim):
            comp = np.asarray(comps[axis])
            dtype = np.result_type(comp.dtype, np.float32)
            rho = self.density if self.face_density is None else self.face_density[axis]
            k = dt / rho
            new = comp.astype(np.float64) - k * grads[axis]
            mask = masks[axis]
            if mask.any():
                wall = walls[axis]
                new = np.where(mask, 0.0 if wall is None else wall, new)
            out.append(new.astype(dtype, copy=False))
        return tuple(out), pressure, result


def project(
    velocity: Sequence[np.ndarray],
    flags: np.ndarray,
    *,
    dx: float = 1.0,
    dt: float = 1.0,
    density: Density = 1.0,
    liquid_phi: np.ndarray | None = None,
    solid_fraction: Sequence[np.ndarray] | None = None,
    method: str = "dcdm",
    pressure0: np.ndarray | None = None,
    rtol: float = 1e-6,
    solid_velocity: Sequence[np.ndarray | None] | None = None,
    boundary=SOLID,
    **solve_options: Any,
) -> tuple[tuple[np.ndarray, ...], np.ndarray, SolveResult]:
    """Make a MAC velocity divergence-free on the FLUID cells (see the module docstring).

    velocity: (u, v) or (u, v, w) face arrays of shapes (nx+1, ny[, nz]), (nx, ny+1[, nz])[,
    (nx, ny, nz+1)], any real dtype (float32 stays float32). flags: the cell flags (FLUID=0,
    SOLID=1, AIR=2); boundary: the flag outside each grid face. dx (length per cell), dt
    (time step), density: physical units; the pressure comes back in them. density: a
    positive number, a (*grid) cell array or per-axis face arrays (MAC shapes), > 0 and
    finite. liquid_phi: (*grid) level set, < 0 in the liquid: places the free surface (p = 0)
    on FLUID–AIR faces by the ghost-fluid method; the flags still decide which cells are
    FLUID. solid_fraction: per-axis face arrays in [0, 1], the open part of each face (cut-cell
    solids; 0 is a wall). method: any `deepcd.solve` method (default "dcdm"), warm-started
    from `pressure0` (a previous pressure grid) when given; rtol: the divergence left,
    relative to the input's. solid_velocity: face arrays (entries may be None) for moving
    walls; faces touching SOLID (or closed by the fractions) take it. Returns (new velocity
    tuple, pressure grid float64 (0 off FLUID), SolveResult). For many steps use
    `Projector`, which keeps the setup.
    """
    projector = Projector(
        flags,
        boundary=boundary,
        dx=dx,
        density=density,
        liquid_phi=liquid_phi,
        solid_fraction=solid_fraction,
        method=method,
        **solve_options,
    )
    return projector.project(
        velocity, dt=dt, pressure0=pressure0, rtol=rtol, solid_velocity=solid_velocity
    )
