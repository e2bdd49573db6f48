"""Halo exchanges of the distributed V-cycle, done by PETSc scatters, and small MPI helpers.

A rank keeps each level's vectors as numpy float64 arrays that hold its own values and, after
them (graph levels) or around them (level 0, the DMDA's ghosted block), copies of its
neighbours' values. `GridHalo` refreshes the ghost layer of a ghosted block in place with a
VecScatter between the ranks' ghosted blocks; `GraphHalo` refreshes the ghost entries of a
graph level (`[own..., ghosts...]`) with a VecScatter from the level's global vector. Both
wrap the numpy memory in PETSc vectors for the call (no copy) and count the values they move.
"""

from __future__ import annotations

import numpy as np

from deepcd.petsc.env import require


class GridHalo:
    """Ghost-layer refresh for ghosted DMDA blocks (3D float64 arrays of the ghosted shape).

    A VecScatter on the "ghosted layout" (each rank's ghosted block as its part of one MPI
    vector) that moves only the cells a rank holds as ghosts, from their owners' blocks — the
    DMDA's own local-to-local scatter also copies every owned cell onto itself."""

    def __init__(self, da):
        PETSc = self.PETSc = require()
        self.comm = da.comm
        m = mpi(da.comm)
        own = [tuple(r) for r in da.getRanges()[::-1]]  # numpy axes
        ghost = [tuple(r) for r in da.getGhostRanges()[::-1]]
        boxes = m.allgather((own, ghost))
        sizes = [int(np.prod([hi - lo for lo, hi in g])) for _, g in boxes]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        me = m.Get_rank()
        src, dst = [], []
        for q, (own_q, ghost_q) in enumerate(boxes):
            if q == me:
                continue
            inter = [(max(a[0], b[0]), min(a[1], b[1])) for a, b in zip(ghost, own_q, strict=True)]
            if any(lo >= hi for lo, hi in inter):
                continue
            cells = np.stack(
                np.meshgrid(*[np.arange(lo, hi) for lo, hi in inter], indexing="ij"), -1
            ).reshape(-1, 3)
            src.append(offsets[q] + _flat(cells, ghost_q))
            dst.append(offsets[me] + _flat(cells, ghost))
        self.n = sizes[me]
        self.ghosts = int(sum(len(d) for d in dst))  # values this rank receives per exchange
        self.calls = 0
        self.serial = m.Get_size() == 1  # one rank: no ghosts, nothing to exchange
        self.scatter = self.layout = None
        if not self.serial:
            # the layout vector lends its structure to each call's array (placeArray: no
            # allocation, no collective)
            self.layout = PETSc.Vec().createMPI((self.n, PETSc.DECIDE), comm=da.comm)
            it = PETSc.IntType
            src_is = PETSc.IS().createGeneral(np.concatenate(src or [[]]).astype(it), da.comm)
            dst_is = PETSc.IS().createGeneral(np.concatenate(dst or [[]]).astype(it), da.comm)
            self.scatter = PETSc.Scatter().create(self.layout, src_is, self.layout, dst_is)
            for obj in (src_is, dst_is):
                obj.destroy()

    def __call__(self, arr: np.ndarray) -> None:
        self.calls += 1
        if self.serial:
            return
        P, v = self.PETSc, self.layout
        v.placeArray(arr.reshape(-1))
        try:
            self.scatter.scatter(v, v, P.InsertMode.INSERT_VALUES, P.ScatterMode.FORWARD)
        finally:
            v.resetArray()

    def destroy(self) -> None:
        for obj in (self.scatter, self.layout):
            if obj is not None:
                obj.destroy()


def _flat(cells: np.ndarray, box) -> np.ndarray:
    """Flat C-order indices of global cells (k, 3) inside a box [(lo, hi)] * 3."""
    lo = np.array([b[0] for b in box])
    n = np.array([b[1] - b[0] for b in box])
    c = cells - lo
    return (c[:, 0] * n[1] + c[:, 1]) * n[2] + c[:, 2]


class GraphHalo:
    """Ghost refresh of a distributed graph level: arr (n_own + n_ghost,) float64 gets the
    owners' values of the global nodes `ghosts` (sorted global ids) in arr[n_own:]."""

    def __init__(self, comm, n_own: int, ghosts: np.ndarray):
        PETSc = self.PETSc = require()
        self.comm, self.n_own = comm, int(n_own)
        self.ghosts = len(ghosts)
        self.glob = PETSc.Vec().createMPI((self.n_own, PETSc.DECIDE), comm=comm)
        self.loc = PETSc.Vec().createSeq(self.ghosts, comm=PETSc.COMM_SELF)
        index = PETSc.IS().createGeneral(np.asarray(ghosts, dtype=PETSc.IntType), comm=comm)
        self.scatter = PETSc.Scatter().create(self.glob, index, self.loc, None)
        index.destroy()
        self.calls = 0

    def __call__(self, arr: np.ndarray) -> None:
        self.calls += 1
        if self.comm.getSize() == 1:
            return
        P = self.PETSc
        self.glob.placeArray(arr[: self.n_own])
        self.loc.placeArray(arr[self.n_own :])
        try:
            self.scatter.scatter(
                self.glob, self.loc, P.InsertMode.INSERT_VALUES, P.ScatterMode.FORWARD
            )
        finally:
            self.glob.resetArray()
            self.loc.resetArray()

    def destroy(self) -> None:
        for obj in (self.scatter, self.glob, self.loc):
            obj.destroy()


def mpi(comm):
    """The mpi4py communicator of a PETSc one (or `comm` itself)."""
    return comm.tompi4py() if hasattr(comm, "tompi4py") else comm


def exscan(comm, n: int) -> tuple[int, int]:
    """(this rank's offset, the total) of per-rank counts n."""
    counts = mpi(comm).allgather(int(n))
    return int(sum(counts[: mpi(comm).Get_rank()])), int(sum(counts))


def allgatherv(comm, arr: np.ndarray) -> np.ndarray:
    """Concatenation over the ranks (in rank order) of each rank's array (same dtype, same
    trailing shape) — an MPI Allgatherv of the raw buffers."""
    from mpi4py import MPI

    m = mpi(comm)
    arr = np.ascontiguousarray(arr)
    row = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
    counts = np.array(m.allgather(arr.size), dtype=np.int64)
    out = np.empty(int(counts.sum()), dtype=arr.dtype)
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
    mtype = MPI._typedict[arr.dtype.char]
    m.Allgatherv(arr.reshape(-1), [out, counts, displs, mtype])
    return out.reshape((-1, *arr.shape[1:])) if row > 1 or arr.ndim > 1 else out


def allreduce(comm, value, op: str = "sum"):
    """A scalar reduced over the ranks (op: sum, max, min)."""
    from mpi4py import MPI

    return mpi(comm).allreduce(value, op={"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op])
