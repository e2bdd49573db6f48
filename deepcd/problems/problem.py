"""`Problem`: a pressure system on a flag grid, in CSR and matrix-free stencil form."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp

from deepcd.problems import assembly
from deepcd.problems.coefficients import (
    Coefficients,
    closed_regions_of_stencil,
    stencil_csr,
    weighted_stencil,
)
from deepcd.problems.flags import FLUID, SOLID, normalize_boundary, validate_flags


def _owned(arr: np.ndarray) -> np.ndarray:
    """A read-only C-contiguous copy of `arr` (int8 flags: 2 MiB at 128³)."""
    out = np.array(arr, order="C", copy=True)
    out.flags.writeable = False
    return out


@dataclass(eq=False)
class Problem:
    """A pressure Poisson system A p = b over the FLUID cells of a cell-flag grid.

    flags: int8 grid (nx, ny) or (nx, ny, nz) of FLUID/SOLID/AIR.
    b: float64 (n,) right-hand side over the fluid cells, in C order of the grid.
    The problem owns both: they are copied on construction and stored read-only, so the
    assembled forms (CSR, stencil, regions, cached on first use) can never go stale when the
    caller edits the arrays it passed in; a new grid needs a new Problem.
    boundary: flag of the cells outside the grid, per face (x-lo, x-hi, y-lo, y-hi[, z-lo, z-hi]).
    generator/params/seed: where the problem came from (kept in HDF5 files and benchmarks).
    coefficients: face coefficients and ghost-fluid fractions (`deepcd.problems.coefficients`)
    of a variable-coefficient operator; None (default) is the flag Laplacian.
    """

    flags: np.ndarray
    b: np.ndarray
    boundary: tuple[int, ...] = ()
    generator: str = "user"
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    coefficients: Coefficients | None = None

    def __post_init__(self) -> None:
        self.flags = _owned(validate_flags(self.flags))
        if self.coefficients is not None:
            if not isinstance(self.coefficients, Coefficients):
                raise TypeError(
                    "coefficients must be a deepcd.problems.coefficients.Coefficients, got "
                    f"{type(self.coefficients).__name__}"
                )
            self.coefficients.check_grid(self.flags.shape)
        self.boundary = normalize_boundary(
            self.boundary if self.boundary != () else SOLID, self.flags.ndim
        )
        n = int(np.count_nonzero(self.flags == FLUID))
        if n == 0:
            raise ValueError("flags contain no FLUID cell: there is nothing to solve for")
        b = np.asarray(self.b)
        if b.dtype.kind not in "iuf":
            raise TypeError(f"b must be a real array, got dtype {b.dtype}")
        if b.shape == self.flags.shape:
            b = b[self.flags == FLUID]
        if b.shape != (n,):
            raise ValueError(
                f"b must have one value per FLUID cell ({n},) or the grid's shape "
                f"{self.flags.shape}, got {b.shape}"
            )
        if not np.all(np.isfinite(b)):
            raise ValueError("b contains NaN or Inf")
        self.b = _owned(np.asarray(b, dtype=np.float64))
        json.dumps(self.params)  # params must survive an HDF5 round trip

    # -- shape -----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.flags.shape

    @property
    def ndim(self) -> int:
        return self.flags.ndim

    @property
    def n(self) -> int:
        """Number of unknowns (FLUID cells)."""
        return self.b.size

    # -- forms -----------------------------------------------------------------------------
    @cached_property
    def index(self) -> np.ndarray:
        """int32 grid of unknown numbers, -1 off FLUID cells."""
        return assembly.fluid_index(self.flags)[0]

    @property
    def has_coefficients(self) -> bool:
        """True for a variable-coefficient operator (not the plain flag Laplacian)."""
        return self.coefficients is not None

    @cached_property
    def diagonal(self) -> np.ndarray:
        """A's diagonal (n,): uint8 for the flag Laplacian (the count of non-SOLID
        neighbours), float64 with coefficients."""
        if self.has_coefficients:
            return self.grid_stencil[0][self.flags == FLUID]
        return assembly.stencil_diagonal(self.flags, self.boundary)

    @cached_property
    def grid_stencil(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """(diag (*grid), links[a] (*grid, axis a one shorter)), float64: A on the grid, the
        form the V-cycle network reads (see `deepcd.problems.coefficients`)."""
        return weighted_stencil(self.flags, self.boundary, self.coefficients)

    @cached_property
    def A(self) -> sp.csr_matrix:
        """A as scipy CSR (float64, sorted indices); assembled on first use."""
        if self.has_coefficients:
            return stencil_csr(self.flags, *self.grid_stencil)
        return assembly.laplacian_csr(self.flags, self.boundary)

    @cached_property
    def stencil(self):
        """The matrix-free form: a `StencilOperator` applying the flag Laplacian with a numba
        kernel; with coefficients, a `WeightedStencilOperator` of `grid_stencil`."""
        from deepcd.operators import StencilOperator, WeightedStencilOperator

        if self.has_coefficients:
            diag, links = self.grid_stencil
            return WeightedStencilOperator(self.index, diag, links, csr_factory=lambda: self.A)
        return StencilOperator(self.index, self.diagonal, csr_factory=lambda: self.A)

    @cached_property
    def closed_regions(self) -> tuple[np.ndarray, int]:
        """(labels over unknowns, count) of fluid regions touching no AIR; see assembly."""
        if self.has_coefficients:
            return closed_regions_of_stencil(self.flags, *self.grid_stencil)
        return assembly.closed_regions(self.flags, self.boundary)

    @property
    def is_singular(self) -> bool:
        """True when some fluid region touches no AIR (A has a constant null vector there)."""
        return self.closed_regions[1] > 0

    # -- layouts ---------------------------------------------------------------------------
    def to_grid(self, v: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Scatter a fluid vector (n,) onto the grid; non-FLUID cells get `fill`."""
        v = np.asarray(v)
        if v.shape != (self.n,):
            raise ValueError(f"expected a fluid vector of shape ({self.n},), got {v.shape}")
        out = np.full(self.shape, fill, dtype=np.result_type(v.dtype, np.float64))
        out[self.flags == FLUID] = v
        return out

    def from_grid(self, g: np.ndarray) -> np.ndarray:
        """Gather the FLUID cells of a grid array into a fluid vector (n,), C order."""
        g = np.asarray(g)
        if g.shape != self.shape:
            raise ValueError(f"expected a grid of shape {self.shape}, got {g.shape}")
        return np.ascontiguousarray(g[self.flags == FLUID])

    def with_rhs(self, b: np.ndarray) -> Problem:
        """The same grid with another right-hand side; shares the forms assembled so far
        (safe: the flags are read-only and owned)."""
        other = Problem(
            self.flags,
            b,
            self.boundary,
            self.generator,
            dict(self.params),
            self.seed,
            self.coefficients,
        )
        for name in _FORMS:
            if name in self.__dict__:
                other.__dict__[name] = self.__dict__[name]
        return other

    def __repr__(self) -> str:
        return (
            f"Problem(generator={self.generator!r}, shape={self.shape}, n={self.n}, "
            f"boundary={self.boundary}, seed={self.seed}"
            + (", coefficients" if self.has_coefficients else "")
            + ")"
        )


_FORMS = ("index", "diagonal", "grid_stencil", "A", "stencil", "closed_regions")


def from_flags(
    flags: np.ndarray,
    rhs: np.ndarray | None = None,
    *,
    boundary=SOLID,
    coefficients: Coefficients | None = None,
) -> Problem:
    """A `Problem` from a user's own int8 flag grid (0 = FLUID, 1 = SOLID, 2 = AIR).

    rhs: float64 over the fluid cells (n,) or on the grid; default ones (a uniform source).
    boundary: flag outside the grid, one for all faces or one per face; SOLID by default.
    coefficients: face coefficients / ghost-fluid fractions (`Coefficients`), default none.
    """
    flags = validate_flags(flags)
    if rhs is None:
        rhs = np.ones(int(np.count_nonzero(flags == FLUID)))
    return Problem(flags, rhs, boundary, coefficients=coefficients)
