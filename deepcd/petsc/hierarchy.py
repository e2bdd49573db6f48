"""The V-cycle's hierarchy distributed over the ranks of a DMDA (see `deepcd.nn.multigrid`).

Level 0 is the operator's 7-point stencil (read from the assembled matrix, or the flags'
Laplacian) on the FLUID cells of each rank's ghosted DMDA block. A coarse level has one
unknown per connected component of the fine unknowns inside each 2^m block of cells, the
exact Galerkin operator ½·P₀ᵀAP₀ — the serial hierarchy's definition — computed rank by rank:
the DMDA's ownership ranges are aligned to the blocks (`deepcd.petsc.grid.create_dmda`), so a
block, and every component in it, lies on one rank; `deepcd.kernels.aggregate.aggregate`
builds it from the rank's own links (given each node's largest link over *all* its links, so
strength tests see the links to other ranks too), and the links between ranks' coarse
unknowns are summed from the fine links between ranks, their axis chosen by the same rule.
Transfers are then rank-local; smoothing, residuals and the prolongation smoothing read
neighbours through halo exchanges (`deepcd.petsc.halo`).

Once a level has at most `GATHER_BELOW` unknowns (or the next blocks would straddle ranks, or
the geometric plan ends) it is gathered onto every rank, put in an order that does not depend
on the ranks (coarse cell, then the smallest level-0 cell of the unknown), and the rest of the
hierarchy is built and applied by the serial code (`deepcd.nn.multigrid.coarsen`,
`VCycleNet._cycle`) redundantly on every rank. So 1 rank and N ranks apply the same V-cycle,
up to rounding.

Difference from the serial default: one-node components are not merged into a neighbouring
block's (`merge_below` = 0 here; MERGE_BELOW = 2 serially), since that merge crosses blocks
and so ranks. The serial hierarchy built with `merge_below=0` is the same operator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from deepcd.kernels import aggregate as K
from deepcd.nn.multigrid import (
    STRENGTH,
    Hierarchy,
    _coarse_inverse,
    _graph_level,
    coarsen,
    level_scale,
)
from deepcd.petsc import grid as G
from deepcd.petsc.halo import GraphHalo, GridHalo, allgatherv, allreduce, exscan
from deepcd.problems.flags import FLUID

GATHER_BELOW = 4096  # a level with at most this many unknowns is gathered onto every rank


@dataclass
class GridPart:
    """Level 0 on this rank's ghosted block (3D float64 arrays of the ghosted shape): the
    stencil (diag, face weights), its normalized form for the smoother (s, e, nlinks), the
    prolongation smoothing's (ŵ, degree) per axis, and the aggregation to level 1 (agg over the
    flattened block: this rank's level-1 unknown of each owned cell or -1; mstart, members)."""

    halo: GridHalo
    inner: tuple
    diag: np.ndarray
    links: list
    s: np.ndarray
    e: np.ndarray
    nlinks: list
    axis: list
    agg: np.ndarray
    mstart: np.ndarray
    members: np.ndarray
    halved: tuple

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.diag.shape


@dataclass
class GraphPart:
    """A distributed graph level: vectors are (n_own + n_ghost,) float64, own values first.
    The CSR (indptr over all n_tot rows, ghost rows empty; indices into the same vector)
    holds this rank's links; d has 0 on ghost rows (the matvec's), s and e the smoother's
    normalization, nweight = s_i·w_ij·s_j, split the per-axis CSRs of ŵ (`axis_csr`)."""

    halo: GraphHalo
    n_own: int
    indptr: np.ndarray
    indices: np.ndarray
    weight: np.ndarray
    d: np.ndarray
    s: np.ndarray
    e: np.ndarray
    nweight: np.ndarray
    split: list
    agg: np.ndarray
    mstart: np.ndarray
    members: np.ndarray
    halved: tuple

    @property
    def n(self) -> int:
        return len(self.d)


@dataclass
class Distributed:
    """The hierarchy on this rank: level 0 (`grid`), the distributed graph levels 1…g-1,
    and from level g = `gathered` on the serial `tail` (a `Hierarchy` whose levels below g are
    None) with the gathered level's order: `perm` (canonical position → global id), `pos`
    (global id → position); this rank owns global ids offset … offset + n_own - 1."""

    grid: GridPart
    graphs: list[GraphPart]
    gathered: int
    offset: int
    n_own: int
    n_global: int
    perm: np.ndarray
    pos: np.ndarray
    tail: Hierarchy
    stats: dict = field(default_factory=dict)

    def destroy(self) -> None:
        self.grid.halo.destroy()
        for g in self.graphs:
            g.halo.destroy()


