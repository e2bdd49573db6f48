"""A two-phase example: a heavy liquid drop falling through a light gas into a pool.

Per step (unit cell spacing, time step dt, the last axis up):
1. semi-Lagrangian advection (`deepcd.cfd.advection.Advector`) of the face velocities and of
   the liquid level set φ (*grid, < 0 in the liquid, in cells);
2. gravity: u_up −= dt·gravity on every vertical face;
3. the face densities from φ, sharp at the interface (Kang, Fedkiw & Liu 2000):
   ρ_f = θ_f·ρ_liquid + (1 − θ_f)·ρ_gas with θ_f the liquid part of the segment between the
   face's two cell centres (φ linear along it), `two_phase_face_density`;
4. the projection with that density (`Projector.set_coefficients`, warm-started from the
   previous pressure), which makes the velocity divergence-free on every cell.
Both phases are FLUID cells (the gas is simulated, not a free surface); the walls are SOLID
and the top is open (AIR, p = 0) by default. The pressure gradient accelerates each face by
dt/ρ_f·∇p: the same near-hydrostatic pressure that holds the gas up barely slows the liquid,
so the drop falls (with ρ ≡ const the projection would cancel gravity everywhere). Every
`reinit_every` steps φ is reset to the signed distance of its sign (Euclidean distance
transform between cell centres, ± 1/2 cell), which keeps it a distance function at the cost
of a sub-cell shift of the surface.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from deepcd.cfd.advection import Advector
from deepcd.cfd.projection import Projector
from deepcd.cfd.smoke import StepRecord, relative_divergence
from deepcd.problems.coefficients import liquid_face_fraction, two_phase_face_density
from deepcd.problems.flags import AIR, FLUID, SOLID, normalize_boundary
from deepcd.problems.mac import face_shapes

__all__ = ["DropSimulation", "liquid_face_fraction", "two_phase_face_density"]


def _redistance(phi: np.ndarray) -> np.ndarray:
    """The signed distance (cells) to the surface between φ's liquid and gas cells."""
    inside = phi < 0
    if inside.all() or not inside.any():
        return phi
    to_liquid = ndimage.distance_transform_edt(~inside)
    to_gas = ndimage.distance_transform_edt(inside)
    return np.where(inside, 0.5 - to_gas, to_liquid - 0.5)


