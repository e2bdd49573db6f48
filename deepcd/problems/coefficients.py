"""Variable-coefficient pressure operators: face coefficients, ghost-fluid surfaces, cut cells.

A fluid code's pressure system is the flag Laplacian with a weight per cell face. Per axis a,
the face arrays have the MAC shape (`deepcd.problems.mac.face_shapes`: the grid with axis a one
longer; face i lies between cells i-1 and i, faces 0 and n are the grid's outer faces):

  beta[a]   ≥ 0   the face coefficient: (open fraction of the face) / (density at the face).
                  1 everywhere is the flag Laplacian; 0 closes a face (a cut-cell solid that
                  covers it), whatever the flags say.
  theta[a]  ∈ (0, 1]  ghost-fluid fraction on faces between a FLUID and an AIR cell: where the
                  free surface cuts the segment between the two cell centres, measured from
                  the FLUID centre (Gibou et al. 2002). 1 puts the surface at the AIR centre
                  (the flag Laplacian). Read only on FLUID–AIR faces.

For a FLUID cell c and each of its faces f towards a neighbour m (outside cells take the
boundary flag of their face):
  m FLUID:  diag_c += beta_f,  A[c, m] = −beta_f
  m AIR:    diag_c += beta_f / theta_f      (Dirichlet p = 0 at the surface)
  m SOLID:  nothing (Neumann)
plus, where given, a per-cell term `extra` ≥ 0 on the diagonal (what a user's assembled matrix
holds beyond its face couplings: `Coefficients.from_stencil`). So A is symmetric with
non-positive off-diagonals and weakly diagonally dominant: positive
semi-definite, singular exactly on the regions (joined by faces with beta > 0) that reach no
AIR through a face with beta > 0.

The grid stencil form `(diag, links)` — diag (*grid) float64, 0 off FLUID cells, links[a]
(*grid with axis a one shorter) float64, the coupling across each interior face (0 unless both
cells are FLUID) — is what the V-cycle network's hierarchy and the torch operator read;
`stencil_of_csr` recovers it from any symmetric 5/7-point matrix on the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from deepcd.problems.flags import AIR, FLUID, SOLID, normalize_boundary, validate_flags
from deepcd.problems.mac import face_shapes

__all__ = [
    "Coefficients",
    "closed_regions_of_stencil",
    "face_average",
    "ghost_fluid_theta",
    "liquid_face_fraction",
    "require_in_range",
    "stencil_csr",
    "stencil_of_csr",
    "two_phase_face_density",
    "weighted_stencil",
]

THETA_MIN = 1e-3  # ghost-fluid fractions below this are clamped (the diagonal grows like 1/θ)


def _faces(name: str, arrays, shape: tuple[int, ...], lo: float, hi: float, *, open_lo: bool):
    """Validate per-axis face arrays: finite, in [lo, hi] (lo excluded unless open_lo)."""
    arrays = list(arrays)
    want = face_shapes(shape)
    if len(arrays) != len(shape):
        raise ValueError(
            f"{name} needs one face array per axis ({len(shape)} for a {len(shape)}D grid), "
            f"got {len(arrays)}"
        )
    out = []
    for a, (arr, sh) in enumerate(zip(arrays, want, strict=True)):
        arr = np.asarray(arr)
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{name}[{a}] must be a real array, got dtype {arr.dtype}")
        if arr.shape != sh:
            raise ValueError(f"{name}[{a}] must have the face shape {sh}, got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}[{a}] contains NaN or Inf")
        require_in_range(f"{name}[{a}]", arr, lo, hi, open_lo=open_lo)
        arr.flags.writeable = False
        out.append(arr)
    return tuple(out)


def require_in_range(label: str, arr: np.ndarray, lo: float, hi: float, *, open_lo: bool) -> None:
    """Raise a ValueError naming `label` unless every face value lies in [lo, hi] ((lo, hi]
    when not open_lo), with the count of offending faces and the first one."""
    bad = (arr < lo) | (arr > hi) if open_lo else (arr <= lo) | (arr > hi)
    if bad.any():
        interval = f"[{lo:g}, {hi:g}]" if open_lo else f"({lo:g}, {hi:g}]"
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{label} must lie in {interval}; {int(bad.sum())} faces do not "
            f"(first at face {first}: {arr[first]:g})"
        )


@dataclass(frozen=True, eq=False)
class Coefficients:
    """Face coefficients (and ghost-fluid fractions) of a pressure operator on a grid.

    beta: per-axis float64 face arrays (MAC shapes), ≥ 0, finite. theta: the same shapes in
    (0, 1], or None (all 1). extra: (*grid) float64 ≥ 0 added to the diagonal of FLUID cells,
    or None. Use the builders (`from_density`, `ghost_fluid_theta`, `face_average`,
    `from_stencil`) for the usual inputs. Arrays are copied and read-only.
    """

    beta: tuple[np.ndarray, ...]
    theta: tuple[np.ndarray, ...] | None = None
    extra: np.ndarray | None = None

    @classmethod
    def validated(cls, shape: Sequence[int], beta, theta=None, extra=None) -> Coefficients:
        shape = tuple(int(s) for s in shape)
        b = _faces("beta", beta, shape, 0.0, np.inf, open_lo=True)
        t = None if theta is None else _faces("theta", theta, shape, 0.0, 1.0, open_lo=False)
        e = None
        if extra is not None:
            e = np.array(extra, dtype=np.float64, order="C", copy=True)
            if e.shape != shape:
                raise ValueError(f"extra must have the grid's shape {shape}, got {e.shape}")
            if not np.all(np.isfinite(e)) or e.min(initial=0.0) < 0:
                raise ValueError("extra must be finite and non-negative")
            e.flags.writeable = False
        return cls(b, t, e)

    @classmethod
    def from_stencil(cls, flags: np.ndarray, diag: np.ndarray, links) -> Coefficients:
        """The coefficients of a grid stencil (diag, links) — e.g. `stencil_of_csr` of a user's
        matrix: beta = the links on interior faces (0 on the others), extra = what the
        diagonal holds beyond them. `weighted_stencil` gives (diag, links) back exactly."""
        flags = validate_flags(flags)
        nd = flags.ndim
        beta = []
        for a, w in enumerate(links):
            f = np.zeros(face_shapes(flags.shape)[a])
            f[_along(nd, a, slice(1, flags.shape[a]))] = w
            beta.append(f)
        extra = np.zeros(flags.shape)
        fluid = flags == FLUID
        extra[fluid] = np.maximum(diag[fluid] - _link_sums(flags, links), 0.0)
        return cls.validated(flags.shape, beta, None, extra)

    @classmethod
    def from_density(
        cls,
        density: np.ndarray,
        *,
        theta=None,
        open_fraction=None,
    ) -> Coefficients:
        """beta = open_fraction / ρ_face with ρ_face the mean density of the face's two cells
        (`face_average`). density: (*grid) float, > 0 and finite on every cell; open_fraction:
        per-axis face arrays in [0, 1] (cut-cell solids), default 1."""
        rho = np.asarray(density, dtype=np.float64)
        if not np.all(np.isfinite(rho)):
            raise ValueError("density contains NaN or Inf")
        if rho.size and rho.min() <= 0:
            raise ValueError(f"density must be positive everywhere, got min {rho.min():g}")
        beta = [1.0 / f for f in face_average(rho)]
        if open_fraction is not None:
            frac = _faces("open_fraction", open_fraction, rho.shape, 0.0, 1.0, open_lo=True)
            beta = [b * f for b, f in zip(beta, frac, strict=True)]
        return cls.validated(rho.shape, beta, theta)

    def check_grid(self, shape: Sequence[int]) -> None:
        """Raise unless the face arrays fit a grid of `shape`."""
        want = face_shapes(tuple(shape))
        got = tuple(b.shape for b in self.beta)
        if got != want:
            raise ValueError(f"coefficients have face shapes {got}, the grid needs {want}")
        if self.theta is not None and tuple(t.shape for t in self.theta) != want:
            raise ValueError("theta's face shapes do not match beta's")
        if self.extra is not None and self.extra.shape != tuple(shape):
            raise ValueError(f"extra has shape {self.extra.shape}, the grid is {tuple(shape)}")


def face_average(cell: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per axis, the arithmetic mean of the two cells beside each face (outer faces: the cell
    inside). cell: (*grid) float → MAC face arrays."""
    cell = np.asarray(cell, dtype=np.float64)
    out = []
    for a in range(cell.ndim):
        n = cell.shape[a]
        f = np.empty(face_shapes(cell.shape)[a])
        inner = [slice(None)] * cell.ndim
        inner[a] = slice(1, n)
        lo = [slice(None)] * cell.ndim
        lo[a] = slice(0, n - 1)
        hi = [slice(None)] * cell.ndim
        hi[a] = slice(1, n)
        f[tuple(inner)] = 0.5 * (cell[tuple(lo)] + cell[tuple(hi)])
        first, last = [slice(None)] * cell.ndim, [slice(None)] * cell.ndim
        first[a], last[a] = slice(0, 1), slice(n, n + 1)
        src_first, src_last = list(first), [slice(None)] * cell.ndim
        src_last[a] = slice(n - 1, n)
        f[tuple(first)] = cell[tuple(src_first)]
        f[tuple(last)] = cell[tuple(src_last)]
        out.append(f)
    return tuple(out)