def _face_slices(a: int, n: int, lo: int, hi: int) -> tuple:
    sl = [slice(None)] * 3
    sl[a] = slice(lo, hi)
    return tuple(sl)


def _axis_weights(links: list, halo: GridHalo) -> list:
    """Per axis the prolongation smoothing's normalized face weights ŵ = w / max(w_max,i,
    w_max,j) and their sum per cell (the degree) — `multigrid._grid_axis_weights` on a ghosted
    block, the ghost cells' w_max taken from their owners."""
    shape = tuple(n + (a == 0) for a, n in enumerate(links[0].shape))
    wmax = np.zeros(shape)
    for a, w in enumerate(links):
        n = shape[a]
        for sl in (_face_slices(a, n, 0, n - 1), _face_slices(a, n, 1, n)):
            np.maximum(wmax[sl], w, out=wmax[sl])
    halo(wmax)
    out = []
    for a, w in enumerate(links):
        n = shape[a]
        lo, hi = _face_slices(a, n, 0, n - 1), _face_slices(a, n, 1, n)
        scale = np.maximum(wmax[lo], wmax[hi])
        nlink = np.where(w > 0, w / np.maximum(scale, 1e-300), 0.0)
        deg = np.zeros(shape)
        deg[lo] += nlink
        deg[hi] += nlink
        out.append((nlink, deg))
    return out


def _level0(da, fvec, boundary, A=None):
    """Level 0's GridPart arrays and its graph over the owned cells (a setup dict); the
    stencil read from the matrix `A` when given (weighted stencils), else the flags'."""
    halo = GridHalo(da)
    padded = G.local_flags(da, fvec, boundary)
    if A is None:
        diag, links = G.flag_stencil(padded)
    else:
        diag, links = G.matrix_stencil(da, A, padded[1:-1, 1:-1, 1:-1] == FLUID)
    halo(diag)  # the ghost layer's diagonal from its owners
    active = diag > 0
    s = np.where(active, 1.0 / np.sqrt(np.where(active, diag, 1.0)), 0.0)
    e = s * s * diag
    nlinks = []
    for a, w in enumerate(links):
        n = diag.shape[a]
        nlinks.append(s[_face_slices(a, n, 0, n - 1)] * w * s[_face_slices(a, n, 1, n)])
    axis = _axis_weights(links, halo)
    inner = G.interior(da)
    own_box = G.owned_box(da)
    whole = G.grid_shape(da)
    # the owned cells' graph (links inside the block) ...
    own_links = []
    for a, w in enumerate(links):
        sl = list(inner)
        sl[a] = slice(inner[a].start, inner[a].stop - 1)
        own_links.append(np.ascontiguousarray(w[tuple(sl)]))
    node, coords, d, indptr, indices, weight, axis_id = K.grid_graph(
        np.ascontiguousarray(diag[inner]), *own_links
    )
    offset, total = exscan(da.comm, len(d))
    gid = np.full(diag.shape, -1.0)
    gid[inner] = np.where(node >= 0, node + offset, -1)
    halo(gid)
    # ... and its links to the ghost layer (other ranks' cells)
    # own node, ghost cell (flat), weight, axis
    cross = [
        [np.zeros(0, np.int64)],
        [np.zeros(0, np.int64)],
        [np.zeros(0)],
        [np.zeros(0, np.int8)],
    ]
    flat = np.arange(diag.size).reshape(diag.shape)
    for a, w in enumerate(links):
        for side in (0, 1):
            if (side == 0 and inner[a].start == 0) or (
                side == 1 and inner[a].stop == diag.shape[a]
            ):
                continue
            face = inner[a].start - 1 if side == 0 else inner[a].stop - 1
            own_at = inner[a].start if side == 0 else inner[a].stop - 1
            ghost_at = face if side == 0 else face + 1
            sl = list(inner)
            sl[a] = slice(own_at, own_at + 1)
            gl = list(inner)
            gl[a] = slice(ghost_at, ghost_at + 1)
            fl = list(inner)
            fl[a] = slice(face, face + 1)
            ni = node[tuple(_shift_to_own(sl, inner))].ravel()
            gcell = flat[tuple(gl)].ravel()
            wf = w[tuple(fl)].ravel()
            ok = (ni >= 0) & (gid.ravel()[gcell] >= 0) & (wf > 0)
            cross[0].append(ni[ok])
            cross[1].append(gcell[ok])
            cross[2].append(wf[ok])
            cross[3].append(np.full(int(ok.sum()), a, dtype=np.int8))
    xi, xcell, xw, xa = (np.concatenate(c) for c in cross)
    gx = np.asarray(coords, dtype=np.int64) + np.array([b[0] for b in own_box])
    key0 = (gx[:, 0] * whole[1] + gx[:, 1]) * whole[2] + gx[:, 2]
    lv = dict(
        n_own=len(d),
        offset=offset,
        n_global=total,
        coords=gx.astype(np.int32),
        d=d,
        indptr=indptr,
        indices=indices,
        w=weight,
        axis=axis_id,
        xi=xi.astype(np.int64),
        xpos=xcell.astype(np.int64),
        xg=gid.ravel()[xcell].astype(np.int64),
        xw=xw,
        xa=xa,
        key0=key0,
        start=np.array([b[0] for b in own_box]),
        end=np.array([b[1] for b in own_box]),
        node=node,
    )
    lv["wmax"] = _wmax(lv)
    part = dict(halo=halo, inner=inner, diag=diag, links=links, s=s, e=e, nlinks=nlinks)
    part["axis"] = axis
    return lv, part


