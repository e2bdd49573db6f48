"""The one result type every deepcd solver returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# info codes, with scipy's meaning: 0 converged, > 0 iterations done without converging,
# < 0 breakdown.
BREAKDOWN_INDEFINITE = -1  # p·Ap <= 0: A is not positive definite (or not symmetric)
BREAKDOWN_PRECONDITIONER = -2  # r·M⁻¹r <= 0: the preconditioner is not positive definite
BREAKDOWN_NONFINITE = -3  # NaN/Inf appeared in the iteration
BREAKDOWN_STAGNATION = -4  # no progress is possible (e.g. Newton's step search failed)


@dataclass
class SolveResult:
    """Outcome of one solve.

    x: float64 (n,) solution. residuals: float64 (iterations + 1,), the 2-norm of the residual
    b - Ax the iteration tracks, starting with the initial one; times: seconds since the
    start of the solve phase at each residual entry. final_relres: the *true* ‖b - Ax‖/‖b‖
    recomputed at the end. setup_s: preconditioner/hierarchy construction; solve_s: the
    iteration itself.
    """

    x: np.ndarray
    converged: bool
    info: int
    iterations: int
    residuals: np.ndarray
    times: np.ndarray
    setup_s: float
    solve_s: float
    final_relres: float
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    @property
    def total_s(self) -> float:
        return self.setup_s + self.solve_s

    def summary(self) -> str:
        state = "converged" if self.converged else f"NOT converged (info={self.info})"
        return (
            f"{self.method}: {state} in {self.iterations} iterations, "
            f"true relative residual {self.final_relres:.2e}, "
            f"setup {self.setup_s:.3f} s, solve {self.solve_s:.3f} s"
            + (f" — {self.message}" if self.message else "")
        )


class History:
    """Residual norms and their timestamps, one entry per iteration (plus the initial one)."""

    def __init__(self, t0: float, capacity: int = 1024):
        self.t0 = t0
        self._res = np.empty(capacity)
        self._time = np.empty(capacity)
        self.size = 0

    def append(self, resnorm: float, now: float) -> None:
        if self.size == self._res.size:
            self._res = np.concatenate([self._res, np.empty_like(self._res)])
            self._time = np.concatenate([self._time, np.empty_like(self._time)])
        self._res[self.size] = resnorm
        self._time[self.size] = now - self.t0
        self.size += 1

    @property
    def residuals(self) -> np.ndarray:
        return self._res[: self.size].copy()

    @property
    def times(self) -> np.ndarray:
        return self._time[: self.size].copy()
