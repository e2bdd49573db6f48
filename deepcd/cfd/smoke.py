"""A small smoke simulator on a MAC grid, built around deepcd's pressure projection.

Per step (unit cell spacing, time step dt, the last axis up):
1. semi-Lagrangian advection (second-order Runge–Kutta backtrace, (bi/tri)linear sampling) of
   the face velocities, the smoke density and the temperature;
2. the source: inside a disc/ball on the floor the density and temperature are set and the
   upward face velocity is `source_speed`;
3. buoyancy on the vertical faces: dt·(buoyancy·T − weight·ρ), averaged from the two cells;
4. the projection (`Projector`, warm-started from the previous pressure), which makes the
   velocity divergence-free on the FLUID cells and impermeable at SOLID faces.
Scalars are zero inside solids. Everything is numpy/scipy; the solver is any deepcd method.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deepcd.cfd.advection import Advector
from deepcd.cfd.projection import Projector
from deepcd.problems.flags import FLUID, SOLID, normalize_boundary, validate_flags
from deepcd.problems.mac import face_shapes

__all__ = ["SmokeSimulation", "StepRecord"]


@dataclass
class StepRecord:
    """What one step cost and left: solver iterations and seconds, the step's wall time, the
    largest |divergence| on FLUID cells after the projection (1/time units) and the divergence
    left relative to the projection's input (‖div u_new‖/‖div u*‖ over the FLUID cells, what
    rtol bounds), and — when a comparison method is given — its iterations and seconds on the
    very same projection."""

    step: int
    iterations: int
    solve_s: float
    step_s: float
    max_divergence: float
    converged: bool
    compare_iterations: int | None = None
    compare_solve_s: float | None = None
    relative_divergence: float | None = None


def relative_divergence(projector: Projector, before, after) -> float:
    """‖div after‖ / ‖div before‖ over the FLUID cells (0 when `before` is divergence-free),
    by the projector's own (fraction-weighted) divergence."""
    fluid = projector.flags == FLUID
    d0 = np.linalg.norm(projector.divergence(before)[fluid])
    d1 = np.linalg.norm(projector.divergence(after)[fluid])
    return float(d1 / d0) if d0 > 0 else 0.0


