"""Stencil hierarchies for multigrid-shaped networks: Galerkin coarsening on the grid.

A level holds a 5/7-point stencil with variable weights on a (possibly coarsened) cell grid:
(A x)[c] = diag[c]·x[c] − Σ_faces w·x[neighbour] (see `deepcd.nn.stencil.stencil_apply`).
Level 0 is the pressure Laplacian of the flags; level l+1 is the exact Galerkin product
P₀ᵀ A_l P₀ for the piecewise-constant prolongation P₀ that copies a coarse cell to its 2^m
children (m halved axes), computed once per flag field as a stencil again:

  coarse diag  = Σ children's diag − 2 · (fluid–fluid faces inside the block)
  coarse face  = number (sum of weights) of fine faces crossing it

so every FLUID/SOLID/AIR configuration — free surfaces, thin walls, closed regions — is
coarsened without any flag-merging rule, and each coarse operator is symmetric positive
(semi)definite exactly when the fine one is. A coarse cell is "active" when any child is FLUID.
On a uniform region P₀ᵀAP₀ is 2^(m−1) times the coarse Laplacian while the rediscretized
operator at spacing 2h is 2^(m−2) times it: piecewise-constant Galerkin is twice too stiff
(the known weakness of unsmoothed aggregation), so multigrid uses `galerkin_scale` = ½.

Shapes: fields (B, 1, *grid); the level tensors have a leading batch axis Bf (1 or B).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from deepcd.nn.stencil import GridLaplacian, stencil_apply


@dataclass
class StencilLevel:
    """One level: diag (Bf, 1, *g), links[a] (Bf, 1, *g with axis a one shorter), active
    (Bf, 1, *g; 1 where the level has an unknown) and inv_sqrt_diag (0 off active cells);
    `cache` holds what an inference-mode network derives from the level once."""

    diag: torch.Tensor
    links: list[torch.Tensor]
    active: torch.Tensor
    inv_sqrt_diag: torch.Tensor
    cache: dict = field(default_factory=dict)  # per-level values a fixed network derives

    @classmethod
    def from_parts(cls, diag: torch.Tensor, links: list[torch.Tensor]) -> StencilLevel:
        diag = diag.contiguous()
        links = [w.contiguous() for w in links]  # numba kernels read them as plain arrays
        positive = diag > 0
        inv = torch.where(positive, diag.clamp_min(1e-30).rsqrt(), torch.zeros_like(diag))
        return cls(diag, links, positive.to(diag.dtype), inv)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.diag.shape[2:])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """A_l x for fields (B, C, *g)."""
        return stencil_apply(x, self.diag, self.links)


def _pad_high(t: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Zero-pad the spatial axes of t (B, C, *g) at their high end up to `sizes`."""
    pad: list[int] = []
    for n, target in zip(reversed(t.shape[2:]), reversed(sizes), strict=True):
        pad += [0, target - n]
    return F.pad(t, pad) if any(pad) else t


def _sum_pairs(t: torch.Tensor, halved: Sequence[bool], skip: int | None = None) -> torch.Tensor:
    """Sum adjacent cell pairs along every halved axis except `skip` (lengths already even)."""
    for a, on in enumerate(halved):
        if on and a != skip:
            ax = a + 2
            t = t.unflatten(ax, (t.shape[ax] // 2, 2)).sum(ax + 1)
    return t


def _every_other(t: torch.Tensor, ax: int, start: int) -> torch.Tensor:
    index = [slice(None)] * t.ndim
    index[ax] = slice(start, None, 2)
    return t[tuple(index)]


def galerkin_coarsen(
    level: StencilLevel, halved: Sequence[bool], scale: float = 1.0
) -> StencilLevel:
    """The level scale·P₀ᵀ A P₀ below `level`, halving the flagged axes (odd ones padded by a
    cell with no unknown at the high end)."""
    sizes = [n + (n % 2 if on else 0) for n, on in zip(level.shape, halved, strict=True)]
    diag = _sum_pairs(_pad_high(level.diag, sizes), halved)
    links = []
    for a, link in enumerate(level.links):
        target = list(sizes)
        if not halved[a]:
            target[a] = level.shape[a] - 1
            links.append(_sum_pairs(_pad_high(link, target), halved, skip=a))
            continue
        # faces along a halved axis: even ones lie inside a coarse cell, odd ones cross to the
        # next coarse cell (the last odd one, if any, would leave the grid and is zero)
        link = _pad_high(link, target)
        inside = _sum_pairs(_every_other(link, a + 2, 0), halved, skip=a)
        crossing = _sum_pairs(_every_other(link, a + 2, 1), halved, skip=a)
        diag = diag - 2 * inside
        links.append(crossing.narrow(a + 2, 0, crossing.shape[a + 2] - 1))
    if scale != 1.0:
        diag, links = diag * scale, [w * scale for w in links]
    return StencilLevel.from_parts(diag, links)


def build_hierarchy(
    flags: torch.Tensor,
    boundary,
    plan: Sequence[Sequence[bool]],
    *,
    dtype: torch.dtype = torch.float32,
    galerkin_scale: float = 1.0,
) -> list[StencilLevel]:
    """Level 0 from cell flags (Bf, *grid) and their boundary, then one coarse level per
    entry of `plan` (which axes each coarsening halves): galerkin_scale·P₀ᵀ A P₀."""
    dim = flags.ndim - 1
    lap = GridLaplacian(flags, boundary, dim=dim, device=flags.device, dtype=dtype)
    levels = [StencilLevel.from_parts(lap.diag, lap.links())]
    for halved in plan:
        levels.append(galerkin_coarsen(levels[-1], halved, galerkin_scale))
    return levels
