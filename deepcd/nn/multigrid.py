"""The V-cycle network's hierarchy: the flags' stencil and its connectivity-aware coarsenings.

Level 0 is the pressure Laplacian of the flags on the grid (`StencilLevel`: the fused grid
smoother runs on it) and, beside it, the same operator as a graph over its unknowns (the cells
with a positive diagonal). Level l+1 has one unknown per connected component of level l's
unknowns inside each 2^m block of cells (m halved axes; `deepcd.kernels.aggregate`): cells on
the two sides of a one-cell wall, two droplets in one block, or two corridors of a maze never
share a coarse unknown; only strong links join (w_ij ≥ STRENGTH·max(w_max,i, w_max,j)), so a
1000× density jump splits a block like a wall. A component of one node (a corridor's corner
cut off by the block grid; `MERGE_BELOW`) joins the component its strongest strong link leads
to, across blocks: on mazes the coarse levels then shrink like the corridors, not like the
block grid (maze 1024²: 50 → 24 iterations). Each coarse operator is the exact Galerkin
product P₀ᵀ A P₀ of the
piecewise-constant aggregation P₀, times `galerkin_scale` (½: on a uniform region P₀ᵀAP₀ is
twice the rediscretized operator at 2h — the known stiffness of unsmoothed aggregation; on
a level that coarsens like a maze's corridors, the smaller factor `level_scale` gives), so
each level is symmetric positive (semi)definite exactly when the fine one is. The coarsest
level is solved exactly: a dense inverse with the constant of every closed region (an
all-Neumann component) pinned, which is the pseudo-inverse on the range.

The transfers are the aggregation smoothed along each halved axis by the level's own links,
P = S_0 S_1 S_2 P₀ with S_a = I − ω_a L̂_a, where L̂_a is the graph Laplacian of the level's
links along axis a with weights ŵ_ij = w_ij / max(w_max,i, w_max,j) (1 on the fine
Laplacian's FLUID–FLUID faces). ω = ¼ on a uniform grid is (bi/tri)linear interpolation; the
smoothing follows the links, so it never crosses a wall either. Constants are preserved
(S_a 1 = 1): no renormalization next to walls is needed.

CPU inference runs a graph level on the grid kernels where its graph is a stencil on its
block grid, save a few links between cells that are no face neighbours, kept beside it
(`grid_form`, `ExtraLinks`: level 1 of open scenes and of most scenes with obstacles).

Layout: grid fields are (B, 1, *grid); the hierarchy is built for Bf flag fields (Bf = 1 or
B) and stacks their unknowns (sample-major), so a node vector is (N, C) with N the stacked
unknowns and C = B // Bf columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from deepcd.kernels import aggregate as K
from deepcd.kernels.vector import gather, scatter
from deepcd.nn.stencil import GridLaplacian, stencil_apply

DENSE_MAX = 2048  # the coarsest level is solved exactly (dense) up to this many unknowns
MERGE_BELOW = 2  # block components with fewer nodes join a neighbour's (0: never)
STRENGTH = 0.02  # a link joins a coarse unknown when w_ij ≥ STRENGTH·max(w_max,i, w_max,j)
CORRIDOR_BELOW = 0.45  # `level_scale`: levels whose aggregates are > 2.2 cells across
SCALE_MIN = 0.3  # `level_scale`: the smallest Galerkin factor
GRID_FORM_MIN = 1 << 13  # `grid_form`: graph levels this large may run on the grid
# (`benchmarks/grid-form-min`: smoke-obstacles' 32k level 2 on the grid, one V-cycle at 64³
# 7.29 -> 6.67 ms, at 128³ 44.9 -> 43.2 ms; a bound of 2,048 put 32³ problems' 4k levels on
# the grid, 1.2x slower)
# `grid_form`: at most this share of a level's links off its grid (`ExtraLinks`; level 1 of
# smoke-obstacles seed 1, bunny and pool at 128³: 0.05-0.1 %)
GRID_FORM_EXTRA_MAX = 0.02


@dataclass
class StencilLevel:
    """A stencil on the grid: diag (Bf, 1, *g), links[a] (Bf, 1, *g with axis a one shorter)
    and inv_sqrt_diag (0 off active cells, those with diag > 0); `cache` holds what an
    inference-mode network derives from the level once."""

    diag: torch.Tensor
    links: list[torch.Tensor]
    inv_sqrt_diag: torch.Tensor
    cache: dict = field(default_factory=dict)
    extra: ExtraLinks | None = None  # links that are no face of the grid (`grid_form`)

    @classmethod
    def from_parts(cls, diag: torch.Tensor, links: list[torch.Tensor]) -> StencilLevel:
        diag = diag.contiguous()
        links = [w.contiguous() for w in links]  # numba kernels read them as plain arrays
        positive = diag > 0
        # in place: at 256³ each temporary is 64 MiB of fresh pages (~7 µs each on a VM)
        inv = diag.clamp_min(1e-30).rsqrt_().masked_fill_(~positive, 0.0)
        return cls(diag, links, inv)

    @property
    def active(self) -> torch.Tensor:
        """(Bf, 1, *g) in diag's dtype: 1 where the level has an unknown, else 0 — made on
        first use (CPU inference never reads it: one grid field less to hold)."""
        if "active" not in self.cache:
            self.cache["active"] = (self.diag > 0).to(self.diag.dtype)
        return self.cache["active"]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.diag.shape[2:])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """A_l x for fields (B, C, *g)."""
        out = stencil_apply(x, self.diag, self.links)
        if self.extra is not None:
            out = out - self.extra.matvec(x)
        return out


@dataclass
class ExtraLinks:
    """The links of a grid-form level (`grid_form`, one field) that are no face of its grid
    along their axis — a one-node component that joined a neighbouring block's
    (`MERGE_BELOW`) links that block's unknown to its own old neighbours — as CSR over the
    cells that have them: rows (k,) and cols (nnz,) flat grid cells (int64), ptr (k + 1,);
    per link the weight w (A_ij = −w), w / √(d_i d_j) (the smoother's D^-½ A D^-½), the
    normalized ŵ of the transfers and the grid axis (the level's own numbering), float64 /
    int8. Both directions of each link are listed."""

    rows: np.ndarray
    ptr: np.ndarray
    cols: np.ndarray
    weight: np.ndarray
    snorm: np.ndarray
    nweight: np.ndarray
    axis: np.ndarray
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def nnz(self) -> int:
        return len(self.cols)

    def matvec(self, x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
        """Σ_j w_ij x_j at each row (0 elsewhere), for fields x (B, C, *g): what the links
        subtract from the stencil's A x; with axis, Σ_j ŵ_ij x_j over the links along that
        grid axis, what they subtract from a transfer smoothing's L̂_a x."""
        rows = np.repeat(self.rows, np.diff(self.ptr))
        on = slice(None) if axis is None else self.axis == axis
        w = self.weight if axis is None else self.nweight
        flat = x.reshape(*x.shape[:2], -1)
        index = torch.as_tensor(rows[on], device=x.device)
        cols = torch.as_tensor(self.cols[on], device=x.device)
        w = torch.as_tensor(w[on], dtype=x.dtype, device=x.device)
        out = torch.zeros_like(flat).index_add_(2, index, flat[..., cols] * w)
        return out.reshape(x.shape)

    def host(self, dtype: np.dtype) -> tuple:
        """(rows, ptr, cols, w, ŝw, ŵ, axis) as the kernels (`deepcd.kernels.extra_links`)
        take them, the weights in dtype (cached): ŝw = w_ij / √(d_i d_j), the links of the
        smoother's normalized operator D^-½ A D^-½."""
        key = np.dtype(dtype).str
        if key not in self.cache:
            w = (self.weight, self.snorm, self.nweight)
            self.cache[key] = (self.rows, self.ptr, self.cols, *(a.astype(dtype) for a in w))
            self.cache[key] += (self.axis,)
        return self.cache[key]


class GraphLevel:
    """One level as a graph over its unknowns (see `deepcd.kernels.aggregate`).

    `host` holds the numpy arrays (float64; the CPU kernels read them, `host_arrays` gives
    float32 copies): indptr, indices, weight, nweight (the normalized ŵ), axis (grid
    numbering), diag, s (diag^-½), and, below the coarsest level, agg (the unknown of the next
    level each node belongs to, -1: none) with mstart/members (its inverse, CSR). The torch
    forms used by training and the GPU are built on first use, on `device` in `dtype`:
    diag, inv_sqrt_diag (N, 1); rows, cols (nnz,) int64 and weight (nnz, 1) for the links
    both ways; `axis_edges[a]` = (rows, cols, ŵ (nnz_a, 1), degree (N, 1)); agg (N,).
    """

    def __init__(self, host: dict | Callable[[], dict], halved, dim: int, device, dtype, n=None):
        """host: the arrays, or (with n, the number of unknowns) a function that makes them
        on first use (level 0 of a grid hierarchy: only a graph fine level needs them)."""
        self._host, self.dim = host, dim
        self.halved = None if halved is None else tuple(halved)
        self.n = len(host["diag"]) if n is None else int(n)
        self.device, self.dtype = device, dtype
        self.cache: dict = {}

    @property
    def host(self) -> dict:
        if callable(self._host):
            self._host = self._host()
        return self._host

    def host_full(self) -> dict:
        """`host` with the arrays only transfers need (ŵ, members), derived on first use
        (level 0's transfers run on the grid, so its are never built in CPU inference)."""
        h = self.host
        if "nweight" not in h:
            lv = dict(d=h["diag"], w=h["weight"], indptr=h["indptr"], indices=h["indices"])
            h["nweight"] = _normalized(lv)
        if "agg" in h and "members" not in h:
            m = int(h["agg"].max()) + 1 if len(h["agg"]) else 0
            h["mstart"], h["members"] = K.members_of(h["agg"], max(m, 0))
        return h

    def _torch(self) -> dict:
        if "torch" not in self.cache:
            h, n = self.host_full(), self.n

            def t(a, dt=self.dtype):
                return torch.as_tensor(np.ascontiguousarray(a), device=self.device, dtype=dt)

            rows = np.repeat(np.arange(n), np.diff(h["indptr"]))
            cols = h["indices"].astype(np.int64)
            edges = []
            for a in range(self.dim):
                on = h["axis"] == a
                deg = np.bincount(rows[on], weights=h["nweight"][on], minlength=n)
                edges.append(
                    (
                        t(rows[on], torch.int64),
                        t(cols[on], torch.int64),
                        t(h["nweight"][on])[:, None],
                        t(deg)[:, None],
                    )
                )
            self.cache["torch"] = dict(
                diag=t(h["diag"])[:, None],
                inv_sqrt_diag=t(h["s"])[:, None],
                rows=t(rows, torch.int64),
                cols=t(cols, torch.int64),
                weight=t(h["weight"])[:, None],
                axis_edges=edges,
                agg=t(h["agg"], torch.int64) if "agg" in h else None,
            )
        return self.cache["torch"]

    diag = property(lambda self: self._torch()["diag"])

    @property
    def inv_sqrt_diag(self) -> torch.Tensor:
        """diag^-½ (N, 1), 0 off the unknowns — without the link tensors `_torch` builds
        (CPU inference asks for this one alone, to scale its local weights)."""
        if "torch" in self.cache:
            return self.cache["torch"]["inv_sqrt_diag"]
        if "inv_sqrt_diag" not in self.cache:
            s = np.ascontiguousarray(self.host["s"])
            self.cache["inv_sqrt_diag"] = torch.as_tensor(s, device=self.device, dtype=self.dtype)[
                :, None
            ]
        return self.cache["inv_sqrt_diag"]

    rows = property(lambda self: self._torch()["rows"])
    cols = property(lambda self: self._torch()["cols"])
    weight = property(lambda self: self._torch()["weight"])
    axis_edges = property(lambda self: self._torch()["axis_edges"])
    agg = property(lambda self: self._torch()["agg"])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """A x for node vectors x (N, C)."""
        y = self.diag.to(x.dtype) * x
        return y.index_add(0, self.rows, self.weight.to(x.dtype) * x[self.cols], alpha=-1.0)

    def smooth_axis(self, x: torch.Tensor, a: int, omega: torch.Tensor) -> torch.Tensor:
        """S_a x = x − ω L̂_a x along axis a (symmetric); ω one number, or one per link of
        the axis (nnz_a, 1) in `axis_edges` order (symmetric: the same both ways)."""
        rows, cols, nw, deg = self.axis_edges[a]
        if omega.ndim == 2:  # per link: L̂_a with weights ω_ij ŵ_ij
            w = nw.to(x.dtype) * omega.to(x.dtype)
            deg = torch.zeros((self.n, 1), dtype=x.dtype, device=x.device).index_add(0, rows, w)
            lap = (deg * x).index_add(0, rows, w * x[cols], alpha=-1.0)
            return x - lap
        lap = (deg.to(x.dtype) * x).index_add(0, rows, nw.to(x.dtype) * x[cols], alpha=-1.0)
        return x - omega.to(x.dtype) * lap


@dataclass
class Hierarchy:
    """The grid level 0, its unknowns `index` (n0,) into the flattened (Bf·G) grid (int32
    where it fits, else int64), the graph levels (levels[0] is level 0 as a graph), the
    columns C per node vector, and the dense inverse of the coarsest level (None when it has
    more than DENSE_MAX unknowns)."""

    grid: StencilLevel
    index: torch.Tensor
    levels: list[GraphLevel]
    columns: int
    coarse_inverse: torch.Tensor | None
    grid_agg: torch.Tensor | None = None  # (Bf·G,) int32/64: level-1 unknown of each cell, or -1
    # the depth of `grid` in the hierarchy this one is part of (`grid_form`: a graph level
    # run on its grid), which the network's per-level parameters are indexed by
    offset: int = 0
    # one field: () -> its float64 stencil (diag, [lx, ly, lz]) in 3D numbering (the arrays
    # `deepcd.kernels.aggregate.grid_graph` takes), made on each call; None for a stack
    host_stencil: Callable[[], tuple] | None = field(default=None, repr=False)
    _members: tuple | None = field(default=None, repr=False)  # `grid_members`, on first use
    _grid_axis: list | None = field(default=None, repr=False)  # `grid_axis`, on first use
    _grid_faces: list | None = field(default=None, repr=False)  # `grid_axis_faces`
    _agg32: np.ndarray | None = field(default=None, repr=False)  # `grid_map`, on first use
    _index_np: np.ndarray | None = field(default=None, repr=False)  # `index_host`
    _index_long: torch.Tensor | None = field(default=None, repr=False)  # `index_long`
    _forms: dict = field(default_factory=dict, repr=False)  # `grid_form`, per depth

    @property
    def shape(self) -> tuple[int, ...]:
        return self.grid.shape

    @property
    def grid_axis(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per axis (ŵ, degree) of level 0 on the grid (`_grid_axis_weights`), made on first
        use: a hierarchy whose level 0 runs on its graph never reads them."""
        if self._grid_axis is None:
            pairs = _grid_axis_weights(self.grid)
            if self._grid_faces is not None:  # the ŵ already held (the same numbers)
                pairs = [(w, d) for w, (_, d) in zip(self._grid_faces, pairs, strict=True)]
            self._grid_axis = pairs
        return self._grid_axis

    @property
    def grid_axis_faces(self) -> list[torch.Tensor]:
        """Per axis ŵ of level 0 on the grid, without the degrees `grid_axis` pairs them with
        (the fused transfers and the local weights read only these: at 256³ the three degree
        fields would be 192 MiB more to hold), made on first use."""
        if self._grid_axis is not None:
            return [w for w, _ in self._grid_axis]
        if self._grid_faces is None:
            self._grid_faces = [w for w, _ in _grid_axis_weights(self.grid, degrees=False)]
        return self._grid_faces

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """Grid field (B, 1, *g) → (Bf·G, C): cells sample-major, columns last."""
        bf, c = self.grid.diag.shape[0], self.columns
        return x.reshape(bf, c, -1).transpose(1, 2).reshape(-1, c)

    def smooth_grid_axis(self, x: torch.Tensor, a: int, omega: torch.Tensor) -> torch.Tensor:
        """S_a x on the grid (fields (B, 1, *g)): level 0's `GraphLevel.smooth_axis`."""
        nlink, deg = self.grid_axis[a]
        ax, n = a + 2, x.shape[a + 2]
        lap = deg.to(x.dtype) * x
        if n > 1:
            nlink = nlink.to(x.dtype)
            lap.narrow(ax, 0, n - 1).addcmul_(nlink, x.narrow(ax, 1, n - 1), value=-1.0)
            lap.narrow(ax, 1, n - 1).addcmul_(nlink, x.narrow(ax, 0, n - 1), value=-1.0)
        if self.grid.extra is not None:  # its links along a off the grid
            lap = lap - self.grid.extra.matvec(x, axis=a)
        return x - omega.to(x.dtype) * lap

    def restrict_grid(self, x: torch.Tensor) -> torch.Tensor:
        """P₀ᵀ x from a grid field (B, 1, *g) to level 1's node vector (N1, C)."""
        flat = self._flat(x)
        ok = self.grid_agg >= 0
        out = torch.zeros((self.levels[1].n, flat.shape[1]), dtype=x.dtype, device=x.device)
        return out.index_add(0, self.grid_agg[ok], flat[ok])

    def prolong_grid(self, xc: torch.Tensor) -> torch.Tensor:
        """P₀ xc from level 1's node vector (N1, C) to a grid field (B, 1, *g)."""
        bf, c = self.grid.diag.shape[0], self.columns
        ok = (self.grid_agg >= 0).to(xc.dtype)[:, None]
        flat = xc[self.grid_agg.clamp_min(0)] * ok
        return flat.reshape(bf, -1, c).transpose(1, 2).reshape(bf * c, 1, *self.shape)

    def grid_members(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mstart, members, agg) over the flattened grid cells for the CPU kernels."""
        if self._members is None:
            agg = self.grid_agg.cpu().numpy()
            self._members = (*K.members_of(agg, self.levels[1].n), self.grid_map())
        return self._members

    def grid_map(self) -> np.ndarray:
        """`grid_agg` as the CPU kernels read it: (cells,) int32 numpy, cached (the fused
        restriction scatters through it and needs no members)."""
        if self._agg32 is None:  # int32 already (`_cell_index_dtype`): a view
            self._agg32 = self.grid_agg.cpu().numpy().astype(np.int32, copy=False)
        return self._agg32

    def index_long(self) -> torch.Tensor:
        """`index` in int64, as torch's index_copy takes it (cached; `index` itself is int32
        where it fits: at 256³ an int64 copy held for the solve was 128 MiB)."""
        if self._index_long is None:
            self._index_long = self.index.long()
        return self._index_long

    def index_host(self) -> np.ndarray:
        """`index` as a numpy array (cached): what the CPU conversions gather through."""
        if self._index_np is None:
            self._index_np = np.ascontiguousarray(self.index.cpu().numpy())
        return self._index_np

    def _host_single(self, t: torch.Tensor) -> bool:
        """One field, one column, float32/64 on the CPU and no gradient: numba converts."""
        return (
            self.grid.diag.shape[0] == 1
            and self.columns == 1
            and t.device.type == "cpu"
            and t.dtype in (torch.float32, torch.float64)
            and not (torch.is_grad_enabled() and t.requires_grad)
        )

    def to_nodes(self, x: torch.Tensor) -> torch.Tensor:
        """Grid field (B, 1, *g) → level-0 node vector (n0, C)."""
        if self._host_single(x):
            index = self.index_host()
            out = np.empty(index.size, dtype=x.numpy().dtype)
            gather(x.contiguous().numpy().reshape(-1), index, out)
            return torch.from_numpy(out)[:, None]
        return self._flat(x)[self.index]

    def from_nodes(self, v: torch.Tensor) -> torch.Tensor:
        """Level-0 node vector (n0, C) → grid field (B, 1, *g), zero off the unknowns."""
        bf, c = self.grid.diag.shape[0], self.columns
        g = int(np.prod(self.shape))
        if self._host_single(v):
            field = np.zeros(g, dtype=v.numpy().dtype)
            scatter(v.contiguous().numpy().reshape(-1), self.index_host(), field)
            return torch.from_numpy(field).reshape(1, 1, *self.shape)
        flat = torch.zeros((bf * g, c), dtype=v.dtype, device=v.device)
        flat = flat.index_copy(0, self.index_long(), v)
        return flat.reshape(bf, g, c).transpose(1, 2).reshape(bf * c, 1, *self.shape)


def _host_levels(
    diag, links, plan3, scale: float, strength: float = STRENGTH, merge_below: int = MERGE_BELOW
) -> list[dict]:
    """The graph levels of one flag field, as numpy arrays (see `GraphLevel.host`)."""
    node, coords, d, indptr, indices, weight, axis = K.grid_graph(diag, *links)
    level0 = dict(
        node=node, coords=coords, d=d, indptr=indptr, indices=indices, w=weight, axis=axis
    )
    shape = np.array(diag.shape, dtype=np.int64)
    return coarsen([level0], shape, plan3, scale, strength, merge_below)


def coarsen(
    levels: list[dict],
    shape: np.ndarray,
    plan3,
    scale: float,
    strength: float = STRENGTH,
    merge_below: int = MERGE_BELOW,
) -> list[dict]:
    """Coarsen the last of `levels` (graph-level dicts: coords (n, 3) int32 cells of a grid of
    `shape` (3,), d, indptr, indices, w, axis) by the remaining `plan3` (per step the halved
    axes, 3D numbering), then pairwise while it has more than DENSE_MAX unknowns; appends the
    coarse levels (setting each fine level's agg and halved) and returns `levels`. The serial
    hierarchy calls it from level 0; `deepcd.petsc` from its gathered coarse levels."""
    shape = np.array(shape, dtype=np.int64)
    plan3 = list(plan3)
    step = 0
    while True:
        pairwise = False
        if step < len(plan3):
            halved = plan3[step]
        elif len(levels[-1]["d"]) > DENSE_MAX:
            # too many unknowns left for the exact coarsest solve (a maze: every block holds
            # separate corridors): keep coarsening past the geometric plan by pairing nodes
            # on the graph (a bigger block would merge a whole tangle into one unknown)
            halved, pairwise = (False, False, False), True
        else:
            break
        step += 1
        lv = levels[-1]
        h = np.array(halved, dtype=np.bool_)
        shape = np.where(h, (shape + 1) // 2, shape)
        with K.serial_if_small(len(lv["d"])):
            coarse = K.aggregate(
                lv["coords"],
                lv["d"],
                lv["indptr"],
                lv["indices"],
                lv["w"],
                lv["axis"],
                h,
                shape,
                scale,
                pairwise,
                strength,
                0 if pairwise else merge_below,
            )
        agg, coords, d, indptr, indices, weight, axis = coarse
        if not pairwise and len(d):
            factor = level_scale(len(lv["d"]), len(d), len(lv["indices"]), scale) / scale
            if factor != 1.0:
                weight, d = weight * factor, d * factor
        if len(d) == 0 or (pairwise and len(d) > 0.9 * len(lv["d"])):
            # nothing left (every region closed: the last level is solved exactly with its
            # constants pinned) or no progress: stop at what there is
            break
        lv["agg"], lv["halved"] = agg, tuple(bool(v) for v in halved)
        levels.append(dict(coords=coords, d=d, indptr=indptr, indices=indices, w=weight, axis=axis))
    return levels


def level_scale(n_fine: int, n_coarse: int, links: int, base: float) -> float:
    """The factor of one block coarsening's Galerkin product P₀ᵀAP₀: `base` (½) unless the
    level coarsens like a corridor (CORRIDOR_BELOW).

    On a uniform d-dimensional region, aggregates m cells across make P₀ᵀAP₀ m times the
    operator rediscretized at spacing m·h, so the right factor is 1/m: ½ for 2^d blocks. A
    maze's corridors are 1D chains, which the block grid cuts into pieces of 2–3 cells, so ½
    leaves their coarse levels too stiff. m is estimated from the level: the coarsening ratio
    n_fine / n_coarse = m^d_eff, with d_eff = links / (2·n_fine) (a grid cell has 2d links
    counted both ways, a corridor cell 2). Grid-like levels (1/m ≥ CORRIDOR_BELOW) keep `base`
    exactly; the others take 1/m, at least SCALE_MIN (`benchmarks/hard-geometry`: maze 128³
    27 → 20 iterations, 2D 1024² 24 → 17; the open scenes keep ½)."""
    if n_fine == 0 or n_coarse == 0:
        return base
    d_eff = max(links / (2.0 * n_fine), 1.0)
    inv_m = (n_fine / n_coarse) ** (-1.0 / d_eff)
    if inv_m >= CORRIDOR_BELOW:
        return base
    return float(min(base, max(inv_m, SCALE_MIN)))


def _normalized(lv: dict) -> np.ndarray:
    """ŵ_ij = w_ij / max(w_max,i, w_max,j) for the CSR links of a level
    (`deepcd.kernels.normalize.largest_normalized_links`)."""
    from deepcd.kernels.normalize import largest_normalized_links

    w = np.ascontiguousarray(lv["w"], dtype=np.float64)
    out = np.empty(len(w))
    if len(w):
        largest_normalized_links(lv["indptr"], lv["indices"], w, out)
    return out


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
    (A + Σ_closed ᾱ 1_k 1_kᵀ)⁻¹, which is A's pseudo-inverse on its range: float64 (n, n),
    symmetric, or None above DENSE_MAX unknowns."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    n = len(lv["d"])
    if n == 0 or n > DENSE_MAX:
        return None
    links = sp.csr_matrix((-lv["w"], lv["indices"], lv["indptr"]), shape=(n, n))
    links.eliminate_zeros()
    ncomp, label = connected_components(links, directed=False)
    A = links.toarray()
    A[np.diag_indices(n)] += lv["d"]
    rowsum = A.sum(axis=1)
    for c in range(ncomp):
        members = np.flatnonzero(label == c)
        if np.all(np.abs(rowsum[members]) <= 1e-9 * lv["d"][members]):
            A[np.ix_(members, members)] += lv["d"][members].mean() / len(members)
    # Through the Cholesky factor: 2.5-3x faster than LU's inverse at 645-1585 unknowns (a
    # maze's coarsest levels) on 2 cores; LU where roundoff leaves the pinned matrix not
    # numerically positive definite.
    factor, info = torch.linalg.cholesky_ex(torch.from_numpy(A))
    if int(info) == 0:
        return torch.cholesky_inverse(factor).numpy()  # symmetric as computed
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
    operator: GridLaplacian | None = None,
    strength: float | None = None,
    merge_below: int | None = None,
) -> Hierarchy:
    """The hierarchy of cell flags (Bf, *grid) with their boundary, coarsening the axes of
    each entry of `plan` in turn (see the module docstring). `columns`: C = B // Bf of the
    node vectors the network will apply it to. `operator`: level 0's stencil when it is not
    the flags' Laplacian (a variable-coefficient `GridLaplacian` of these flags). Built on
    the host (numba), moved to flags' device."""
    dim = flags.ndim - 1
    device = flags.device
    lap = operator
    if lap is None:
        lap = GridLaplacian(flags, boundary, dim=dim, device=device, dtype=dtype)
    elif tuple(lap.flags.shape[2:]) != tuple(flags.shape[1:]):
        raise ValueError("the operator's grid does not match the flags'")
    grid = StencilLevel.from_parts(lap.diag.to(dtype), [w.to(dtype) for w in lap.links()])
    plan3 = [(False,) * (3 - dim) + tuple(bool(v) for v in h) for h in plan]
    bf = flags.shape[0]
    strength = STRENGTH if strength is None else strength
    merge_below = MERGE_BELOW if merge_below is None else merge_below

    def host_stencil(b: int, native: bool = False):
        """Field b's stencil as numpy grid arrays (`grid_views`) in float64 or, native, in
        the stencil's own dtype: no copy on the CPU (the level-1 aggregation reads float32
        faces into float64 sums exactly; a float64 copy was 0.5 GiB of fresh pages at 256³)."""
        from deepcd.nn.fastpath import grid_views

        def host(t: torch.Tensor) -> torch.Tensor:
            t = t[b : b + 1].detach()
            return t.cpu() if native else t.to("cpu", torch.float64)

        return grid_views(host(lap.diag), [host(w) for w in lap.links()])

    merged = None
    if bf == 1 and plan3:  # one field: level 1 straight from the grid, level 0's graph lazy
        merged = _levels_from_grid(
            host_stencil, plan3, galerkin_scale, strength, merge_below, dim, device, dtype
        )
    if merged is not None:
        index = merged[0]["index"]
    else:
        samples = [
            _host_levels(*host_stencil(b), plan3, galerkin_scale, strength, merge_below)
            for b in range(bf)
        ]
        depth = min(len(s) for s in samples)
        index = np.concatenate(
            [
                np.flatnonzero(s[0]["node"].ravel() >= 0) + b * s[0]["node"].size
                for b, s in enumerate(samples)
            ]
        )
        merged = _merge(samples, depth) if bf > 1 else samples[0][:depth]
    levels = []
    shape3 = np.array((1,) * (3 - dim) + tuple(flags.shape[1:]), dtype=np.int64)
    for lvl, lv in enumerate(merged):
        levels.append(lv["lazy"] if "lazy" in lv else _graph_level(lv, dim, device, dtype))
        if bf == 1 and 1 <= lvl <= len(plan3):  # a block level: its cells, for `grid_form`
            levels[-1].host["coords"], levels[-1].host["grid_shape"] = lv["coords"], shape3
        if lvl < len(plan3):
            shape3 = np.where(plan3[lvl], (shape3 + 1) // 2, shape3)
    inv = _coarse_inverse(merged[-1])
    grid_agg = None
    if len(levels) > 1:
        cells = np.full(bf * grid.diag[0].numel(), -1, dtype=_cell_index_dtype(levels[1].n))
        cells[index] = merged[0]["agg"]
        grid_agg = torch.as_tensor(cells, device=device)
    return Hierarchy(
        grid=grid,
        index=torch.as_tensor(index, device=device),
        levels=levels,
        columns=int(columns),
        coarse_inverse=None if inv is None else torch.as_tensor(inv, device=device, dtype=dtype),
        grid_agg=grid_agg,
        host_stencil=(lambda: host_stencil(0)) if bf == 1 else None,
    )


def _cell_index_dtype(m: int) -> np.dtype:
    """The dtype of a map from grid cells to m coarse nodes (−1: none): int32 where it fits,
    as the CPU kernels read it (an int64 copy held beside it was one more grid field's
    worth of memory, 128 MiB at 256³); torch indexes with either."""
    return np.dtype(np.int32 if m < 2**31 else np.int64)


def _levels_from_grid(
    host_stencil, plan3, scale: float, strength: float, merge_below: int, dim: int, device, dtype
) -> list[dict] | None:
    """`_host_levels` of one flag field (host_stencil(0): its stencil) with level 1
    made straight from the grid (`deepcd.kernels.grid_aggregate`: the same levels without
    level 0's link CSR). Level 0's dict holds index, agg and, as "lazy", its `GraphLevel`,
    whose arrays are built on first use. None when level 1 would be empty (every region
    closed inside a block): `_host_levels` then handles the single level."""
    from deepcd.kernels.grid_aggregate import grid_aggregate
    from deepcd.nn.fastpath import GRID_SERIAL_BELOW

    diag, links = host_stencil(0, native=True)
    h = np.array(plan3[0], dtype=np.bool_)
    shape = np.where(h, (np.array(diag.shape) + 1) // 2, diag.shape).astype(np.int64)
    with K.serial_if_small(diag.size, GRID_SERIAL_BELOW):
        node, index, agg, nlinks, lv1 = grid_aggregate(
            diag, *links, h, shape, scale, strength, merge_below
        )
    n0 = len(index)
    del diag, links, node
    if len(lv1["d"]) == 0:
        return None
    factor = level_scale(n0, len(lv1["d"]), nlinks, scale) / scale
    if factor != 1.0:
        lv1["w"], lv1["d"] = lv1["w"] * factor, lv1["d"] * factor

    # what the lazy level 0 keeps of agg until it is built: int32 where it fits, half of
    # the int64 map (which the hierarchy turns into its grid map and lets go)
    kept = agg.astype(_cell_index_dtype(len(lv1["d"])))

    def level0_host() -> dict:
        diag, links = host_stencil(0)
        _, coords, d, indptr, indices, w, axis = K.grid_graph(diag, *links)
        lv = dict(coords=coords, d=d, indptr=indptr, indices=indices, w=w, axis=axis)
        lv["agg"] = kept.astype(np.int64)
        return _graph_level(lv, dim, device, dtype).host

    halved = tuple(bool(v) for v in plan3[0])
    level0 = GraphLevel(level0_host, halved[3 - dim :], dim, device, dtype, n=n0)
    levels = coarsen([lv1], shape, plan3[1:], scale, strength, merge_below)
    return [dict(index=index, agg=agg, halved=halved, lazy=level0), *levels]


def _grid_axis_weights(grid: StencilLevel, degrees: bool = True) -> list[tuple]:
    """Per axis, the normalized face weights ŵ (Bf, 1, *g_a) and their sum per cell (the
    degree, Bf, 1, *g; None on the CPU path without `degrees`) of level 0 on the grid —
    `_normalized` in grid form."""
    if grid.diag.device.type == "cpu" and grid.diag.shape[0] == 1:
        return _grid_axis_weights_host(grid, degrees)
    return _grid_axis_weights_torch(grid)


def _grid_axis_weights_torch(grid: StencilLevel) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`_grid_axis_weights` in torch (any device, any Bf)."""
    wmax = torch.zeros_like(grid.diag)
    for a, link in enumerate(grid.links):
        ax, n = a + 2, wmax.shape[a + 2]
        if n < 2:
            continue
        lo, hi = wmax.narrow(ax, 0, n - 1), wmax.narrow(ax, 1, n - 1)
        lo.copy_(torch.maximum(lo, link))
        hi.copy_(torch.maximum(hi, link))
    out = []
    for a, link in enumerate(grid.links):
        ax, n = a + 2, wmax.shape[a + 2]
        deg = torch.zeros_like(grid.diag)
        if n < 2:
            out.append((link, deg))
            continue
        scale = torch.maximum(wmax.narrow(ax, 0, n - 1), wmax.narrow(ax, 1, n - 1))
        nlink = torch.where(link > 0, link / scale.clamp_min(1e-30), torch.zeros_like(link))
        deg.narrow(ax, 0, n - 1).add_(nlink)
        deg.narrow(ax, 1, n - 1).add_(nlink)
        out.append((nlink, deg))
    return out


def _grid_axis_weights_host(grid: StencilLevel, degrees: bool = True) -> list[tuple]:
    """`_grid_axis_weights` of one field on the CPU, in two parallel passes per axis
    (`deepcd.kernels.normalize`: the same numbers); the degrees None unless `degrees`.
    Without degrees, a flag Laplacian's ŵ are its faces (`normalize.binary_faces`): held,
    not computed."""
    from deepcd.kernels.normalize import axis_weights, binary_faces, largest_face
    from deepcd.nn.fastpath import grid_views

    dim = grid.diag.ndim - 2
    diag, faces = grid_views(grid.diag, grid.links)
    if not degrees and binary_faces(*faces):  # a flag Laplacian: ŵ = w (binary_faces)
        return [(link, None) for link in grid.links]
    wmax = np.empty_like(diag)
    largest_face(*faces, wmax)
    out = []
    for a, link in enumerate(grid.links):
        if grid.diag.shape[a + 2] < 2:
            out.append((link, torch.zeros_like(grid.diag) if degrees else None))
            continue
        nlink = np.empty_like(faces[a + 3 - dim])
        deg = np.empty_like(diag) if degrees else np.empty((0, 0, 0), dtype=diag.dtype)
        axis_weights(faces[a + 3 - dim], wmax, a + 3 - dim, nlink, deg)
        # a flag Laplacian's ŵ are its faces (0 or 1): hold those, not a copy of them
        same = np.array_equal(nlink, faces[a + 3 - dim])  # nlink has the faces' dtype
        out.append(
            (
                link if same else torch.from_numpy(nlink).reshape(link.shape),
                torch.from_numpy(deg).reshape(grid.diag.shape) if degrees else None,
            )
        )
    return out


def _graph_level(lv: dict, dim: int, device, dtype) -> GraphLevel:
    host = dict(
        indptr=lv["indptr"].astype(np.int64, copy=False),
        indices=lv["indices"].astype(np.int32, copy=False),
        weight=lv["w"],
        axis=(lv["axis"] - (3 - dim)).astype(np.int8),  # in the grid's own axis numbering
        diag=lv["d"],
        s=np.where(lv["d"] > 0, 1.0 / np.sqrt(np.maximum(lv["d"], 1e-300)), 0.0),
    )
    if "agg" in lv:
        host["agg"] = lv["agg"].astype(np.int64, copy=False)
    halved = lv.get("halved")
    return GraphLevel(host, None if halved is None else halved[3 - dim :], dim, device, dtype)


def host_arrays(level: GraphLevel, dtype: np.dtype) -> dict:
    """The level's CPU-kernel arrays in `dtype` (cached)."""
    key = np.dtype(dtype).str
    if key not in level.cache:
        h = level.host_full()
        level.cache[key] = {
            k: (v.astype(dtype) if k in ("weight", "nweight", "diag", "s") else v)
            for k, v in h.items()
        }
        if "agg" in h:  # `prolong_copy` reads it: int32, half the bytes
            level.cache[key]["agg"] = h["agg"].astype(np.int32)
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


def grid_form(h: Hierarchy, depth: int) -> Hierarchy | None:
    """Graph level `depth` (>= 1) as the grid level 0 of a sub-hierarchy that shares h's
    coarser levels and coarsest solve, when its graph is a stencil on its block grid — one
    unknown per occupied block, every link between face neighbours along its axis — save at
    most GRID_FORM_EXTRA_MAX of its links, which the grid level keeps beside its stencil
    (`ExtraLinks`: where a one-node component joined a neighbouring block's, `MERGE_BELOW`).
    Level 1 of open scenes is such a grid (smoke, plumes: no extra links; obstacles, bunny,
    pool: 0.05–0.1 % of them at 128³). The CPU inference then runs that level on the grid kernels
    (`VCycleNet._cycle`), which stream its arrays in order instead of gathering through link
    indices. None where a block holds two unknowns (walls that split blocks, mazes), for a
    stack of flag fields, or when the level has no coarser level. Built once per hierarchy
    (cached)."""
    if depth in h._forms:
        return h._forms[depth]
    h._forms[depth] = form = _grid_form(h, depth)
    return form


def _grid_form(h: Hierarchy, depth: int) -> Hierarchy | None:
    if depth < 1 or depth + 1 >= len(h.levels) or h.grid is None:  # (deepcd.petsc: no grid)
        return None
    if h.grid.diag.shape[0] != 1:
        return None
    if h.levels[depth].n < GRID_FORM_MIN:  # small: the serial graph kernels are faster
        return None
    level = h.levels[depth]
    host = level.host
    if "coords" not in host or level.halved is None or "agg" not in host:
        return None
    dim = level.dim
    shape3 = tuple(int(v) for v in host["grid_shape"])
    diag = np.zeros(shape3)
    faces = [np.zeros(tuple(n - (a == b) for b, n in enumerate(shape3))) for a in range(3)]
    cell = np.empty(level.n, dtype=np.int64)
    extra = np.zeros(len(host["indices"]), dtype=np.bool_)
    args = (host["coords"], host["indptr"], host["indices"])
    count = K.grid_stencil(
        *args, host["weight"], host["axis"], 3 - dim, host["diag"], diag, *faces, cell, extra
    )
    if count < 0:  # two unknowns in a block
        return None
    if count > GRID_FORM_EXTRA_MAX * len(extra):
        return None
    dtype = h.grid.diag.dtype
    g = shape3[3 - dim :]

    stencil = StencilLevel.from_parts(
        _grid_field(diag, dim, dtype), [_grid_field(f, dim, dtype) for f in faces[3 - dim :]]
    )
    agg = np.full(int(np.prod(shape3)), -1, dtype=_cell_index_dtype(h.levels[depth + 1].n))
    agg[cell] = host["agg"]
    sub = Hierarchy(
        grid=stencil,
        index=torch.as_tensor(cell),
        levels=h.levels[depth:],
        columns=h.columns,
        coarse_inverse=h.coarse_inverse,
        grid_agg=torch.as_tensor(agg),
        offset=h.offset + depth,
    )
    if count:
        stencil.extra = _extra_links(level, cell, extra)
        sub._grid_axis = _grid_axis_from_graph(level, extra, stencil, g)
    return sub


def _extra_links(level: GraphLevel, cell: np.ndarray, extra: np.ndarray) -> ExtraLinks:
    """The links marked in extra (nnz,) of a graph level whose node i is grid cell cell[i]."""
    host = level.host_full()
    p = np.flatnonzero(extra)
    row = np.searchsorted(host["indptr"], p, side="right") - 1
    nodes, start = np.unique(row, return_index=True)
    cols = host["indices"][p]
    w = host["weight"][p].astype(np.float64)
    return ExtraLinks(
        rows=cell[nodes],
        ptr=np.append(start, len(p)).astype(np.int64),
        cols=cell[cols],
        weight=w,
        snorm=host["s"][row] * w * host["s"][cols],
        nweight=host["nweight"][p].astype(np.float64),
        axis=host["axis"][p].astype(np.int8),
    )


def _grid_axis_from_graph(level, extra: np.ndarray, stencil: StencilLevel, g) -> list:
    """`Hierarchy.grid_axis` of a grid form with links off its grid (`stencil.extra`, marked
    in extra (nnz,)): per axis (ŵ, degree) from the graph's own ŵ (their largest-link scale
    counts those links, which the faces alone miss), each degree summing them too."""
    host = level.host_full()
    dim, links = level.dim, stencil.extra
    shape3 = (1,) * (3 - dim) + tuple(g)
    faces = [np.zeros(tuple(n - (a == b) for b, n in enumerate(shape3))) for a in range(3)]
    args = (host["coords"], host["indptr"], host["indices"], host["nweight"], host["axis"])
    K.grid_faces(*args, 3 - dim, extra, *faces)
    rows = np.repeat(links.rows, np.diff(links.ptr))
    dtype = stencil.diag.dtype
    out = []
    for a in range(dim):
        face, ax = faces[a + 3 - dim], a + 3 - dim
        deg = np.zeros(shape3)
        n = shape3[ax]
        if n > 1:
            deg[(slice(None),) * ax + (slice(0, n - 1),)] += face
            deg[(slice(None),) * ax + (slice(1, n),)] += face
        on = links.axis == a
        np.add.at(deg.reshape(-1), rows[on], links.nweight[on])
        out.append((_grid_field(face, dim, dtype), _grid_field(deg, dim, dtype)))
    return out


def _grid_field(a: np.ndarray, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """A 3D-numbered array (1, nx, ny) / (nx, ny, nz) as a (1, 1, *g) field in dtype."""
    return torch.as_tensor(a.reshape(1, 1, *a.shape[3 - dim :]), dtype=dtype)
