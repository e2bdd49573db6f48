"""deepcd: Poisson pressure solvers — learned conjugate directions beside the classical methods."""

from deepcd import threads  # noqa: F401 - first: sets OMP_WAIT_POLICY before numba/torch load
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
