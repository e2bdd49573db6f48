"""deepcd's learned V-cycle as a PETSc preconditioner, distributed over MPI on a DMDA.

    from petsc4py import PETSc
    import deepcd.petsc as dp
    da = dp.create_dmda(flags.shape)                       # aligned ownership ranges
    A = dp.laplacian(da, flags)                            # the flags' pressure Laplacian
    #   (or dp.stencil_matrix(da, diag, links): variable coefficients)
    ksp = PETSc.KSP().create(da.comm); ksp.setOperators(A); ksp.setType("cg")
    dp.set_preconditioner(ksp, flags=flags)                # or -pc_type python
    ...                                                    #  -pc_python_type deepcd.petsc.VCycle
    dp.cleanup()                                           # under MPI: on every rank, at the end

Needs petsc4py (and mpi4py): `./scripts/bootstrap.sh --petsc`. Importing this package
without them works; `require()` raises an ImportError that says how to install them.
"""

from __future__ import annotations

from deepcd.petsc.env import available, cleanup, require, versions

__all__ = [
    "VCycle",
    "available",
    "cleanup",
    "create_dmda",
    "laplacian",
    "require",
    "set_preconditioner",
    "stencil_matrix",
    "versions",
]


def __getattr__(name: str):
    if name in ("VCycle", "set_preconditioner", "attach"):
        from deepcd.petsc import pc

        return getattr(pc, name)
    if name in ("create_dmda", "laplacian", "stencil_matrix", "flags_vec"):
        from deepcd.petsc import grid

        return getattr(grid, name)
    raise AttributeError(f"module 'deepcd.petsc' has no attribute {name!r}")
