"""MAC (staggered) velocity fields on a cell-flag grid: wall masks and the discrete divergence.

A grid of shape (nx, ny[, nz]) has one normal velocity per cell face, stored per axis:
u of shape (nx+1, ny[, nz]), v of shape (nx, ny+1[, nz]), w of shape (nx, ny, nz+1). Face i
along an axis lies between cells i-1 and i of that axis; faces 0 and n are the grid's outer
faces, whose outside cell takes the flag of `boundary` for that face
(x-lo, x-hi, y-lo, y-hi[, z-lo, z-hi]). Spacing is one cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepcd.problems.flags import FLUID, SOLID, normalize_boundary, validate_flags

__all__ = ["check_faces", "divergence", "face_shapes", "solid_face_masks"]

_AXIS_NAMES = "uvw"


def face_shapes(shape: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Shapes of the MAC face arrays (u, v[, w]) of a grid of shape `shape`."""
    shape = tuple(int(s) for s in shape)
    return tuple(
        tuple(s + 1 if d == axis else s for d, s in enumerate(shape)) for axis in range(len(shape))
    )


def _along(axis: int, ndim: int, index) -> tuple:
    """An index tuple selecting `index` along `axis` and everything along the other axes."""
    key = [slice(None)] * ndim
    key[axis] = index
    return tuple(key)


def solid_face_masks(flags: np.ndarray, boundary=SOLID) -> tuple[np.ndarray, ...]:
    """Per axis, a bool face array: True where the face touches a SOLID cell on either side.

    The outer faces of the grid also count the outside cell, whose flag is `boundary` for that
    face. Shapes are those of `face_shapes(flags.shape)`.
    """
    flags = validate_flags(flags)
    ndim = flags.ndim
    bc = normalize_boundary(boundary, ndim)
    solid = flags == SOLID
    masks = []
    for axis in range(ndim):
        mask = np.empty(face_shapes(flags.shape)[axis], dtype=bool)
        # interior faces: solid on the low or the high side
        np.logical_or(
            solid[_along(axis, ndim, slice(None, -1))],
            solid[_along(axis, ndim, slice(1, None))],
            out=mask[_along(axis, ndim, slice(1, -1))],
        )
        lo, hi = _along(axis, ndim, 0), _along(axis, ndim, -1)
        mask[lo] = solid[lo] | (bc[2 * axis] == SOLID)
        mask[hi] = solid[hi] | (bc[2 * axis + 1] == SOLID)
        masks.append(mask)
    return tuple(masks)


def check_faces(arrays, shapes, name: str, allow_none: bool) -> list:
    """Validate a tuple of face arrays: count, real dtype, exact shapes, finite values."""
    if isinstance(arrays, np.ndarray) or not isinstance(arrays, Sequence):
        raise TypeError(
            f"{name} must be a tuple of {len(shapes)} face arrays "
            f"({', '.join(_AXIS_NAMES[: len(shapes)])}), got {type(arrays).__name__}"
        )
    if len(arrays) != len(shapes):
        raise ValueError(
            f"{name} must hold {len(shapes)} face arrays for a {len(shapes)}D grid, "
            f"got {len(arrays)}"
        )
    out = []
    for axis, (arr, shape) in enumerate(zip(arrays, shapes, strict=True)):
        label = f"{name}[{axis}] ({_AXIS_NAMES[axis]})"
        if arr is None and allow_none:
            out.append(None)
            continue
        arr = np.asarray(arr)
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{label} must be a real array, got dtype {arr.dtype}")
        if arr.shape != shape:
            raise ValueError(f"{label} must have shape {shape}, got {arr.shape}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"{label} contains NaN or Inf")
        out.append(arr)
    return out


def divergence(
    velocity: tuple[np.ndarray, ...],
    flags: np.ndarray,
    boundary=SOLID,
    solid_velocity: tuple | None = None,
) -> np.ndarray:
    """The discrete divergence of a MAC velocity, float64 of the grid's shape.

    div[c] = sum over axes of (face after c) - (face before c), unit spacing, on FLUID cells;
    0 on every other cell. Before differencing, each face that touches a SOLID cell (inside the
    grid, or outside it through a SOLID `boundary` face) takes the solid's velocity: 0, or the
    matching entry of `solid_velocity` (a tuple of face arrays shaped like `velocity`; an entry
    may be None for zero). Walls are thus impermeable; faces between FLUID and AIR keep their
    velocity.

    Differences are taken in the velocity's own precision (float32 input stays float32 until it
    is accumulated), so a 256^3 field needs a few grid-sized temporaries at most.
    """
    flags = validate_flags(flags)
    ndim = flags.ndim
    bc = normalize_boundary(boundary, ndim)
    shapes = face_shapes(flags.shape)
    comps = check_faces(velocity, shapes, "velocity", allow_none=False)
    if solid_velocity is None:
        walls = [None] * ndim
    else:
        walls = check_faces(solid_velocity, shapes, "solid_velocity", allow_none=True)
    masks = solid_face_masks(flags, bc)

    div = np.zeros(flags.shape, dtype=np.float64)
    for axis in range(ndim):
        comp, wall, mask = comps[axis], walls[axis], masks[axis]
        dtype = np.result_type(comp.dtype, np.float32)
        if wall is not None:
            dtype = np.result_type(dtype, wall.dtype)
        if mask.any():
            faces = np.where(mask, 0 if wall is None else wall, comp).astype(dtype, copy=False)
        else:
            faces = comp.astype(dtype, copy=False)
        hi = faces[_along(axis, ndim, slice(1, None))]
        lo = faces[_along(axis, ndim, slice(None, -1))]
        div += np.subtract(hi, lo)
        del faces, hi, lo
    div[flags != FLUID] = 0.0
    return div
