"""The V-cycle below a graph level with every array and kernel resolved once (CPU inference).

`VCycleNet._cycle` on a graph level makes about 25 numba calls per V-cycle, each behind a few
Python helpers (cached host arrays, layouts, torch↔numpy views, parameter lookups). On the
coarse levels of a 64³ problem — 32k, 4k, 516 and 64 unknowns — that bookkeeping took as long
as the kernels (probe: 1.6 of 3.5 ms per V-cycle below level 0; ~0.4 ms per level of 516
unknowns, whose kernels take ~0.1 ms). `GraphCycle` holds each level's operations as closures
over its arrays and kernels, made once per hierarchy and parameter state
(`VCycleNet._graph_cycle`), and runs the same kernels on the same arrays in the same order:
the V-cycle, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from deepcd.nn.fastpath import smooth as clenshaw


@dataclass
class GraphLevelOps:
    """One graph level's operations on vectors (n,) of its unknowns, in one float dtype.

    smooth(y, into=None): the learned smoother S y, added into `into` (returned) when given;
    residual(r, x): r − A x; restrict(v): Pᵀ v on the next level (None on the last level);
    prolong(e): P e from the next level; correction: c of x + c·P e. A last level solved by
    its dense inverse (`GraphCycle.coarsest`) needs none of them.
    """

    n: int
    smooth: Callable[..., np.ndarray] | None = None
    residual: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    restrict: Callable[[np.ndarray], np.ndarray] | None = None
    prolong: Callable[[np.ndarray], np.ndarray] | None = None
    correction: float = 1.0


def smoother_op(step, s: np.ndarray, beta: np.ndarray, operator_args: tuple):
    """smooth(y, into=None) = s·Σ_k β_k T_k(I − Â)(s·y) by Clenshaw with `step` (a graph
    Clenshaw kernel and its arrays, `deepcd.kernels.ell.clenshaw_step`)."""
    n = s.shape[0]

    def smooth(y: np.ndarray, into: np.ndarray | None = None) -> np.ndarray:
        out = clenshaw(step, (n,), s * y, beta, s, operator_args)
        if into is None:
            return out
        into += out
        return into

    return smooth


def residual_op(kernel, diag: np.ndarray, link_args: tuple):
    """residual(r, x) = r − A x with `kernel` (`deepcd.kernels.ell.residual`)."""

    def residual(r: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        kernel(r, x, diag, *link_args, out)
        return out

    return residual


def axis_passes(kernel, splits: list[tuple], omegas: list[float], v: np.ndarray) -> np.ndarray:
    """The transfer smoothings S_a for each (axis arrays, ω) in turn, into two new arrays
    taken in turn (v, the caller's, is never written)."""
    bufs = [np.empty_like(v) for _ in range(min(len(splits), 2))]
    for k, (split, omega) in enumerate(zip(splits, omegas, strict=True)):
        out = bufs[k % 2]
        kernel(v, *split, omega, out)
        v = out
    return v


def restrict_op(axis_kernel, splits, omegas, sum_kernel, mstart, members, m: int, dtype):
    """restrict(v) = P₀ᵀ S_{last} ⋯ S_{first} v (m,): the transfer smoothings of the halved
    axes in order, then the sum over each coarse unknown's members."""

    def restrict(v: np.ndarray) -> np.ndarray:
        v = axis_passes(axis_kernel, splits, omegas, v)
        out = np.empty(m, dtype=dtype)
        sum_kernel(v, mstart, members, out)
        return out

    return restrict


def prolong_op(copy_kernel, agg: np.ndarray, axis_kernel, splits, omegas, dtype):
    """prolong(e) = S_{first} ⋯ S_{last} P₀ e: `restrict_op`'s exact transpose (`splits` and
    `omegas` in the restriction's order)."""
    splits, omegas = splits[::-1], omegas[::-1]

    def prolong(e: np.ndarray) -> np.ndarray:
        out = np.empty(agg.shape[0], dtype=dtype)
        copy_kernel(e, agg, out)
        return axis_passes(axis_kernel, splits, omegas, out)

    return prolong


def dense_op(inverse: torch.Tensor):
    """coarsest(r) = M r with the coarsest level's dense inverse (n, n) in r's dtype."""

    def coarsest(r: np.ndarray) -> np.ndarray:
        return (inverse @ torch.from_numpy(r)[:, None]).numpy().reshape(-1)

    return coarsest


class GraphCycle:
    """One V-cycle over graph levels (`GraphLevelOps`, finest first): `smooth` pre- and
    post-smoothings, the last level solved by `coarsest` (its dense inverse) or, without it,
    by `coarse_sweeps` smoothings. Called with r (n,) of the first level, returns x (n,)."""

    def __init__(
        self,
        levels: list[GraphLevelOps],
        smooth: int,
        coarsest: Callable[[np.ndarray], np.ndarray] | None,
        coarse_sweeps: int,
    ):
        self.levels = levels
        self.smooth = int(smooth)
        self.coarsest = coarsest
        self.coarse_sweeps = int(coarse_sweeps)

    def __call__(self, r: np.ndarray) -> np.ndarray:
        return self._cycle(0, r)

    def _cycle(self, k: int, r: np.ndarray) -> np.ndarray:
        lv = self.levels[k]
        if k == len(self.levels) - 1:
            if self.coarsest is not None:
                return self.coarsest(r)
            x = lv.smooth(r)
            for _ in range(self.coarse_sweeps - 1):
                lv.smooth(lv.residual(r, x), x)
            return x
        x = lv.smooth(r)
        for _ in range(self.smooth - 1):
            lv.smooth(lv.residual(r, x), x)
        e = self._cycle(k + 1, lv.restrict(lv.residual(r, x)))
        # torch's add with alpha, as the unplanned V-cycle takes it (the same rounding)
        torch.from_numpy(x).add_(torch.from_numpy(lv.prolong(e)), alpha=lv.correction)
        for _ in range(self.smooth):
            lv.smooth(lv.residual(r, x), x)
        return x