class DropSimulation:
    """A liquid drop falling into a pool through a gas `ratio` times lighter (see the module
    docstring).

    shape: the grid (2D or 3D, last axis up, ≥ 16 cells per axis). pool_height: the pool's
    surface as a fraction of the height; drop_center: the drop's centre as fractions of every
    axis; drop_radius: in cells (default 0.12 of the smallest axis). gravity: cells per unit
    time², dt: the time step. Densities are ρ_gas = 1 and ρ_liquid = ratio. method/rtol/
    solve_options: the projection's; compare: a second method run on the same projection
    each step, only to record its cost. reinit_every: steps between level-set
    reinitializations (0: never).
    """

    def __init__(
        self,
        shape: Sequence[int],
        *,
        ratio: float = 1000.0,
        gravity: float = 0.05,
        pool_height: float = 0.35,
        drop_center: Sequence[float] | None = None,
        drop_radius: float | None = None,
        dt: float = 1.0,
        boundary=None,
        method: str = "dcdm",
        compare: str | None = None,
        rtol: float = 1e-6,
        reinit_every: int = 10,
        **solve_options,
    ):
        self.shape = tuple(int(s) for s in shape)
        self.ndim = len(self.shape)
        if self.ndim not in (2, 3) or min(self.shape) < 16:
            raise ValueError(f"shape must be 2D or 3D with >= 16 cells per axis, got {shape}")
        for name, value in (("ratio", ratio), ("dt", dt), ("gravity", gravity)):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive and finite, got {value}")
        if not 0.0 < pool_height < 1.0:
            raise ValueError(f"pool_height must lie in (0, 1), got {pool_height}")
        if reinit_every < 0:
            raise ValueError(f"reinit_every must be >= 0, got {reinit_every}")
        self.ratio, self.gravity, self.dt = float(ratio), float(gravity), float(dt)
        self.rho_gas, self.rho_liquid = 1.0, float(ratio)
        self.rtol, self.reinit_every = float(rtol), int(reinit_every)
        self.pool_height = float(pool_height)
        nz = self.shape[-1]
        center = [0.5] * (self.ndim - 1) + [0.72] if drop_center is None else list(drop_center)
        if len(center) != self.ndim:
            raise ValueError(f"drop_center needs {self.ndim} fractions, got {len(center)}")
        radius = 0.12 * min(self.shape) if drop_radius is None else float(drop_radius)
        if not radius > 0:
            raise ValueError(f"drop_radius must be positive, got {radius}")
        x = [g + 0.5 for g in np.indices(self.shape, dtype=np.float64)]  # cell centres
        ball = np.sqrt(
            sum((xd - c * n) ** 2 for xd, c, n in zip(x, center, self.shape, strict=True))
        )
        pool = x[-1] - pool_height * nz
        self.phi = np.minimum(pool, ball - radius)
        if center[-1] * nz - radius <= pool_height * nz:
            raise ValueError("the drop must start above the pool's surface")
        top = [SOLID] * (2 * self.ndim - 1) + [AIR]
        self.boundary = normalize_boundary(top if boundary is None else boundary, self.ndim)
        self.flags = np.full(self.shape, FLUID, dtype=np.int8)
        self.fluid = self.flags == FLUID
        density = two_phase_face_density(self.phi, self.rho_liquid, self.rho_gas)
        self.projector = Projector(
            self.flags, boundary=self.boundary, density=density, method=method, **solve_options
        )
        self.compare = (
            Projector(self.flags, boundary=self.boundary, density=density, method=compare)
            if compare
            else None
        )
        self.advector = Advector(self.shape, self.dt)
        self.velocity = tuple(np.zeros(s) for s in face_shapes(self.shape))
        self.pressure: np.ndarray | None = None
        self._compare_pressure: np.ndarray | None = None
        self.steps = 0

    def drop_height(self) -> float:
        """The height (cells, from the floor) of the centre of mass of the liquid above the
        pool's initial surface (+1 cell); NaN once none is left there."""
        z = np.arange(self.shape[-1]) + 0.5
        above = z > self.pool_height * self.shape[-1] + 1.0
        mass = np.clip(0.5 - self.phi, 0.0, 1.0)[..., above]  # a smeared liquid indicator
        total = mass.sum()
        return float((mass * z[above]).sum() / total) if total > 0 else float("nan")

    def step(self) -> StepRecord:
        t0 = time.perf_counter()
        (phi,) = self.advector.cells(self.velocity, self.phi)
        velocity = self.advector.faces(self.velocity)
        velocity[-1] = velocity[-1] - self.dt * self.gravity
        if self.reinit_every and (self.steps + 1) % self.reinit_every == 0:
            phi = _redistance(phi)
        density = two_phase_face_density(phi, self.rho_liquid, self.rho_gas)
        self.projector.set_coefficients(density=density)
        t_solve = time.perf_counter()
        new, pressure, result = self.projector.project(
            velocity, dt=self.dt, pressure0=self.pressure, rtol=self.rtol
        )
        record = StepRecord(
            step=self.steps + 1,
            iterations=int(result.iterations),
            solve_s=time.perf_counter() - t_solve,
            step_s=0.0,
            max_divergence=0.0,
            converged=bool(result.converged),
        )
        if self.compare is not None:
            t_cmp = time.perf_counter()
            self.compare.set_coefficients(density=density)
            _, cmp_pressure, cmp = self.compare.project(
                velocity, dt=self.dt, pressure0=self._compare_pressure, rtol=self.rtol
            )
            record.compare_iterations = int(cmp.iterations)
            record.compare_solve_s = time.perf_counter() - t_cmp
            self._compare_pressure = cmp_pressure
        record.relative_divergence = relative_divergence(self.projector, velocity, new)
        self.velocity, self.pressure, self.phi = new, pressure, phi
        self.steps += 1
        div = self.projector.divergence(self.velocity)
        record.max_divergence = float(np.abs(div).max())
        record.step_s = time.perf_counter() - t0
        return record

    def density_image(self) -> np.ndarray:
        """A 2D picture of the liquid (a smeared indicator in [0, 1] of φ < 0): the grid in 2D,
        in 3D the slice through the grid's centre along the second axis. Axis 0 of the image is
        the up axis (top row = top of the domain)."""
        img = np.clip(0.5 - self.phi, 0.0, 1.0)
        if self.ndim == 3:
            img = img[:, self.shape[1] // 2, :]
        return img.T[::-1]