class SmokeSimulation:
    """Smoke rising from a floor source around static obstacles (see the module docstring).

    flags/boundary: the cell flags and the flag outside each grid face (e.g. an open top);
    source_center: the source position as fractions of the horizontal axes; source_radius in
    cells. solid_fraction: per-axis face open fractions in [0, 1] of cut-cell solids (see
    `deepcd.cfd.project`). method/solve_options: the projection's deepcd method; compare: a
    second method run on the same projection each step, only to record its cost (its result
    is discarded).
    """

    def __init__(
        self,
        flags: np.ndarray,
        *,
        boundary=SOLID,
        source_center: Sequence[float] | None = None,
        source_radius: float | None = None,
        dt: float = 1.0,
        buoyancy: float = 0.15,
        weight: float = 0.02,
        source_speed: float = 1.0,
        solid_fraction: Sequence[np.ndarray] | None = None,
        method: str = "dcdm",
        compare: str | None = None,
        rtol: float = 1e-6,
        **solve_options,
    ):
        self.flags = validate_flags(flags)
        self.ndim = self.flags.ndim
        self.shape = self.flags.shape
        self.boundary = normalize_boundary(boundary, self.ndim)
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be positive, got {dt}")
        self.dt, self.buoyancy, self.weight = float(dt), float(buoyancy), float(weight)
        self.source_speed, self.rtol = float(source_speed), float(rtol)
        self.projector = Projector(
            self.flags,
            boundary=self.boundary,
            solid_fraction=solid_fraction,
            method=method,
            **solve_options,
        )
        self.compare = (
            Projector(
                self.flags, boundary=self.boundary, solid_fraction=solid_fraction, method=compare
            )
            if compare
            else None
        )
        self.fluid = self.flags == FLUID
        self.velocity = tuple(np.zeros(s, np.float32) for s in face_shapes(self.shape))
        self.density = np.zeros(self.shape, np.float32)
        self.temperature = np.zeros(self.shape, np.float32)
        self.pressure: np.ndarray | None = None
        self._compare_pressure: np.ndarray | None = None
        self.steps = 0
        center = [0.5] * (self.ndim - 1) if source_center is None else list(source_center)
        if len(center) != self.ndim - 1:
            raise ValueError(f"source_center needs {self.ndim - 1} horizontal fractions")
        radius = max(0.08 * min(self.shape), 1.5) if source_radius is None else source_radius
        idx = np.indices(self.shape, dtype=np.float64)
        dist2 = sum(
            (idx[d] + 0.5 - c * n) ** 2
            for d, (c, n) in enumerate(zip(center, self.shape[:-1], strict=True))
        )
        floor = idx[-1] < max(2, self.shape[-1] // 16)
        self.source = (dist2 <= radius**2) & floor & self.fluid
        if not self.source.any():
            raise ValueError("the smoke source lies entirely inside solids; move or widen it")
        self.advector = Advector(self.shape, self.dt)

    # -- one step ------------------------------------------------------------------------------
    def step(self) -> StepRecord:
        t0 = time.perf_counter()
        density, temperature = self.advector.cells(self.velocity, self.density, self.temperature)
        velocity = self.advector.faces(self.velocity)
        density[~self.fluid] = 0.0
        temperature[~self.fluid] = 0.0
        density[self.source] = 1.0
        temperature[self.source] = 1.0
        # buoyancy on the vertical faces (interior ones: average of the two cells)
        force = self.buoyancy * temperature - self.weight * density
        up = velocity[-1]
        up[..., 1:-1] += self.dt * 0.5 * (force[..., 1:] + force[..., :-1])
        # the source blows upward through the faces above its cells
        src = np.zeros(up.shape, dtype=bool)
        src[..., 1:] |= self.source
        up[src] = self.source_speed
        velocity = tuple(v.astype(np.float32) for v in velocity)

        t_solve = time.perf_counter()
        new, pressure, result = self.projector.project(
            velocity, dt=self.dt, pressure0=self.pressure, rtol=self.rtol
        )
        solve_s = time.perf_counter() - t_solve
        record = StepRecord(
            step=self.steps + 1,
            iterations=int(result.iterations),
            solve_s=solve_s,
            step_s=0.0,
            max_divergence=0.0,
            converged=bool(result.converged),
        )
        if self.compare is not None:
            t_cmp = time.perf_counter()
            _, cmp_pressure, cmp = self.compare.project(
                velocity, dt=self.dt, pressure0=self._compare_pressure, rtol=self.rtol
            )
            record.compare_iterations = int(cmp.iterations)
            record.compare_solve_s = time.perf_counter() - t_cmp
            self._compare_pressure = cmp_pressure
        self.velocity, self.pressure = new, pressure
        self.density, self.temperature = density.astype(np.float32), temperature.astype(np.float32)
        self.steps += 1
        div = self.projector.divergence(self.velocity)
        record.max_divergence = float(np.abs(div[self.fluid]).max()) if self.fluid.any() else 0.0
        record.relative_divergence = relative_divergence(self.projector, velocity, self.velocity)
        record.step_s = time.perf_counter() - t0
        return record

    def density_image(self) -> np.ndarray:
        """A 2D picture of the smoke: the density itself in 2D; in 3D the slice through the
        source's centre along the second axis. Axis 0 of the image is the up axis (top row =
        top of the domain); solids are NaN."""
        if self.ndim == 2:
            img, solid = self.density, self.flags == SOLID
        else:
            j = int(np.argmax(self.source.any(axis=(0, 2))))
            img, solid = self.density[:, j, :], self.flags[:, j, :] == SOLID
        img = np.where(solid, np.nan, img.astype(np.float64))
        return img.T[::-1]
