"""Semi-Lagrangian advection on a MAC grid: a second-order Runge–Kutta backtrace through the
face velocities and (bi/tri)linear sampling, unit cell spacing (velocities in cells per unit
time). Cell fields live at the cell centres (*grid); face components at the MAC faces
(`deepcd.problems.mac.face_shapes`). Outside the grid, samples take the nearest value."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["Advector"]


def _face_coordinates(shape: Sequence[int], axis: int) -> list[np.ndarray]:
    """Positions (in cell-centre index units) of the faces along `axis`, as a dense grid."""
    axes = [np.arange(n + (1 if d == axis else 0), dtype=np.float64) for d, n in enumerate(shape)]
    axes[axis] = axes[axis] - 0.5
    return list(np.meshgrid(*axes, indexing="ij"))


class Advector:
    """Advection of cell and face fields by a MAC velocity over one step `dt`.

    shape: the grid (nx, ny[, nz]). Positions are in cell-centre index units (cell i's
    centre at i, its faces at i ± 1/2).
    """

    def __init__(self, shape: Sequence[int], dt: float):
        self.shape = tuple(int(s) for s in shape)
        self.ndim = len(self.shape)
        self.dt = float(dt)
        self.face_points = [_face_coordinates(self.shape, a) for a in range(self.ndim)]
        self.cell_points = [g.astype(np.float64) for g in np.indices(self.shape)]

    def sample_face(self, axis: int, field: np.ndarray, points: list[np.ndarray]) -> np.ndarray:
        """Linear interpolation of the face component `field` (along `axis`) at `points`."""
        coords = [p + (0.5 if d == axis else 0.0) for d, p in enumerate(points)]
        return ndimage.map_coordinates(field, coords, order=1, mode="nearest")

    def sample_cell(self, field: np.ndarray, points: list[np.ndarray]) -> np.ndarray:
        """Linear interpolation of the cell field `field` at `points`."""
        return ndimage.map_coordinates(field, points, order=1, mode="nearest")

    def velocity_at(self, velocity, points: list[np.ndarray]) -> list[np.ndarray]:
        return [self.sample_face(a, velocity[a], points) for a in range(self.ndim)]

    def backtrace(self, velocity, points: list[np.ndarray]) -> list[np.ndarray]:
        """Where the fluid at `points` came from one step ago (RK2 midpoint)."""
        v = self.velocity_at(velocity, points)
        mid = [p - 0.5 * self.dt * vi for p, vi in zip(points, v, strict=True)]
        v = self.velocity_at(velocity, mid)
        return [p - self.dt * vi for p, vi in zip(points, v, strict=True)]

    def cells(self, velocity, *fields: np.ndarray) -> list[np.ndarray]:
        """The cell fields carried along by `velocity` for one step (each field's dtype)."""
        origin = self.backtrace(velocity, self.cell_points)
        return [self.sample_cell(f, origin) for f in fields]

    def faces(self, velocity) -> list[np.ndarray]:
        """The face velocity advected by itself for one step (each component's dtype)."""
        return [
            self.sample_face(a, velocity[a], self.backtrace(velocity, self.face_points[a]))
            for a in range(self.ndim)
        ]
