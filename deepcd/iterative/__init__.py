"""The solvers: CG, PCG, stationary multigrid cycles, approximate-Hessian Newton."""

from deepcd.iterative.krylov import cg, stationary
from deepcd.iterative.newton import newton
from deepcd.iterative.preconditioners import (
    AMGPreconditioner,
    IncompleteCholeskyPreconditioner,
    Jacobi,
    Preconditioner,
    UserPreconditioner,
    make_preconditioner,
)
from deepcd.iterative.result import SolveResult

__all__ = [
    "AMGPreconditioner",
    "IncompleteCholeskyPreconditioner",
    "Jacobi",
    "Preconditioner",
    "SolveResult",
    "UserPreconditioner",
    "cg",
    "make_preconditioner",
    "newton",
    "stationary",
]
