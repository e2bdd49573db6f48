"""Cell flags of a pressure grid and their validation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FLUID = 0  # an unknown of the pressure system
SOLID = 1  # a wall: Neumann boundary, zero normal pressure gradient
AIR = 2  # free surface / open boundary: Dirichlet, p = 0

FLAG_NAMES = {FLUID: "FLUID", SOLID: "SOLID", AIR: "AIR"}


def validate_flags(flags: np.ndarray, name: str = "flags") -> np.ndarray:
    """Return `flags` as a C-contiguous int8 array of shape (nx, ny) or (nx, ny, nz).

    Raises TypeError/ValueError naming `name` for a wrong dtype, dimension or value.
    """
    arr = np.asarray(flags)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must be an integer array of cell flags, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2D (nx, ny) or 3D (nx, ny, nz), got shape {arr.shape}")
    if min(arr.shape) < 1:
        raise ValueError(f"{name} has an empty axis: shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 2):
        bad = np.unique(arr[(arr < 0) | (arr > 2)])[:5]
        raise ValueError(f"{name} may only hold FLUID=0, SOLID=1, AIR=2; found {bad.tolist()}")
    return np.ascontiguousarray(arr, dtype=np.int8)


def normalize_boundary(boundary: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """Flags of the cells outside the grid, per face: (x-lo, x-hi, y-lo, y-hi[, z-lo, z-hi]).

    A single flag applies to every face. The default everywhere in deepcd is SOLID.
    """
    if np.isscalar(boundary):
        faces = (int(boundary),) * (2 * ndim)
    else:
        faces = tuple(int(f) for f in boundary)
    if len(faces) != 2 * ndim:
        raise ValueError(
            f"boundary needs one flag per face ({2 * ndim} for {ndim}D), got {len(faces)}"
        )
    for f in faces:
        if f not in (SOLID, AIR):
            raise ValueError(f"boundary faces must be SOLID=1 or AIR=2, got {f}")
    return faces
