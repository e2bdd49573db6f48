"""Pressure problems: cell-flag grids, scenes, assembly (CSR and stencil), HDF5 storage."""

from __future__ import annotations

from deepcd.problems.coefficients import Coefficients
from deepcd.problems.flags import AIR, FLUID, SOLID
from deepcd.problems.io import load_problem, save_problem
from deepcd.problems.problem import Problem, from_flags
from deepcd.problems.scenes import make_scene, scene_names


def scenes() -> list[str]:
    """Names of the built-in scene generators."""
    return scene_names()


def parse_shape(shape, ndim: int = 3) -> tuple[int, ...]:
    """A grid shape from an int (a cube/square of `ndim` axes), a tuple, or "64x64x32"."""
    if isinstance(shape, str):
        parts = shape.lower().split("x")
        try:
            values = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"shape must look like 64 or 128x128 or 64x64x32, got {shape!r}"
            ) from None
        shape = values if len(values) > 1 else values[0]
    if isinstance(shape, int):
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        return (shape,) * ndim
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must have 2 or 3 positive entries, got {shape}")
    return shape


def scene(name: str, shape, seed: int = 0, **params) -> Problem:
    """A named, seeded scene as a `Problem`. shape: (nx, ny) or (nx, ny, nz), or an int (3D)."""
    data = make_scene(name, parse_shape(shape), seed=seed, **params)
    return Problem(
        data.flags,
        data.rhs,
        data.boundary,
        generator=name,
        params=data.params,
        seed=seed,
        coefficients=data.coefficients,
    )


__all__ = [
    "AIR",
    "FLUID",
    "SOLID",
    "Coefficients",
    "Problem",
    "from_flags",
    "load_problem",
    "parse_shape",
    "save_problem",
    "scene",
    "scenes",
]
