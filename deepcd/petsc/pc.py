"""The learned V-cycle as a PETSc preconditioner (a PC of type python).

One call:

    deepcd.petsc.set_preconditioner(ksp, flags, da=da, boundary=boundary, solver="vcycle-3d")

or, from options, after `deepcd.petsc.attach(da, flags, boundary)` and `ksp.setDM(da)`,
`ksp.setDMActive(False)`:

    -ksp_type cg -pc_type python -pc_python_type deepcd.petsc.VCycle
    [-deepcd_solver NAME_OR_PATH] [-deepcd_gather_below N]

The operator is a 7-point stencil on the DMDA's vectors — the flags' Laplacian
(`deepcd.petsc.laplacian`) or any variable-coefficient one (`deepcd.petsc.stencil_matrix`):
level 0 of the V-cycle is read from the assembled matrix on the FLUID cells of the flags
(the unknowns; other rows are ignored, the PC is the identity there). Models with
per-unknown local weights (config `local`) and models of another dimension are refused, with
the same error on every rank.
"""

from __future__ import annotations

import time

import numpy as np

from deepcd.petsc import grid as G
from deepcd.petsc.env import require
from deepcd.petsc.hierarchy import GATHER_BELOW, build
from deepcd.problems.flags import SOLID, normalize_boundary

_FLAGS, _BOUNDARY = "deepcd_flags", "deepcd_boundary"


def attach(da, flags, boundary=SOLID) -> None:
    """Store the cell flags (a numpy grid or block, or a DMDA vector) and the boundary on the
    DMDA, where `VCycle` finds them when it is selected from options. Collective."""
    PETSc = require()
    fvec = flags if isinstance(flags, PETSc.Vec) else G.flags_vec(da, flags)
    # this rank's block in a vector of its own (a DMDA vector cannot be composed with its DM)
    own = PETSc.Vec().createSeq(fvec.getLocalSize(), comm=PETSc.COMM_SELF)
    own.array[:] = fvec.array_r
    if fvec is not flags:
        fvec.destroy()
    bvec = PETSc.Vec().createSeq(6, comm=PETSc.COMM_SELF)
    bvec.array[:] = normalize_boundary(boundary, 3)
    da.compose(_FLAGS, own)
    da.compose(_BOUNDARY, bvec)
    own.destroy()  # the DM holds them now
    bvec.destroy()


def check_model(net, comm) -> None:
    """A clear error on every rank unless `net` is a 3D V-cycle network without local
    weights (what the distributed cycle applies). Collective."""
    arch = getattr(net, "arch", type(net).__name__)
    ok, msg = True, ""
    if arch != "vcycle":
        ok, msg = False, f"deepcd.petsc applies V-cycle models (arch 'vcycle'), got {arch!r}"
    elif net.dim != 3:
        ok, msg = False, f"the model is {net.dim}D but deepcd.petsc runs on 3D DMDA grids"
    elif net.local is not None:
        ok = False
        msg = (
            f"the model has per-unknown local weights (config local={net.config.get('local')}), "
            "which the PETSc preconditioner does not apply; use a model without them "
            "(e.g. the shipped vcycle-3d)"
        )
    G.check_all(comm, ok, msg)


def check_operator(A, da) -> None:
    """A clear error on every rank unless the operator's rows are the DMDA block's cells (its
    stencil is checked when level 0 is read from it: `grid.matrix_stencil`). Collective."""
    own = int(np.prod(G.box_shape(G.owned_box(da))))
    G.check_all(
        da.comm,
        A.getLocalSize()[0] == own,
        f"the operator's local rows {A.getLocalSize()[0]} do not match the DMDA block's "
        f"{own} cells",
    )


def load_model(solver=None):
    """A model from a solver name or folder (default: the shipped 3D solver), or `solver`
    itself when it already is a network."""
    import torch

    if isinstance(solver, torch.nn.Module):
        return solver.eval()
    from deepcd.nn.weights import default_solver, load_solver

    model, _ = load_solver(solver or default_solver(3))
    return model