def _shift_to_own(sl, inner):
    """Slices of the ghosted block → slices of the owned block."""
    return [slice(s.start - i.start, s.stop - i.start) for s, i in zip(sl, inner, strict=True)]


def _wmax(lv: dict) -> np.ndarray:
    """Each own node's largest link weight over its own and cross-rank links."""
    n = lv["n_own"]
    wmax = np.zeros(n)
    indptr = lv["indptr"]
    full = np.flatnonzero(np.diff(indptr) > 0)
    if len(full):
        wmax[full] = np.maximum.reduceat(lv["w"], indptr[:-1][full])
    np.maximum.at(wmax, lv["xi"], lv["xw"])  # the few links to other ranks
    return wmax


def _exchange(lv: dict, own: np.ndarray, halo) -> np.ndarray:
    """Own node values → the values at the other end of every cross-rank link."""
    if "node" in lv:  # level 0: through the ghosted grid block
        field_ = np.full(lv["ghost_shape"], -1.0)
        inner = lv["inner"]
        field_[inner] = np.where(lv["node"] >= 0, own[np.maximum(lv["node"], 0)], -1.0)
        halo(field_)
        return field_.ravel()[lv["xpos"]]
    arr = np.concatenate([own.astype(np.float64), np.zeros(halo.ghosts)])
    halo(arr)
    return arr[lv["xpos"]]


def _coarse_cross(lv, agg, cg, n_coarse_global, scale):
    """The coarse links between ranks from the fine ones: (I own, J global, w, axis)."""
    ci = agg[lv["xi"]] if len(lv["xi"]) else np.zeros(0, dtype=np.int64)
    ok = (ci >= 0) & (cg >= 0)
    ci, cj = ci[ok], cg[ok].astype(np.int64)
    w, a = lv["xw"][ok], lv["xa"][ok]
    if len(ci) == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int8))
    keys, inv = np.unique(ci * max(n_coarse_global, 1) + cj, return_inverse=True)
    cw = np.bincount(inv, weights=w) * scale
    per = np.stack([np.bincount(inv, weights=w * (a == k), minlength=len(keys)) for k in range(3)])
    top = per.max(axis=0)
    ca = np.argmax(per >= (1.0 - 1e-9) * top, axis=0).astype(np.int8)
    return keys // max(n_coarse_global, 1), keys % max(n_coarse_global, 1), cw, ca


