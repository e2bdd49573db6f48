"""The grid on PETSc: a 3D DMDA for a cell grid, the cell flags on it, the flags' Laplacian.

Axes: deepcd's grids are numpy arrays (nx, ny, nz) in C order (z fastest). PETSc's DMDA runs
its first axis fastest, so the DMDA is created with sizes (nz, ny, nx): a rank's block of a
DMDA vector, read in C order, is then the numpy block [x0:x1, y0:y1, z0:z1] and a DMDA global
vector holds the cells of each rank's block in C order (PETSc's ordering, rank by rank).

Validation that involves several ranks is collective (`check_all`): every rank evaluates its
own condition, all learn whether any failed, and all raise the same error — no rank is left
waiting in a collective call another rank never reaches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepcd.petsc.env import require
from deepcd.problems.flags import AIR, FLUID, SOLID, normalize_boundary

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def check_all(comm, ok: bool, message: str) -> None:
    """Raise ValueError on every rank of `comm` (a PETSc or mpi4py communicator) when `ok` is
    False on any rank, with the message of the lowest failing rank. Collective."""
    mpi = comm.tompi4py() if hasattr(comm, "tompi4py") else comm
    failed = mpi.allgather(None if ok else str(message))
    bad = [(r, m) for r, m in enumerate(failed) if m is not None]
    if bad:
        rank, msg = bad[0]
        raise ValueError(msg if mpi.Get_size() == 1 else f"{msg} (rank {rank})")


def _aligned_split(n: int, parts: int) -> list[int]:
    """Cells per part of an axis of n cells split into `parts`, with every boundary a multiple
    of the largest power of two ≤ n / (4·parts) (so several coarse levels stay aligned)."""
    unit = 1
    while unit * 2 <= n / (4 * parts):
        unit *= 2
    blocks = n // unit
    if blocks < parts:
        unit, blocks = 1, n
    base, extra = divmod(blocks, parts)
    sizes = [(base + (1 if p < extra else 0)) * unit for p in range(parts)]
    sizes[-1] += n - sum(sizes)
    return sizes


def create_dmda(shape: Sequence[int], comm=None, proc_sizes: Sequence[int] | None = None):
    """A 3D DMDA (dof 1, star stencil of width 1, no periodicity) for a cell grid of `shape`
    (nx, ny, nz), its ownership ranges aligned to powers of two (`_aligned_split`) so the
    distributed V-cycle keeps many levels on the ranks. proc_sizes: ranks per numpy axis."""
    PETSc = require()
    comm = PETSc.COMM_WORLD if comm is None else comm
    shape = tuple(int(n) for n in shape)
    check_all(comm, len(shape) == 3, f"deepcd.petsc works on 3D grids, got shape {shape}")
    sizes = shape[::-1]
    if proc_sizes is None:
        probe = PETSc.DMDA().create(dim=3, sizes=sizes, comm=comm)
        procs = tuple(probe.getProcSizes())
        probe.destroy()
    else:
        procs = tuple(int(p) for p in proc_sizes)[::-1]
    ranges = [_aligned_split(n, p) for n, p in zip(sizes, procs, strict=True)]
    da = PETSc.DMDA().create(
        dim=3,
        dof=1,
        sizes=sizes,
        proc_sizes=procs,
        ownership_ranges=ranges,
        stencil_type=PETSc.DMDA.StencilType.STAR,
        stencil_width=1,
        comm=comm,
    )
    da.setUp()
    return da


def grid_shape(da) -> tuple[int, int, int]:
    """The numpy shape (nx, ny, nz) of the DMDA's grid."""
    return tuple(int(n) for n in da.getSizes()[::-1])


def owned_box(da) -> Box:
    """This rank's block [(x0, x1), (y0, y1), (z0, z1)] in numpy axes."""
    return tuple(tuple(int(v) for v in r) for r in da.getRanges()[::-1])


def ghost_box(da) -> Box:
    """This rank's block with its ghost layer (clipped to the grid), in numpy axes."""
    return tuple(tuple(int(v) for v in r) for r in da.getGhostRanges()[::-1])


def box_shape(box: Box) -> tuple[int, int, int]:
    return tuple(hi - lo for lo, hi in box)


def interior(da) -> tuple[slice, slice, slice]:
    """The owned block inside the ghosted block (slices of a ghosted local array)."""
    own, gh = owned_box(da), ghost_box(da)
    return tuple(slice(o[0] - g[0], o[1] - g[0]) for o, g in zip(own, gh, strict=True))


def check_dmda(da) -> None:
    """A clear error on every rank unless `da` is a 3D DMDA with dof 1 and a stencil width ≥ 1
    (what the V-cycle's halo exchanges need)."""
    ok, msg = True, ""
    dim = da.getDim()
    if dim != 3:
        ok, msg = False, f"deepcd.petsc works on 3D DMDA grids, this DMDA is {dim}D"
    elif da.getDof() != 1 or da.getStencilWidth() < 1:
        ok, msg = False, "the DMDA needs dof 1 and a stencil width of at least 1"
    elif any(b != 0 for b in da.getBoundaryType()):
        ok, msg = False, "the DMDA must not be periodic (cells outside the grid are SOLID/AIR)"
    check_all(da.comm, ok, msg)