class VCycle:
    """petsc4py python-PC context: y = M x, M the learned V-cycle (float64) distributed over
    the DMDA's ranks (`deepcd.petsc.hierarchy`, `deepcd.petsc.vcycle`)."""

    def __init__(
        self,
        flags=None,
        *,
        da=None,
        boundary=None,
        solver=None,
        gather_below: int = GATHER_BELOW,
    ):
        self.flags, self.da, self.boundary = flags, da, boundary
        self.solver, self.gather_below = solver, int(gather_below)
        self.cycle = None
        self.setup_s = 0.0
        self.applications = 0

    def setFromOptions(self, pc) -> None:
        PETSc = require()
        opts = PETSc.Options()
        if opts.hasName("deepcd_solver"):
            self.solver = opts.getString("deepcd_solver")
        self.gather_below = opts.getInt("deepcd_gather_below", self.gather_below)

    def _inputs(self, pc):
        PETSc = require()
        da = self.da if self.da is not None else pc.getDM()
        G.check_all(
            da.comm,
            da.getType() == "da",
            "the deepcd PC needs the DMDA: set_preconditioner(ksp, flags, da=da) or "
            "ksp.setDM(da) with deepcd.petsc.attach(da, flags, boundary)",
        )
        G.check_dmda(da)
        G.check_aligned(da)
        flags = self.flags
        boundary = self.boundary
        if flags is None:
            flags = da.query(_FLAGS)
            bvec = da.query(_BOUNDARY)
            G.check_all(
                da.comm,
                flags is not None,
                "no cell flags: call deepcd.petsc.attach(da, flags, boundary) first",
            )
            if boundary is None and bvec is not None:
                boundary = tuple(int(v) for v in bvec.array_r)
            if flags is not None:  # this rank's block
                shape = G.box_shape(G.owned_box(da))
                flags = np.rint(flags.array_r).astype(np.int8).reshape(shape)
        fvec = flags if isinstance(flags, PETSc.Vec) else G.flags_vec(da, flags)
        return da, fvec, SOLID if boundary is None else boundary

    def setUp(self, pc) -> None:
        from deepcd.nn.networks import coarsening_plan
        from deepcd.petsc.vcycle import DistributedVCycle

        t = time.perf_counter()
        da, fvec, boundary = self._inputs(pc)
        net = load_model(self.solver)
        check_model(net, da.comm)
        A, _ = pc.getOperators()
        check_operator(A, da)
        plan = coarsening_plan(G.grid_shape(da), net.coarsest)
        if self.cycle is not None:
            self.cycle.h.destroy()
        hier = build(da, fvec, boundary, plan, gather_below=self.gather_below, A=A)
        self.cycle = DistributedVCycle(net, hier, da.comm)
        self.setup_s = time.perf_counter() - t

    def apply(self, pc, x, y) -> None:
        r = x.array_r
        out = self.cycle.apply(r)
        off = ~self.cycle.active.reshape(-1)
        out[off] = r[off]  # the identity rows of cells that are not unknowns
        y.array[:] = out
        self.applications += 1

    applyTranspose = apply  # symmetric

    def view(self, pc, viewer) -> None:
        if self.cycle is None:
            return
        s = self.cycle.h.stats
        viewer.printfASCII(
            f"  deepcd V-cycle: levels {[lv['unknowns'] for lv in s['levels']]} distributed, "
            f"gathered at level {s['gathered_level']} ({s['gathered_unknowns']} unknowns)\n"
        )

    def destroy(self, pc) -> None:
        if self.cycle is not None:
            self.cycle.h.destroy()
            self.cycle = None


def set_preconditioner(
    ksp,
    flags,
    *,
    da=None,
    boundary=SOLID,
    solver=None,
    gather_below: int = GATHER_BELOW,
) -> VCycle:
    """Make the learned V-cycle `ksp`'s preconditioner (PC type python). flags: the cell
    flags (numpy grid or block, or a DMDA vector) of `da` (default: the KSP's DM); solver: a
    shipped solver name, a folder or a network (default: the shipped 3D solver). Validates the
    model, the grid and the flags collectively now. Returns the PC context."""
    PETSc = require()
    if da is None:
        da = ksp.getDM()
    net = load_model(solver)
    check_model(net, da.comm)
    ctx = VCycle(flags, da=da, boundary=boundary, solver=net, gather_below=gather_below)
    _, ctx.flags, _ = ctx._inputs(None)  # validated now, on every rank
    A = ksp.getOperators()[0]
    if A.getType() is not None:  # operators set: check them now too
        check_operator(A, da)
    pc = ksp.getPC()
    pc.setType(PETSc.PC.Type.PYTHON)
    pc.setPythonContext(ctx)
    return ctx
