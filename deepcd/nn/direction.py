"""A trained network as DCDM's direction source: fluid vector in, fluid vector out."""

from __future__ import annotations

import numpy as np
import torch

from deepcd.kernels.aggregate import small as serial_below
from deepcd.kernels.vector import gather_checked, scatter
from deepcd.problems.flags import FLUID
from deepcd.problems.problem import Problem


def apply_network(
    model, r: torch.Tensor, flags, boundary, operator=None, levels=None
) -> torch.Tensor:
    """model(r, flags, boundary) — the call every direction network takes — with the system's
    variable-coefficient `GridLaplacian` as `operator=` where there is one (a network that
    builds its levels from the operator reads it; deepcd's networks all accept it), and
    `levels=` the hierarchy the network built for them, where given (the V-cycle)."""
    kwargs = {}
    if operator is not None:
        kwargs["operator"] = operator
    if levels is not None:
        kwargs["levels"] = levels
    return model(r, flags, boundary, **kwargs)


class NetworkDirection:
    """q = f(r) for `dcdm`: scatters r (float64 (n,)) onto the grid, runs the network on
    `device` in `dtype` under inference mode, gathers the FLUID cells back as float64.

    The grid buffer and the index of the fluid cells are allocated once per problem.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        problem: Problem,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        dim = getattr(model, "dim", None)
        if dim is not None and dim != problem.ndim:
            raise ValueError(
                f"the model is for {dim}D grids but the problem is {problem.ndim}D "
                f"(shape {problem.shape}); use a {problem.ndim}D model"
            )
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.dtype = dtype
        flat = np.flatnonzero(problem.flags.ravel() == FLUID)
        self.flags = torch.tensor(problem.flags, device=self.device)[None, None]
        self.boundary = tuple(problem.boundary)
        # a variable-coefficient problem: the network reads A's own stencil
        self.operator = None
        if problem.has_coefficients:
            from deepcd.nn.stencil import GridLaplacian

            self.operator = GridLaplacian.from_problem(problem, self.device, torch.float64)
        self.grid = torch.zeros((1, 1, *problem.shape), dtype=dtype, device=self.device)
        # the numba scatter/gather's index: int32 where it fits, half the bytes of int64 to
        # stream on every application
        small = problem.flags.size < 2**31
        self._index_np = flat.astype(np.int32 if small else np.int64, copy=False)
        # the torch index of the other devices and dtypes (the CPU host path needs none: at
        # 256³ an int64 copy held for the solve was 128 MiB)
        self.index = None if self._host else torch.as_tensor(flat, device=self.device)
        self.n = problem.n
        # their serial copies below SERIAL_BELOW unknowns: a parallel launch costs more than
        # the copy there (`benchmarks/smoother-bound`)
        self._scatter = serial_below(scatter, self.n)
        self._gather = serial_below(gather_checked, self.n)
        # an SPD network (vcycle) is a preconditioner: DCDM runs PCG with it as M
        self.spd = bool(getattr(model, "spd", False))
        self._levels = None  # the V-cycle's hierarchy for this system (`prepare`)

    @torch.inference_mode()
    def prepare(self) -> bool:
        """Build what the network derives from the grid before the first direction (the
        V-cycle's hierarchy), so a solve can report it as setup. True when it was already
        there (cached on the model from an earlier solve on the same grid)."""
        build = getattr(self.model, "hierarchy", None)
        if build is None:
            return True
        before = getattr(self.model, "_cache", None)
        dtype = self.dtype if self.dtype in (torch.float32, torch.float64) else torch.float32
        # the flags and boundary `__call__` passes, so its lookup finds these levels
        h = build(self.flags, tuple(self.grid.shape[2:]), self.boundary, dtype, 1, self.operator)
        warm = getattr(self.model, "prepare_inference", None)
        if warm is not None and self.device.type == "cpu":
            warm(h, dtype)  # the CPU kernels' arrays: setup, not the first direction's time
        # every direction applies the network to this one system: pass it these levels
        # rather than have it check each time that the flags and stencil are still its cached
        # ones (the grid is not a parameter; dtype is the one they were built in)
        if self.dtype == dtype:
            self._levels = h
        return before is not None and before[2] is h

    @property
    def _host(self) -> bool:
        """CPU in float32/64: numba scatters into the grid and gathers back (one pass each)."""
        return self.device.type == "cpu" and self.dtype in (torch.float32, torch.float64)

    @torch.inference_mode()
    def __call__(self, r: np.ndarray) -> np.ndarray:
        if self._host:
            out = np.empty(self.n)
            self.into(r, 1.0, out)
            return out
        flat = self.grid.view(-1)
        flat[self.index] = torch.from_numpy(np.ascontiguousarray(r)).to(self.device, self.dtype)
        q = apply_network(
            self.model, self.grid, self.flags, self.boundary, self.operator, self._levels
        )
        return q.reshape(-1)[self.index].to("cpu", torch.float64).numpy()

    @torch.inference_mode()
    def into(self, r: np.ndarray, scale: float, out: np.ndarray) -> bool:
        """out = f(scale · r) (float64 (n,), written in place); True when it is usable (finite
        and not all zero). On the CPU the scaling rides on the scatter and the check on the
        gather."""
        if not self._host:
            out[:] = self(r * scale)
            return bool(np.all(np.isfinite(out)) and np.any(out))
        flat = self.grid.view(-1).numpy()
        self._scatter(np.ascontiguousarray(r, dtype=np.float64), self._index_np, flat, scale)
        q = apply_network(
            self.model, self.grid, self.flags, self.boundary, self.operator, self._levels
        )
        grid = q.reshape(-1).contiguous().numpy()
        bad, nonzero = self._gather(grid, self._index_np, out)
        return bad == 0 and nonzero > 0