def check_aligned(da) -> None:
    """A clear error on every rank unless every rank's block starts at an even cell along
    every axis (the V-cycle's 2×2×2 blocks may not straddle ranks). Collective."""
    starts = [lo for lo, _ in owned_box(da)]
    check_all(
        da.comm,
        all(s % 2 == 0 for s in starts),
        f"the DMDA's ownership ranges must be even along every axis (this rank's block starts "
        f"at {tuple(starts)}; the V-cycle's 2×2×2 blocks may not straddle ranks): create it "
        "with deepcd.petsc.create_dmda",
    )


def flags_vec(da, flags: np.ndarray):
    """The cell flags as a DMDA global vector (float64 values 0/1/2). `flags`: the whole
    grid (nx, ny, nz) — each rank takes its block — or this rank's block. Collective; a clear
    error on every rank when a rank's array matches neither or holds other values."""
    check_dmda(da)
    flags = np.asarray(flags)
    whole, own = grid_shape(da), box_shape(owned_box(da))
    ok, msg = True, ""
    if flags.dtype.kind not in "iub":
        ok, msg = False, f"flags must be an integer array of cell flags, got dtype {flags.dtype}"
    elif flags.shape == whole:
        flags = flags[tuple(slice(lo, hi) for lo, hi in owned_box(da))]
    elif flags.shape != own:
        ok = False
        msg = (
            f"flags of shape {flags.shape} match neither the DMDA's grid {whole} nor this "
            f"rank's block {own}"
        )
    if ok and flags.size and (flags.min() < FLUID or flags.max() > AIR):
        ok, msg = False, "flags may only hold FLUID=0, SOLID=1, AIR=2"
    check_all(da.comm, ok, msg)
    vec = da.createGlobalVec()
    vec.array[:] = flags.astype(np.float64).ravel()
    return vec


def to_local(da, vec) -> np.ndarray:
    """The ghosted block of a DMDA global vector as a 3D numpy array (a copy)."""
    loc = da.createLocalVec()
    da.globalToLocal(vec, loc)
    out = loc.array.reshape(box_shape(ghost_box(da))).copy()
    loc.destroy()
    return out


def local_flags(da, fvec, boundary) -> np.ndarray:
    """int8 flags of this rank's ghosted block padded by one more cell on every side: the
    boundary flag on the grid's faces, SOLID past a neighbour rank's ghost layer (cells whose
    own stencil does not matter)."""
    g = np.rint(to_local(da, fvec)).astype(np.int8)
    bc = normalize_boundary(boundary, 3)
    gh, whole = ghost_box(da), grid_shape(da)
    out = np.full(tuple(n + 2 for n in g.shape), SOLID, dtype=np.int8)
    out[1:-1, 1:-1, 1:-1] = g
    for a in range(3):
        lo = [slice(1, -1)] * 3
        if gh[a][0] == 0:
            lo[a] = slice(0, 1)
            out[tuple(lo)] = bc[2 * a]
        hi = [slice(1, -1)] * 3
        if gh[a][1] == whole[a]:
            hi[a] = slice(-1, None)
            out[tuple(hi)] = bc[2 * a + 1]
    return out


def flag_stencil(padded: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The flags' Laplacian on the block inside `padded` (`local_flags`): diag (float64; the
    count of non-SOLID neighbours on FLUID cells, 0 elsewhere) and the face weights per axis
    (1 between two FLUID cells). Cells of the ghost layer get a diag from partial information:
    `deepcd.petsc.hierarchy` replaces it by its owner's value."""
    inner = padded[1:-1, 1:-1, 1:-1]
    fluid = inner == FLUID
    diag = np.zeros(inner.shape)
    for a in range(3):
        for step in (0, 2):
            sl = [slice(1, -1)] * 3
            sl[a] = slice(step, step + inner.shape[a])
            diag += padded[tuple(sl)] != SOLID
    diag[~fluid] = 0.0
    links = []
    for a in range(3):
        n = inner.shape[a]
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[a], hi[a] = slice(0, n - 1), slice(1, n)
        links.append((fluid[tuple(lo)] & fluid[tuple(hi)]).astype(np.float64))
    return diag, links


