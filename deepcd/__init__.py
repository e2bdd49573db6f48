"""deepcd: Poisson pressure solvers — learned conjugate directions beside the classical methods."""

# first: the OpenMP wait policy before numba/torch load it, and under mpiexec a numba cache
# folder per rank before any kernel is decorated
from deepcd import jitcache, threads  # noqa: F401
from deepcd._version import __version__
from deepcd.api import (
    METHODS,
    GridMismatchWarning,
    NetworkUnusedWarning,
    solve,
    solve_result,
)
from deepcd.iterative.nullspace import SingularSystemWarning
from deepcd.iterative.result import SolveResult

__all__ = [
    "METHODS",
    "GridMismatchWarning",
    "NetworkUnusedWarning",
    "SingularSystemWarning",
    "SolveResult",
    "__version__",
    "solve",
    "solve_result",
]
