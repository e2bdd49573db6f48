"""The V-cycle network's hierarchy: the flags' stencil and its connectivity-aware coarsenings.

Level 0 is the pressure Laplacian of the flags on the grid (`StencilLevel`: the fused grid
smoother runs on it) and, beside it, the same operator as a graph over its unknowns (the cells
with a positive diagonal). Level l+1 has one unknown per connected component of level l's
unknowns inside each 2^m block of cells (m halved axes; `deepcd.kernels.aggregate`): cells on
the two sides of a one-cell wall, two droplets in one block, or two corridors of a maze never
share a coarse unknown. Each coarse operator is the exact Galerkin product P₀ᵀ A P₀ of the
piecewise-constant aggregation P₀, times `galerkin_scale` (½: on a uniform region P₀ᵀAP₀ is
twice the rediscretized operator at 2h — the known stiffness of unsmoothed aggregation), so
each level is symmetric positive (semi)definite exactly when the fine one is. The coarsest
level is solved exactly: a dense inverse with the constant of every closed region (an
all-Neumann component) pinned, which is the pseudo-inverse on the range.

The transfers are the aggregation smoothed along each halved axis by the level's own links,
P = S_0 S_1 S_2 P₀ with S_a = I − ω_a L̂_a, where L̂_a is the graph Laplacian of the level's
links along axis a with weights ŵ_ij = w_ij / max(w_max,i, w_max,j) (1 on the fine
Laplacian's FLUID–FLUID faces). ω = ¼ on a uniform grid is (bi/tri)linear interpolation; the
smoothing follows the links, so it never crosses a wall either. Constants are preserved
(S_a 1 = 1): no renormalization next to walls is needed.

Layout: grid fields are (B, 1, *grid); the hierarchy is built for Bf flag fields (Bf = 1 or
B) and stacks their unknowns (sample-major), so a node vector is (N, C) with N the stacked
unknowns and C = B // Bf columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from deepcd.kernels import aggregate as K
from deepcd.nn.stencil import GridLaplacian, stencil_apply

DENSE_MAX = 2048  # the coarsest level is solved exactly (dense) up to this many unknowns


@dataclass
class StencilLevel:
    """A stencil on the grid: diag (Bf, 1, *g), links[a] (Bf, 1, *g with axis a one shorter),
    active (Bf, 1, *g; 1 where the level has an unknown) and inv_sqrt_diag (0 off active
    cells); `cache` holds what an inference-mode network derives from the level once."""

    diag: torch.Tensor
    links: list[torch.Tensor]
    active: torch.Tensor
    inv_sqrt_diag: torch.Tensor
    cache: dict = field(default_factory=dict)

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


@dataclass
class GraphLevel:
    """One level as a graph over its unknowns (see `deepcd.kernels.aggregate`).

    Torch tensors (on the hierarchy's device): diag, inv_sqrt_diag (N, 1); rows, cols (nnz,)
    int64 and weight (nnz, 1) for the links both ways, by axis in `axis_edges[a]`
    = (rows, cols, nweight (nnz_a, 1), degree (N, 1)). agg (N,) int64: the unknown of the
    next level each node belongs to (-1: none; absent on the coarsest level). `host` keeps
    the numpy arrays the CPU kernels read (indptr, indices, weight, nweight, axis, diag, s,
    agg, mstart, members) in float64; `cache` their float32 copies.
    """

    n: int
    diag: torch.Tensor
    inv_sqrt_diag: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    weight: torch.Tensor
    axis_edges: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    coords: np.ndarray
    host: dict
    agg: torch.Tensor | None = None
    halved: tuple[bool, ...] | None = None
    cache: dict = field(default_factory=dict)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """A x for node vectors x (N, C)."""
        y = self.diag.to(x.dtype) * x
        return y.index_add(0, self.rows, self.weight.to(x.dtype) * x[self.cols], alpha=-1.0)

    def smooth_axis(self, x: torch.Tensor, a: int, omega: torch.Tensor) -> torch.Tensor:
        """S_a x = x − ω L̂_a x along axis a (symmetric)."""
        rows, cols, nw, deg = self.axis_edges[a]
        lap = (deg.to(x.dtype) * x).index_add(0, rows, nw.to(x.dtype) * x[cols], alpha=-1.0)
        return x - omega.to(x.dtype) * lap


@dataclass
class Hierarchy:
    """The grid level 0, its unknowns `index` (n0,) into the flattened (Bf·G) grid, the graph
    levels (levels[0] is level 0 as a graph), the columns C per node vector, and the dense
    inverse of the coarsest level (None when it has more than DENSE_MAX unknowns)."""

    grid: StencilLevel
    index: torch.Tensor
    levels: list[GraphLevel]
    columns: int
    coarse_inverse: torch.Tensor | None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.grid.shape

    def to_nodes(self, x: torch.Tensor) -> torch.Tensor:
        """Grid field (B, 1, *g) → level-0 node vector (n0, C)."""
        bf, c = self.grid.diag.shape[0], self.columns
        flat = x.reshape(bf, c, -1).transpose(1, 2).reshape(-1, c)
        return flat[self.index]

    def from_nodes(self, v: torch.Tensor) -> torch.Tensor:
        """Level-0 node vector (n0, C) → grid field (B, 1, *g), zero off the unknowns."""
        bf, c = self.grid.diag.shape[0], self.columns
        g = int(np.prod(self.shape))
        flat = torch.zeros((bf * g, c), dtype=v.dtype, device=v.device).index_copy(0, self.index, v)
        return flat.reshape(bf, g, c).transpose(1, 2).reshape(bf * c, 1, *self.shape)


def _view3(t: torch.Tensor, dim: int) -> np.ndarray:
    """A (1, 1, *g) tensor as a float64 3D array (2D grids as (1, nx, ny))."""
    a = t.detach().to("cpu", torch.float64).numpy()[0, 0]
    return a.reshape((1,) * (3 - dim) + a.shape)


def _host_levels(diag, links, plan3, scale: float) -> list[dict]:
    """The graph levels of one flag field, as numpy arrays (see `GraphLevel.host`)."""
    node, coords, d, indptr, indices, weight, axis = K.grid_graph(diag, *links)
    levels = [
        dict(node=node, coords=coords, d=d, indptr=indptr, indices=indices, w=weight, axis=axis)
    ]
    shape = np.array(diag.shape, dtype=np.int64)
    for halved in plan3:
        lv = levels[-1]
        h = np.array(halved, dtype=np.bool_)
        shape = np.where(h, (shape + 1) // 2, shape)
        agg, coords, d, indptr, indices, weight, axis = K.aggregate(
            lv["coords"], lv["d"], lv["indptr"], lv["indices"], lv["w"], lv["axis"], h, shape, scale
        )
        lv["agg"], lv["halved"] = agg, tuple(bool(v) for v in halved)
        levels.append(dict(coords=coords, d=d, indptr=indptr, indices=indices, w=weight, axis=axis))
        if len(d) == 0:
            break
    return levels


def _normalized(lv: dict) -> np.ndarray:
    """ŵ_ij = w_ij / max(w_max,i, w_max,j) for the CSR links of a level."""
    n, w = len(lv["d"]), lv["w"]
    rows = np.repeat(np.arange(n), np.diff(lv["indptr"]))
    wmax = np.zeros(n)
    np.maximum.at(wmax, rows, w)
    cols = lv["indices"].astype(np.int64)
    return w / np.maximum(np.maximum(wmax[rows], wmax[cols]), 1e-300)


def _merge(samples: list[list[dict]], depth: int) -> list[dict]:
    """Stack the unknowns of several flag fields level by level (block-diagonal)."""
    merged = []
    for lvl in range(depth):
        parts = [s[lvl] for s in samples]
        offs = np.cumsum([0] + [len(p["d"]) for p in parts])
        out = dict(
            coords=np.concatenate([p["coords"] for p in parts]),
            d=np.concatenate([p["d"] for p in parts]),
            w=np.concatenate([p["w"] for p in parts]),
            axis=np.concatenate([p["axis"] for p in parts]),
            indices=np.concatenate(
                [p["indices"].astype(np.int64) + o for p, o in zip(parts, offs, strict=False)]
            ).astype(np.int32 if offs[-1] < 2**31 else np.int64),
        )
        nnz = np.cumsum([0] + [len(p["w"]) for p in parts])
        out["indptr"] = np.concatenate(
            [parts[0]["indptr"][:1]]
            + [p["indptr"][1:] + z for p, z in zip(parts, nnz, strict=False)]
        )
        if lvl + 1 < depth:
            coarse = np.cumsum([0] + [len(s[lvl + 1]["d"]) for s in samples])
            out["agg"] = np.concatenate(
                [
                    np.where(p["agg"] >= 0, p["agg"] + o, -1)
                    for p, o in zip(parts, coarse, strict=False)
                ]
            )
            out["halved"] = parts[0]["halved"]
        merged.append(out)
    return merged


def _coarse_inverse(lv: dict) -> np.ndarray | None:
    """The dense inverse of a small level with each closed component's constant pinned
    (A + Σ_closed ᾱ 1_k 1_kᵀ)⁻¹, which is A's pseudo-inverse on its range."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    n = len(lv["d"])
    if n == 0 or n > DENSE_MAX:
        return None
    A = sp.csr_matrix((-lv["w"], lv["indices"], lv["indptr"]), shape=(n, n)).toarray()
    A[np.diag_indices(n)] += lv["d"]
    ncomp, label = connected_components(sp.csr_matrix(A != 0), directed=False)
    rowsum = A.sum(axis=1)
    for c in range(ncomp):
        members = np.flatnonzero(label == c)
        if np.all(np.abs(rowsum[members]) <= 1e-9 * lv["d"][members]):
            A[np.ix_(members, members)] += lv["d"][members].mean() / len(members)
    inv = np.linalg.inv(A)
    return 0.5 * (inv + inv.T)


def build_hierarchy(
    flags: torch.Tensor,
    boundary,
    plan: Sequence[Sequence[bool]],
    *,
    dtype: torch.dtype = torch.float32,
    galerkin_scale: float = 0.5,
    columns: int = 1,
) -> Hierarchy:
    """The hierarchy of cell flags (Bf, *grid) with their boundary, coarsening the axes of
    each entry of `plan` in turn (see the module docstring). `columns`: C = B // Bf of the
    node vectors the network will apply it to. Built on the host (numba), moved to flags'
    device."""
    dim = flags.ndim - 1
    device = flags.device
    lap = GridLaplacian(flags, boundary, dim=dim, device=device, dtype=dtype)
    grid = StencilLevel.from_parts(lap.diag, lap.links())
    plan3 = [(False,) * (3 - dim) + tuple(bool(v) for v in h) for h in plan]
    bf = flags.shape[0]
    samples = []
    for b in range(bf):
        diag = _view3(lap.diag[b : b + 1], dim)
        links = [_view3(w[b : b + 1], dim) for w in lap.links()]
        if dim == 2:
            links.insert(0, np.zeros((0, *diag.shape[1:])))
        samples.append(_host_levels(diag, links, plan3, galerkin_scale))
    depth = min(len(s) for s in samples)
    index = np.concatenate(
        [
            np.flatnonzero(s[0]["node"].ravel() >= 0) + b * s[0]["node"].size
            for b, s in enumerate(samples)
        ]
    )
    merged = _merge(samples, depth)
    levels = []
    for lv in merged:
        levels.append(_graph_level(lv, dim, device, dtype))
    inv = _coarse_inverse(merged[-1])
    return Hierarchy(
        grid=grid,
        index=torch.as_tensor(index, device=device),
        levels=levels,
        columns=int(columns),
        coarse_inverse=None if inv is None else torch.as_tensor(inv, device=device, dtype=dtype),
    )


def _graph_level(lv: dict, dim: int, device, dtype) -> GraphLevel:
    n = len(lv["d"])
    nweight = _normalized(lv) if n else np.zeros(0)
    rows = np.repeat(np.arange(n), np.diff(lv["indptr"]))
    cols = lv["indices"].astype(np.int64)
    s = np.where(lv["d"] > 0, 1.0 / np.sqrt(np.maximum(lv["d"], 1e-300)), 0.0)

    def t(a, dt=dtype):
        return torch.as_tensor(np.ascontiguousarray(a), device=device, dtype=dt)

    axis_edges = []
    for a in range(3 - dim, 3):  # grid axes, in the 3D numbering of the host arrays
        on = lv["axis"] == a
        deg = np.bincount(rows[on], weights=nweight[on], minlength=n)
        axis_edges.append(
            (
                t(rows[on], torch.int64),
                t(cols[on], torch.int64),
                t(nweight[on])[:, None],
                t(deg)[:, None],
            )
        )
    host = dict(
        indptr=lv["indptr"].astype(np.int64),
        indices=lv["indices"].astype(np.int32),
        weight=lv["w"],
        nweight=nweight,
        axis=(lv["axis"] - (3 - dim)).astype(np.int8),  # in the grid's own axis numbering
        diag=lv["d"],
        s=s,
    )
    agg = None
    if "agg" in lv:
        host["agg"] = lv["agg"].astype(np.int64)
        m = int(lv["agg"].max()) + 1 if n and lv["agg"].max() >= 0 else 0
        host["mstart"], host["members"] = K.members_of(host["agg"], m)
        agg = t(lv["agg"], torch.int64)
    halved = lv.get("halved")
    return GraphLevel(
        n=n,
        diag=t(lv["d"])[:, None],
        inv_sqrt_diag=t(s)[:, None],
        rows=t(rows, torch.int64),
        cols=t(cols, torch.int64),
        weight=t(lv["w"])[:, None],
        axis_edges=axis_edges,
        coords=lv["coords"],
        host=host,
        agg=agg,
        halved=None if halved is None else tuple(halved[3 - dim :]),
    )


def host_arrays(level: GraphLevel, dtype: np.dtype) -> dict:
    """The level's CPU-kernel arrays in `dtype` (cached)."""
    key = np.dtype(dtype).str
    if key not in level.cache:
        h = level.host
        level.cache[key] = {
            k: (v.astype(dtype) if k in ("weight", "nweight", "diag", "s") else v)
            for k, v in h.items()
        }
    return level.cache[key]


def restrict(level: GraphLevel, coarse_n: int, x: torch.Tensor) -> torch.Tensor:
    """P₀ᵀ x: sum each node vector (N, C) over the members of the coarse unknowns."""
    agg = level.agg
    ok = agg >= 0
    out = torch.zeros((coarse_n, x.shape[1]), dtype=x.dtype, device=x.device)
    return out.index_add(0, agg[ok], x[ok])


def prolong(level: GraphLevel, xc: torch.Tensor) -> torch.Tensor:
    """P₀ xc: each node takes its coarse unknown's value (0 without one)."""
    agg = level.agg
    ok = (agg >= 0).to(xc.dtype)[:, None]
    return xc[agg.clamp_min(0)] * ok