def ghost_fluid_theta(
    flags: np.ndarray, phi: np.ndarray, *, theta_min: float = THETA_MIN
) -> tuple[np.ndarray, ...]:
    """Ghost-fluid fractions from a liquid level set phi (*grid; < 0 in the liquid, the
    surface at phi = 0): θ = φ_c / (φ_c − φ_m) on faces between a FLUID cell c and an AIR cell
    m where φ changes sign, clamped to [theta_min, 1]; 1 on every other face (outer faces
    included: the outside has no level set)."""
    flags = validate_flags(flags)
    phi = np.asarray(phi, dtype=np.float64)
    if phi.shape != flags.shape:
        raise ValueError(f"phi must have the grid's shape {flags.shape}, got {phi.shape}")
    if not np.all(np.isfinite(phi)):
        raise ValueError("phi contains NaN or Inf")
    if not 0.0 < theta_min <= 1.0:
        raise ValueError(f"theta_min must lie in (0, 1], got {theta_min}")
    out = []
    nd = flags.ndim
    for a in range(nd):
        n = flags.shape[a]
        th = np.ones(face_shapes(flags.shape)[a])
        lo = [slice(None)] * nd
        lo[a] = slice(0, n - 1)
        hi = [slice(None)] * nd
        hi[a] = slice(1, n)
        f_lo, f_hi = flags[tuple(lo)], flags[tuple(hi)]
        p_lo, p_hi = phi[tuple(lo)], phi[tuple(hi)]
        inner = [slice(None)] * nd
        inner[a] = slice(1, n)
        t = th[tuple(inner)]
        for fc, fm, pc, pm in ((f_lo, f_hi, p_lo, p_hi), (f_hi, f_lo, p_hi, p_lo)):
            cut = (fc == FLUID) & (fm == AIR) & (pc < 0) & (pm >= 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                frac = np.clip(pc / (pc - pm), theta_min, 1.0)
            t[cut] = frac[cut]
        out.append(th)
    return tuple(out)


def _along(nd: int, axis: int, sl) -> tuple:
    key = [slice(None)] * nd
    key[axis] = sl
    return tuple(key)


def liquid_face_fraction(phi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per axis, the liquid fraction θ ∈ [0, 1] of the segment between the two cell centres
    beside each face (φ linear along it; outer faces: 1 or 0 by the inside cell's sign).
    phi: (*grid) float, < 0 in the liquid → MAC face arrays float64."""
    phi = np.asarray(phi, dtype=np.float64)
    nd = phi.ndim
    out = []
    for a, sh in enumerate(face_shapes(phi.shape)):
        n = phi.shape[a]
        f = np.empty(sh)
        lo, hi = phi[_along(nd, a, slice(0, n - 1))], phi[_along(nd, a, slice(1, n))]
        both = np.where((lo < 0) & (hi < 0), 1.0, 0.0)
        cut = (lo < 0) != (hi < 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            part = np.where(lo < 0, -lo, -hi) / (np.abs(lo) + np.abs(hi))
        f[_along(nd, a, slice(1, n))] = np.where(cut, np.clip(part, 0.0, 1.0), both)
        f[_along(nd, a, slice(0, 1))] = phi[_along(nd, a, slice(0, 1))] < 0
        f[_along(nd, a, slice(n, n + 1))] = phi[_along(nd, a, slice(n - 1, n))] < 0
        out.append(f)
    return tuple(out)


def two_phase_face_density(
    phi: np.ndarray, rho_liquid: float, rho_gas: float
) -> tuple[np.ndarray, ...]:
    """The sharp face densities θ·ρ_liquid + (1 − θ)·ρ_gas of `liquid_face_fraction` (MAC
    face arrays, float64)."""
    return tuple(t * rho_liquid + (1.0 - t) * rho_gas for t in liquid_face_fraction(phi))


def weighted_stencil(
    flags: np.ndarray, boundary, coefficients: Coefficients | None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The grid stencil (diag, links) of the operator of flags + coefficients (see the module
    docstring); coefficients None gives the flag Laplacian's."""
    flags = validate_flags(flags)
    nd = flags.ndim
    bc = normalize_boundary(boundary, nd)
    if coefficients is not None:
        coefficients.check_grid(flags.shape)
    fluid = flags == FLUID
    diag = np.zeros(flags.shape)
    links = []
    for a in range(nd):
        n = flags.shape[a]
        beta = (
            np.ones(face_shapes(flags.shape)[a]) if coefficients is None else coefficients.beta[a]
        )
        theta = (
            None if coefficients is None or coefficients.theta is None else coefficients.theta[a]
        )
        # the flags on both sides of every face, outside cells from the boundary
        side_shape = list(flags.shape)
        side_shape[a] = 1
        lo_cells = np.concatenate(
            [np.full(side_shape, bc[2 * a], dtype=np.int8), flags], axis=a
        )  # the cell below face i
        hi_cells = np.concatenate(
            [flags, np.full(side_shape, bc[2 * a + 1], dtype=np.int8)], axis=a
        )  # the cell above face i
        # each face's contribution to the diagonal of its FLUID cells
        for cell, other, sl in (
            (hi_cells, lo_cells, slice(0, n)),  # the face below each cell
            (lo_cells, hi_cells, slice(1, n + 1)),  # the face above each cell
        ):
            f = _along(nd, a, sl)
            w = np.where(other[f] == SOLID, 0.0, beta[f])
            if theta is not None:
                w = np.where(other[f] == AIR, w / theta[f], w)
            diag += np.where(cell[f] == FLUID, w, 0.0)
        inner = _along(nd, a, slice(1, n))
        both = fluid[_along(nd, a, slice(0, n - 1))] & fluid[_along(nd, a, slice(1, n))]
        links.append(np.where(both, beta[inner], 0.0))
    if coefficients is not None and coefficients.extra is not None:
        diag += np.where(fluid, coefficients.extra, 0.0)
    return diag, links


def stencil_csr(flags: np.ndarray, diag: np.ndarray, links: Sequence[np.ndarray]) -> sp.csr_matrix:
    """The CSR matrix (float64, sorted indices) over the FLUID cells (C order) of a grid
    stencil; faces with zero weight give no entry."""
    from deepcd.problems.assembly import fluid_index

    flags = validate_flags(flags)
    index, n = fluid_index(flags)
    nd = flags.ndim
    rows = [np.arange(n)]
    cols = [np.arange(n)]
    vals = [diag[flags == FLUID]]
    for a, w in enumerate(links):
        m = flags.shape[a]
        lo = index[_along(nd, a, slice(0, m - 1))]
        hi = index[_along(nd, a, slice(1, m))]
        on = w > 0
        i, j, v = lo[on], hi[on], -w[on]
        rows += [i, j]
        cols += [j, i]
        vals += [v, v]
    A = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    ).tocsr()
    A.sort_indices()
    return A


def stencil_of_csr(
    A: sp.spmatrix, flags: np.ndarray, *, rtol: float = 1e-10
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The grid stencil (diag, links) of a matrix over the FLUID cells of `flags` (C order).

    Raises ValueError, saying which, unless A couples only face neighbours, is symmetric (to
    rtol of its largest entry), has non-positive off-diagonals and a non-negative diagonal, and
    is weakly diagonally dominant — the pressure operators of this module and of the flags.
    """

    flags = validate_flags(flags)
    n = int(np.count_nonzero(flags == FLUID))
    if A.shape != (n, n):
        raise ValueError(f"A is {A.shape} but the flags have {n} FLUID cells")
    coo = sp.coo_matrix(A)
    r, c, v = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(np.float64)
    keep = v != 0
    r, c, v = r[keep], c[keep], v[keep]
    if not np.all(np.isfinite(v)):
        raise ValueError("A contains NaN or Inf")
    scale = float(np.abs(v).max()) if v.size else 1.0
    coords = np.argwhere(flags == FLUID)  # unknown k sits at coords[k] (C order)
    off = r != c
    delta = coords[c[off]] - coords[r[off]]
    step = np.abs(delta).sum(axis=1)
    if np.any(step != 1):
        k = int(np.flatnonzero(step != 1)[0])
        raise ValueError(
            f"A is not a 5/7-point stencil on the flags' grid: entry ({r[off][k]}, {c[off][k]}) "
            f"couples cells {tuple(coords[r[off][k]])} and {tuple(coords[c[off][k]])}"
        )
    if np.any(v[off] > rtol * scale):
        raise ValueError(
            "A has positive off-diagonal entries: DCDM's V-cycle needs a pressure operator "
            "(non-positive couplings); use method='amg-sa' or 'ic0' for this matrix"
        )
    nd = flags.ndim
    diag = np.zeros(flags.shape)
    d = np.zeros(n)
    np.add.at(d, r[~off], v[~off])
    if np.any(d < -rtol * scale):
        raise ValueError("A has a negative diagonal entry: it is not positive semi-definite")
    diag[flags == FLUID] = d
    links = []
    ro, co, vo = r[off], c[off], -v[off]
    axis = np.argmax(np.abs(delta), axis=1)
    upward = delta[np.arange(len(delta)), axis] > 0
    for a in range(nd):
        shape = list(flags.shape)
        shape[a] -= 1
        up, down = np.zeros(shape), np.zeros(shape)
        sel = axis == a
        lower = coords[np.where(upward, ro, co)[sel]]  # the cell on the low side of the face
        mine, val = upward[sel], vo[sel]
        np.add.at(up, tuple(lower[mine].T), val[mine])  # entries (low, high)
        np.add.at(down, tuple(lower[~mine].T), val[~mine])  # entries (high, low)
        if not np.allclose(up, down, rtol=0.0, atol=rtol * scale):
            bad = np.argwhere(~np.isclose(up, down, rtol=0.0, atol=rtol * scale))[0]
            raise ValueError(
                f"A is not symmetric: the coupling across the face above cell {tuple(bad)} "
                f"along axis {a} is {-up[tuple(bad)]:g} one way and {-down[tuple(bad)]:g} the other"
            )
        links.append(0.5 * (up + down))
    excess = d - _link_sums(flags, links)
    if np.any(excess < -1e-8 * np.maximum(d, scale * 1e-12)):
        k = int(np.argmin(excess))
        raise ValueError(
            f"A is not weakly diagonally dominant (row {k}: diagonal {d[k]:g} < sum of its "
            f"couplings {d[k] - excess[k]:g}); DCDM's V-cycle needs a pressure operator — use "
            "method='amg-sa' or 'ic0' for this matrix"
        )
    return diag, links


def _link_sums(flags: np.ndarray, links: Sequence[np.ndarray]) -> np.ndarray:
    """Σ of each FLUID cell's couplings (n,)."""
    nd = flags.ndim
    total = np.zeros(flags.shape)
    for a, w in enumerate(links):
        m = flags.shape[a]
        total[_along(nd, a, slice(0, m - 1))] += w
        total[_along(nd, a, slice(1, m))] += w
    return total[flags == FLUID]


def closed_regions_of_stencil(
    flags: np.ndarray, diag: np.ndarray, links: Sequence[np.ndarray]
) -> tuple[np.ndarray, int]:
    """`deepcd.problems.assembly.closed_regions` for a weighted stencil: regions are joined by
    faces with positive weight; a region is closed when every row sums to zero (no Dirichlet
    term: its constant is in the null space). Returns (labels over unknowns, -1 on open
    regions; count)."""
    from scipy.sparse.csgraph import connected_components

    A = stencil_csr(flags, diag, links)
    n = A.shape[0]
    ncomp, label = connected_components(A, directed=False)
    d = A.diagonal()
    excess = np.asarray(A.sum(axis=1)).ravel()
    open_ = np.zeros(ncomp, dtype=bool)
    np.logical_or.at(open_, label, excess > 1e-12 * np.maximum(d, 1e-300))
    closed = np.flatnonzero(~open_)
    relabel = np.full(ncomp, -1, dtype=np.int32)
    relabel[closed] = np.arange(closed.size, dtype=np.int32)
    out = relabel[label] if n else np.zeros(0, dtype=np.int32)
    return out.astype(np.int32), int(closed.size)
