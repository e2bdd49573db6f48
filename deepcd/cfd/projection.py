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
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepcd.api import solve_result
from deepcd.iterative.nullspace import SingularSystemWarning
from deepcd.iterative.result import SolveResult
from deepcd.problems.flags import FLUID, SOLID, normalize_boundary, validate_flags
from deepcd.problems.mac import _along, check_faces, divergence, face_shapes, solid_face_masks
from deepcd.problems.problem import Problem

__all__ = ["Projector", "project"]


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


class Projector:
    """A pressure projection for fixed cell flags, reused across time steps.

    Keeps the assembled problem (CSR, stencil, closed regions) and, for method="dcdm", the
    loaded trained solver, so each `project` call only builds the divergence and solves.
    Flags edited in place between calls are picked up (the setup is rebuilt, `rebuilds`
    counts how often); `set_flags` replaces them explicitly.
    flags: int8 grid (FLUID=0, SOLID=1, AIR=2); boundary: the flag outside each grid face
    (SOLID or AIR, one or one per face). Other arguments as for `project`.
    """

    def __init__(
        self,
        flags: np.ndarray,
        *,
        boundary=SOLID,
        dx: float = 1.0,
        density: float = 1.0,
        method: str = "dcdm",
        **solve_options: Any,
    ):
        self.dx = _positive("dx", dx)
        self.density = _positive("density", density)
        self.method = method
        self.options = dict(solve_options)
        self._boundary_given = boundary
        self.set_flags(flags)
        if method == "dcdm" and "model" not in self.options and self.problem.n:
            from deepcd.api import resolve_device
            from deepcd.nn.weights import default_solver, load_solver

            device = self.options.get("device", "auto")
            self.options["model"] = load_solver(
                default_solver(self.ndim), device=resolve_device(device)
            )[0]

    def set_flags(self, flags: np.ndarray) -> None:
        """Rebuild the setup for new cell flags (obstacles moved, liquid advected).

        `project` calls it by itself when the array given here (or to the constructor) was
        changed in place since: the projector keeps its own read-only copy and compares the
        two before every projection, so a stale setup is never used.
        """
        self._source = flags if isinstance(flags, np.ndarray) else None
        self.flags = validate_flags(flags).copy()
        self.flags.flags.writeable = False
        self.ndim = self.flags.ndim
        self.boundary = normalize_boundary(self._boundary_given, self.ndim)
        self.problem = Problem(
            self.flags, np.zeros(int((self.flags == FLUID).sum())), self.boundary
        )
        self.shapes = face_shapes(self.flags.shape)
        self.solid_faces = solid_face_masks(self.flags, self.boundary)
        self.gradient_faces = self._gradient_faces()
        self.rebuilds = getattr(self, "rebuilds", -1) + 1

    def _sync_flags(self) -> None:
        """Pick up in-place edits of the caller's flags array (one int8 comparison)."""
        src = self._source
        if src is None:
            return
        if src.shape != self.flags.shape or not np.array_equal(src, self.flags):
            self.set_flags(src)

    def _gradient_faces(self) -> tuple[np.ndarray, ...]:
        """Per axis, the faces the pressure gradient acts on: not touching SOLID, and with a
        FLUID cell on at least one side (AIR–AIR faces keep their velocity)."""
        fluid = self.flags == FLUID
        out = []
        for axis in range(self.ndim):
            touches = np.zeros(self.shapes[axis], dtype=bool)
            lo = _along(axis, self.ndim, slice(None, -1))
            hi = _along(axis, self.ndim, slice(1, None))
            touches[hi] |= fluid  # the cell below face i+1 is cell i
            touches[lo] |= fluid  # the cell above face i is cell i
            out.append(touches & ~self.solid_faces[axis])
        return tuple(out)

    def gradient(self, pressure: np.ndarray) -> tuple[np.ndarray, ...]:
        """The face-normal pressure differences (p_high − p_low)/dx, 0 where no gradient acts.
        pressure: the grid (zero off FLUID cells; AIR and AIR boundaries count as p = 0)."""
        p = np.where(self.flags == FLUID, pressure, 0.0)
        grads = []
        for axis in range(self.ndim):
            pad = [(0, 0)] * self.ndim
            pad[axis] = (1, 1)  # outside cells: p = 0 (AIR); SOLID faces are masked anyway
            padded = np.pad(p, pad)
            hi = padded[_along(axis, self.ndim, slice(1, None))]
            lo = padded[_along(axis, self.ndim, slice(None, -1))]
            grads.append(np.where(self.gradient_faces[axis], (hi - lo) / self.dx, 0.0))
        return tuple(grads)

    def divergence(self, velocity, solid_velocity=None) -> np.ndarray:
        """The physical divergence (1/dx units) of a MAC velocity on this grid (0 off FLUID)."""
        return divergence(velocity, self.flags, self.boundary, solid_velocity) / self.dx

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
        div = divergence(comps, self.flags, self.boundary, walls)
        scale = self.density * self.dx / dt
        b = self.problem.from_grid(-scale * div)
        problem = self.problem.with_rhs(b)
        x0 = None if pressure0 is None else self.problem.from_grid(pressure0)
        options = {**self.options, **solve_options}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SingularSystemWarning)  # closed regions: expected
            result = solve_result(problem, x0=x0, rtol=rtol, method=self.method, **options)
        pressure = self.problem.to_grid(result.x)
        grads = self.gradient(pressure)
        k = dt / self.density
        out = []
        for axis in range(self.ndim):
            comp = np.asarray(comps[axis])
            dtype = np.result_type(comp.dtype, np.float32)
            new = comp.astype(np.float64) - k * grads[axis]
            mask = self.solid_faces[axis]
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
    density: float = 1.0,
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
    (time step), density: physical units; the pressure comes back in them. method: any
    `deepcd.solve` method (default "dcdm"), warm-started from `pressure0` (a previous
    pressure grid) when given; rtol: the divergence left, relative to the input's.
    solid_velocity: face arrays (entries may be None) for moving walls; faces touching SOLID
    take it. Returns (new velocity tuple, pressure grid float64 (0 off FLUID), SolveResult).
    For many steps on the same flags use `Projector`, which keeps the setup.
    """
    projector = Projector(
        flags, boundary=boundary, dx=dx, density=density, method=method, **solve_options
    )
    return projector.project(
        velocity, dt=dt, pressure0=pressure0, rtol=rtol, solid_velocity=solid_velocity
    )