def _graph_part(lv: dict, halo: GraphHalo, agg: np.ndarray, n_coarse: int, halved) -> GraphPart:
    """The runtime arrays of a distributed graph level (see `GraphPart`)."""
    n_own, ng = lv["n_own"], halo.ghosts
    n_tot = n_own + ng
    rows = np.concatenate([np.repeat(np.arange(n_own), np.diff(lv["indptr"])), lv["xi"]])
    cols = np.concatenate([lv["indices"].astype(np.int64), lv["xpos"]])
    w = np.concatenate([lv["w"], lv["xw"]])
    ax = np.concatenate([lv["axis"], lv["xa"]])
    order = np.argsort(rows, kind="stable")
    rows, cols, w, ax = rows[order], cols[order], w[order], ax[order]
    indptr = np.zeros(n_tot + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_tot), out=indptr[1:])
    d_tot = np.concatenate([lv["d"], np.zeros(ng)])
    halo(d_tot)
    wmax = np.concatenate([lv["wmax"], np.zeros(ng)])
    halo(wmax)
    s = np.where(d_tot > 0, 1.0 / np.sqrt(np.where(d_tot > 0, d_tot, 1.0)), 0.0)
    nweight = s[rows] * w * s[cols]
    nw_hat = w / np.maximum(np.maximum(wmax[rows], wmax[cols]), 1e-300)
    split = K.axis_csr(indptr, cols.astype(np.int32), nw_hat, ax, 3)
    d_rows = d_tot.copy()
    d_rows[n_own:] = 0.0
    agg_tot = np.concatenate([agg, np.full(ng, -1, dtype=np.int64)])
    mstart, members = K.members_of(agg_tot, n_coarse)
    return GraphPart(
        halo=halo,
        n_own=n_own,
        indptr=indptr,
        indices=cols.astype(np.int32),
        weight=w,
        d=d_rows,
        s=s,
        e=s * s * d_tot,
        nweight=nweight,
        split=split,
        agg=agg_tot,
        mstart=mstart,
        members=members,
        halved=tuple(bool(v) for v in halved),
    )