def matrix_stencil(da, A, fluid: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The operator's 7-point stencil on this rank's ghosted block, read from the assembled
    matrix `A` (its rows of the owned cells): diag and the face weights w_ij = −a_ij per axis
    (float64, shapes as `flag_stencil`), kept only on FLUID cells (`fluid`, a bool array of the
    ghosted block) and faces between two of them. The ghost layer's diag is left 0 (its owners
    have it). A clear error on every rank when A couples cells that are not face neighbours or
    has a positive off-diagonal entry. Collective."""
    from deepcd.kernels.csr_stencil import csr_to_stencil

    PETSc = require()
    gh = box_shape(ghost_box(da))
    own = np.arange(int(np.prod(gh)), dtype=np.int64).reshape(gh)[interior(da)].ravel()
    indptr, cols, vals = A.getValuesCSR()
    q = da.getLGMap().applyInverse(np.asarray(cols, dtype=PETSc.IntType)).astype(np.int64)
    diag = np.zeros(gh)
    links = []
    for a in range(3):
        shape = list(gh)
        shape[a] -= 1
        links.append(np.zeros(shape))
    stray, positive = csr_to_stencil(
        np.asarray(indptr, dtype=np.int64),
        q,
        np.asarray(vals, dtype=np.float64),
        own,
        np.array(gh, dtype=np.int64),
        diag,
        *links,
    )
    check_all(
        da.comm,
        stray == 0 and positive == 0,
        "the operator is not a 7-point stencil on the DMDA's grid with non-positive couplings "
        f"({stray} entries off the stencil, {positive} positive couplings; deepcd.petsc reads "
        "its V-cycle's level 0 from it)",
    )
    diag[~fluid] = 0.0
    for a, w in enumerate(links):
        n = gh[a]
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[a], hi[a] = slice(0, n - 1), slice(1, n)
        w[~(fluid[tuple(lo)] & fluid[tuple(hi)])] = 0.0
    return diag, links


def laplacian(da, flags, boundary=SOLID):
    """The flags' pressure Laplacian as a PETSc AIJ matrix on the DMDA's vectors: the rows of
    FLUID cells with a positive diagonal as `deepcd.problems.assembly.laplacian_csr`, every
    other row the identity (a right-hand side that is 0 there keeps the solution 0 there).
    flags: a numpy grid or block (`flags_vec`) or that DMDA vector. Collective."""
    PETSc = require()
    fvec = flags if isinstance(flags, PETSc.Vec) else flags_vec(da, flags)
    diag, links = flag_stencil(local_flags(da, fvec, boundary))
    if fvec is not flags:
        fvec.destroy()
    return _assemble(da, diag, links)


def stencil_matrix(da, diag: np.ndarray, links: Sequence[np.ndarray]):
    """A variable-coefficient operator as a PETSc AIJ matrix on the DMDA's vectors, from its
    grid stencil on the whole grid — diag (nx, ny, nz) and face weights links[a] (that axis one
    shorter), as `Problem.grid_stencil` — each rank reading its block: rows with a positive
    diagonal get diag and −w to each neighbour with w > 0, other rows the identity."""
    gh = ghost_box(da)
    sl = tuple(slice(lo, hi) for lo, hi in gh)
    d = np.asarray(diag[sl], dtype=np.float64)  # numpy arrays or h5py datasets: the block only
    faces = []
    for a, w in enumerate(links):
        fs = list(sl)
        fs[a] = slice(gh[a][0], gh[a][1] - 1)
        faces.append(np.asarray(w[tuple(fs)], dtype=np.float64))
    return _assemble(da, d, faces)


def _assemble(da, diag: np.ndarray, links: list[np.ndarray]):
    """The AIJ matrix of a stencil on this rank's ghosted block (rows: the owned cells)."""
    PETSc = require()
    gh = box_shape(ghost_box(da))
    inner = interior(da)
    lidx = np.arange(int(np.prod(gh)), dtype=np.int64).reshape(gh)
    own = lidx[inner].ravel()
    d_own = diag[inner].ravel()
    rows = [own]
    cols = [own]
    vals = [np.where(d_own > 0, d_own, 1.0)]
    unknown = np.zeros(gh, dtype=bool)
    unknown[inner] = diag[inner] > 0
    for a in range(3):
        n = gh[a]
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[a], hi[a] = slice(0, n - 1), slice(1, n)
        face = links[a] > 0
        for src, dst in ((lo, hi), (hi, lo)):
            on = face & unknown[tuple(src)]
            rows.append(lidx[tuple(src)][on])
            cols.append(lidx[tuple(dst)][on])
            vals.append(-links[a][on])
    lg = da.getLGMap()
    i = lg.apply(np.concatenate(rows).astype(PETSc.IntType))
    j = lg.apply(np.concatenate(cols).astype(PETSc.IntType))
    v = np.concatenate(vals)
    n_own = len(own)
    r0 = int(lg.apply(np.array([own[0]], dtype=PETSc.IntType))[0]) if n_own else 0
    order = np.lexsort((j, i))
    i, j, v = i[order] - r0, j[order], v[order]
    indptr = np.zeros(n_own + 1, dtype=PETSc.IntType)
    np.cumsum(np.bincount(i, minlength=n_own), out=indptr[1:])
    total = int(np.prod(grid_shape(da)))
    A = PETSc.Mat().createAIJ(size=((n_own, total), (n_own, total)), comm=da.comm)
    A.setPreallocationCSR((indptr, j.astype(PETSc.IntType), v))
    A.assemble()
    return A
