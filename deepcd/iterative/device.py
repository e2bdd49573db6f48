"""What the device (torch) iterations share: the grid operator, batched host checks, results.

Vectors are float64 fields (1, 1, *grid) with zeros off FLUID cells; A is the matrix-free
`GridLaplacian` times a positive `scale`. The host reads residual norms only at checks — at
most `check_every` iterations apart, scheduled by extrapolating the convergence rate to the
tolerance (`next_check`) — in one transfer, so an iteration itself issues no host sync.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from deepcd.iterative.result import History, SolveResult
from deepcd.nn.stencil import GridLaplacian
from deepcd.problems.flags import FLUID
from deepcd.problems.problem import Problem

F64 = torch.float64


def next_check(it: int, initial: float, current: float, tol: float, check_every: int) -> int:
    """The iteration of the next host check, after a check at `it`.

    Extrapolates the mean geometric rate so far (from the `initial` residual norm to the
    `current` one over `it` iterations) to the iteration where the residual reaches `tol`, so a
    fast method is checked right when it should converge and a slow one only every
    `check_every` iterations; the gap never exceeds `it` (checks at 1, 2, 4, … at first).
    """
    if it >= 1 and 0 < current < initial and tol > 0:
        rate = math.log(current / initial) / it
        remaining = math.ceil(math.log(tol / current) / rate) if current > tol else 1
        # never more than doubling the iterations done: an early rate is pessimistic
        return it + min(max(remaining, 1), check_every, it)
    return it + min(check_every, it)


class DeviceGrid:
    """A problem's operator scale·L on `device`, with the FLUID-vector ↔ grid maps.

    Building it starts the GPU peak-memory count (CUDA); `peak_mib()` reads it.
    """

    def __init__(self, problem: Problem, device: str | torch.device, scale: float = 1.0):
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.scale = float(scale)
        self.lap = GridLaplacian.from_problem(problem, device=self.device, dtype=F64)
        flat = np.flatnonzero(problem.flags.ravel() == FLUID)
        self.index = torch.as_tensor(flat, device=self.device)
        self.shape = (1, 1, *problem.shape)
        self.fluid = self.lap.fluid
        diag = self.lap.diag
        self.inv_diag = torch.where(
            diag > 0, 1.0 / (self.scale * diag.clamp_min(1e-300)), torch.zeros_like(diag)
        )

    def to_grid(self, v: np.ndarray) -> torch.Tensor:
        g = torch.zeros(self.shape, dtype=F64, device=self.device)
        g.view(-1)[self.index] = torch.tensor(v, dtype=F64, device=self.device)
        return g

    def from_grid(self, g: torch.Tensor) -> np.ndarray:
        return g.reshape(-1)[self.index].cpu().numpy()

    def A(self, v: torch.Tensor) -> torch.Tensor:
        return self.lap(v) * self.scale

    def peak_mib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20


class HostChecks:
    """Residual norms written on the device each iteration, read by the host in batches."""

    def __init__(self, hist: History, tol: float, check_every: int, device: torch.device):
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.hist, self.tol, self.check_every = hist, tol, check_every
        self.initial = float(hist.residuals[0])
        self.norms = torch.zeros(check_every, dtype=F64, device=device)
        self.last, self.at = 0, 1

    def record(self, it: int, rnorm: torch.Tensor) -> bool:
        """Store iteration `it`'s residual norm; True when the host should check now."""
        self.norms[it - self.last - 1] = rnorm
        return it >= self.at

    def read(self, it: int) -> list[float]:
        """The norms since the last check (appended to the history); schedules the next."""
        batch = self.norms[: it - self.last].tolist()
        now = time.perf_counter()
        for value in batch:
            self.hist.append(value, now)
        self.last = it
        self.at = next_check(it, self.initial, min(batch), self.tol, self.check_every)
        return batch


def device_result(
    grid: DeviceGrid,
    x: torch.Tensor,
    b: torch.Tensor,
    hist: History,
    *,
    converged: bool,
    info: int,
    iterations: int,
    setup_s: float,
    method: str,
    settings: dict,
    message: str = "",
) -> SolveResult:
    """A `SolveResult` from a device iteration; the true residual is recomputed on the device
    and the GPU peak memory (CUDA) goes into `settings["gpu_peak_mib"]`."""
    bnorm = float(torch.linalg.vector_norm(b))
    true = float(torch.linalg.vector_norm(b - grid.A(x)))
    peak = grid.peak_mib()
    if peak is not None:
        settings["gpu_peak_mib"] = peak
    return SolveResult(
        x=grid.from_grid(x),
        converged=converged,
        info=info,
        iterations=iterations,
        residuals=hist.residuals,
        times=hist.times,
        setup_s=setup_s,
        solve_s=time.perf_counter() - hist.t0,
        final_relres=true / bnorm if bnorm > 0 else true,
        method=method,
        settings=settings,
        message=message,
    )