def build(
    da,
    fvec,
    boundary,
    plan3,
    *,
    scale: float = 0.5,
    strength: float = STRENGTH,
    gather_below: int = GATHER_BELOW,
    A=None,
) -> Distributed:
    """The distributed hierarchy of the flags in `fvec` (a DMDA global vector) with `boundary`,
    coarsening by `plan3` (per level the halved axes; `coarsening_plan`); level 0 the
    operator `A`'s stencil on the FLUID cells when given (else the flags'). Collective."""
    comm = da.comm
    plan3 = [tuple(bool(v) for v in h) for h in plan3]
    G.check_all(comm, len(plan3) > 0, "the grid is too small for a V-cycle (nothing to coarsen)")
    lv, p0 = _level0(da, fvec, boundary, A)
    lv["ghost_shape"], lv["inner"] = p0["diag"].shape, p0["inner"]
    halo = p0["halo"]
    shape = np.array(G.grid_shape(da), dtype=np.int64)
    graphs: list[GraphPart] = []
    grid_part = None
    level = 0
    stats = {"levels": []}
    while True:
        stats["levels"].append(
            dict(
                level=level,
                unknowns=lv["n_global"],
                own_max=int(allreduce(comm, lv["n_own"], "max")),
                ghosts_max=int(allreduce(comm, int(halo.ghosts), "max")),
                ghosts_total=int(allreduce(comm, int(halo.ghosts), "sum")),
            )
        )
        done = level >= len(plan3) or lv["n_global"] == 0
        halved = np.array(plan3[level] if not done else (False,) * 3)
        aligned = bool(np.all(lv["start"][halved] % 2 == 0)) if not done else True
        aligned = bool(allreduce(comm, int(aligned), "min"))
        if level == 0 and not aligned:
            G.check_all(
                comm,
                False,
                "the DMDA's ownership ranges must be even along every axis (the V-cycle's "
                "2×2×2 blocks may not straddle ranks): create it with deepcd.petsc.create_dmda",
            )
        if level > 0 and (done or not aligned or lv["n_global"] <= gather_below):
            break
        start_c = np.where(halved, lv["start"] // 2, lv["start"])
        end_c = np.where(halved, (lv["end"] + 1) // 2, lv["end"])
        local_coords = (lv["coords"] - lv["start"]).astype(np.int32)
        agg, ccoords, cd, cindptr, cindices, cweight, caxis = K.aggregate(
            local_coords,
            lv["d"],
            lv["indptr"],
            lv["indices"],
            lv["w"],
            lv["axis"],
            halved,
            (end_c - start_c).astype(np.int64),
            scale,
            False,
            strength,
            0,
            lv["wmax"],
        )
        mc = len(cd)
        offset_c, total_c = exscan(comm, mc)
        cg_own = np.where(agg >= 0, agg + offset_c, -1).astype(np.float64)
        cg = np.rint(_exchange(lv, cg_own, halo)).astype(np.int64)
        xi_c, xg_c, xw_c, xa_c = _coarse_cross(lv, agg, cg, total_c, scale)
        # the serial hierarchy's factor for corridor-like levels, from the global counts
        links = int(allreduce(comm, len(lv["indices"]) + len(lv["xi"]), "sum"))
        factor = level_scale(lv["n_global"], total_c, links, scale) / scale
        if factor != 1.0:
            cd, cweight, xw_c = cd * factor, cweight * factor, xw_c * factor
        if level == 0:
            flat = np.full(int(np.prod(p0["diag"].shape)), -1, dtype=np.int64)
            cells = np.arange(flat.size).reshape(p0["diag"].shape)[p0["inner"]]
            node = lv["node"]
            flat[cells[node >= 0]] = agg[node[node >= 0]]
            mstart, members = K.members_of(flat, mc)
            grid_part = GridPart(
                agg=flat,
                mstart=mstart,
                members=members,
                halved=tuple(bool(v) for v in halved),
                **p0,
            )
        else:
            graphs.append(_graph_part(lv, halo, agg, mc, halved))
        # the coarse level
        mstart_n, members_n = K.members_of(agg, mc)  # every coarse node has a member
        key0 = np.minimum.reduceat(lv["key0"][members_n], mstart_n[:-1]) if mc else agg[:0]
        ghosts = np.unique(xg_c)
        halo = GraphHalo(comm, mc, ghosts)
        lv = dict(
            n_own=mc,
            offset=offset_c,
            n_global=total_c,
            coords=(ccoords.astype(np.int64) + start_c).astype(np.int32),
            d=cd,
            indptr=cindptr,
            indices=cindices,
            w=cweight,
            axis=caxis,
            xi=xi_c,
            xg=xg_c,
            xpos=mc + np.searchsorted(ghosts, xg_c),
            xw=xw_c,
            xa=xa_c,
            key0=key0,
            start=start_c,
            end=end_c,
        )
        lv["wmax"] = _wmax(lv)
        shape = np.where(halved, (shape + 1) // 2, shape)
        level += 1
    halo.destroy()
    perm, pos, tail_lv = _gather(comm, lv, shape)
    tail = coarsen([tail_lv], shape, plan3[level:], scale, strength, 0)
    glevels = [_graph_level(t, 3, torch.device("cpu"), torch.float64) for t in tail]
    inv = _coarse_inverse(tail[-1])
    stats["gathered_level"] = level
    stats["gathered_unknowns"] = lv["n_global"]
    stats["tail_unknowns"] = [len(t["d"]) for t in tail]
    return Distributed(
        grid=grid_part,
        graphs=graphs,
        gathered=level,
        offset=lv["offset"],
        n_own=lv["n_own"],
        n_global=lv["n_global"],
        perm=perm,
        pos=pos,
        tail=Hierarchy(
            grid=None,
            index=None,
            levels=[None] * level + glevels,
            columns=1,
            coarse_inverse=None if inv is None else torch.from_numpy(inv),
        ),
        stats=stats,
    )


def _gather(comm, lv: dict, shape) -> tuple[np.ndarray, np.ndarray, dict]:
    """The level on every rank, in the rank-independent order (coarse cell, smallest level-0
    cell): (perm, pos, level dict for `coarsen`)."""
    n = lv["n_own"]
    off = lv["offset"]
    rows = np.concatenate([np.repeat(np.arange(n), np.diff(lv["indptr"])) + off, lv["xi"] + off])
    cols = np.concatenate([lv["indices"].astype(np.int64) + off, lv["xg"]])
    coords = allgatherv(comm, np.ascontiguousarray(lv["coords"], dtype=np.int32))
    d = allgatherv(comm, lv["d"])
    key0 = allgatherv(comm, lv["key0"])
    rows = allgatherv(comm, rows)
    cols = allgatherv(comm, cols)
    w = allgatherv(comm, np.concatenate([lv["w"], lv["xw"]]))
    ax = allgatherv(comm, np.concatenate([lv["axis"], lv["xa"]]).astype(np.int8))
    c = coords.astype(np.int64)
    block = (c[:, 0] * shape[1] + c[:, 1]) * shape[2] + c[:, 2]
    perm = np.lexsort((key0, block))
    pos = np.empty_like(perm)
    pos[perm] = np.arange(len(perm))
    r, q = pos[rows], pos[cols]
    order = np.lexsort((q, r))
    r, q, w, ax = r[order], q[order], w[order], ax[order]
    m = len(perm)
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=m), out=indptr[1:])
    tail = dict(
        coords=coords[perm],
        d=d[perm],
        indptr=indptr,
        indices=q.astype(np.int32),
        w=w,
        axis=ax,
    )
    return perm, pos, tail
