"""One application of the learned V-cycle on a distributed hierarchy (float64).

The same cycle as `VCycleNet._cycle` — its smoothers (Clenshaw on the normalized stencil,
`deepcd.nn.fastpath.smooth`), residuals, transfers P = S_0⋯S_{d−1}P₀ and correction weights —
with the same numba kernels, run on each rank's block: before every kernel that reads
neighbours, the halo of its input is refreshed (`deepcd.petsc.halo`). At the gathered level the
restricted residual is collected on every rank (one Allgatherv), the serial cycle runs the
remaining levels (`VCycleNet._cycle` on the `tail` hierarchy) and each rank keeps its part.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from deepcd.kernels.aggregate import (
    axis_smooth,
    graph_matvec,
    grid_axis_smooth,
    prolong_copy,
    restrict_sum,
    small,
)
from deepcd.kernels.smoother import clenshaw_step, graph_clenshaw_step, stencil_residual
from deepcd.nn.fastpath import clenshaw_coefficients, smooth
from deepcd.petsc.halo import allgatherv
from deepcd.petsc.hierarchy import Distributed

C_SMOOTHER = 1.0 - 2.0**-8  # `VCycleNet._smoother`'s c


def warm_kernels() -> None:
    """Call the parallel and the serial copy (`small`) of every graph kernel once on a tiny
    float64 graph, so numba's cache is loaded before a timed solve."""
    x = np.ones(2)
    ip, ix, w = np.array([0, 1, 2]), np.array([1, 0], dtype=np.int32), np.ones(2)
    out = np.empty(2)
    for n in (0, 1 << 30):
        small(graph_clenshaw_step, n)(x, x, x, x, ip, ix, w, 1.0, 2.0, True, x, True, out)
        small(graph_matvec, n)(x, x, ip, ix, w, out)
        small(axis_smooth, n)(x, ip, ix, w, 0.25, out)
        small(restrict_sum, n)(x, ip, np.array([0, 1]), out)
        small(prolong_copy, n)(x, np.array([0, 1]), out)


class DistributedVCycle:
    """y = M r for this rank's owned cells, M the V-cycle of `net` (a `VCycleNet` without
    local weights) on the distributed hierarchy `hier`."""

    def __init__(self, net, hier: Distributed, comm):
        self.net, self.h, self.comm = net, hier, comm
        J = net._J
        with torch.no_grad():
            soft = [torch.softmax(net.smoothers[i].detach().double(), 0).numpy() for i in range(J)]
            self.betas = [clenshaw_coefficients(w, C_SMOOTHER) for w in soft]
            self.omegas = [
                [float(v) for v in net._omegas(i).detach().reshape(-1)] for i in range(J)
            ]
            self.corr = [float(F.softplus(net.corrections[i].detach()).double()) for i in range(J)]
        self.J, self.smooth = J, int(net.smooth)
        self.active = hier.grid.diag[hier.grid.inner] > 0
        warm_kernels()

    # -- level 0, on the ghosted block ---------------------------------------------------------
    def _grid_smoother(self, y: np.ndarray, i: int) -> np.ndarray:
        g = self.h.grid
        return smooth(clenshaw_step, g.shape, g.s * y, self.betas[i], g.s, (g.e, *g.nlinks), g.halo)

    def _grid_residual(self, r: np.ndarray, x: np.ndarray) -> np.ndarray:
        g = self.h.grid
        g.halo(x)
        out = np.empty_like(x)
        stencil_residual(r, x, g.diag, *g.links, out)
        return out

    def _grid_axes(self, v: np.ndarray, axes, omegas) -> np.ndarray:
        g = self.h.grid
        out = np.empty_like(v)
        for a in axes:
            g.halo(v)
            nlink, deg = g.axis[a]
            grid_axis_smooth(v, nlink, deg, a, omegas[a], out)
            v, out = out, v
        return v

    def _grid_cycle(self, r: np.ndarray) -> np.ndarray:
        g, i = self.h.grid, 0
        axes = [a for a, on in enumerate(g.halved) if on]
        om = self.omegas[0]
        x = self._grid_smoother(r, i)
        for _ in range(self.smooth - 1):
            x = x + self._grid_smoother(self._grid_residual(r, x), i)
        res = self._grid_axes(self._grid_residual(r, x), axes, om)
        n1 = len(g.mstart) - 1
        rc = np.empty(n1)
        restrict_sum(res.reshape(-1), g.mstart, g.members, rc)
        xc = self._cycle(1, rc)
        corr = np.empty(g.agg.shape[0])
        prolong_copy(xc, g.agg, corr)
        corr = self._grid_axes(corr.reshape(g.shape), axes[::-1], om)
        x = x + self.corr[i] * corr
        for _ in range(self.smooth):
            x = x + self._grid_smoother(self._grid_residual(r, x), i)
        return x

    # -- distributed graph levels ---------------------------------------------------------------
    def _graph_smoother(self, p, y: np.ndarray, i: int) -> np.ndarray:
        step = small(graph_clenshaw_step, p.n)
        args = (p.e, p.indptr, p.indices, p.nweight)
        return smooth(step, (p.n,), p.s * y, self.betas[i], p.s, args, p.halo)

    def _graph_residual(self, p, r: np.ndarray, x: np.ndarray) -> np.ndarray:
        p.halo(x)
        out = np.empty_like(x)
        small(graph_matvec, p.n)(x, p.d, p.indptr, p.indices, p.weight, out)
        return r - out

    def _graph_axes(self, p, v: np.ndarray, axes, omegas) -> np.ndarray:
        out = np.empty_like(v)
        for a in axes:
            p.halo(v)
            small(axis_smooth, p.n)(v, *p.split[a], omegas[a], out)
            v, out = out, v
        return v

    def _cycle(self, depth: int, r_own: np.ndarray) -> np.ndarray:
        """The cycle from level `depth` ≥ 1 on this rank's own values (n_own,)."""
        if depth == self.h.gathered:
            return self._gathered(r_own)
        p = self.h.graphs[depth - 1]
        i = min(depth, self.J - 1)
        om = self.omegas[i]
        axes = [a for a, on in enumerate(p.halved) if on]
        r = np.concatenate([r_own, np.zeros(p.n - p.n_own)])
        x = self._graph_smoother(p, r, i)
        for _ in range(self.smooth - 1):
            x = x + self._graph_smoother(p, self._graph_residual(p, r, x), i)
        res = self._graph_axes(p, self._graph_residual(p, r, x), axes, om)
        rc = np.empty(len(p.mstart) - 1)
        small(restrict_sum, p.n)(res, p.mstart, p.members, rc)
        xc = self._cycle(depth + 1, rc)
        corr = np.empty(p.n)
        small(prolong_copy, p.n)(xc, p.agg, corr)
        x = x + self.corr[i] * self._graph_axes(p, corr, axes[::-1], om)
        for _ in range(self.smooth):
            x = x + self._graph_smoother(p, self._graph_residual(p, r, x), i)
        return x[: p.n_own]

    def _gathered(self, r_own: np.ndarray) -> np.ndarray:
        h = self.h
        full = allgatherv(self.comm, np.ascontiguousarray(r_own, dtype=np.float64))
        canon = torch.from_numpy(np.ascontiguousarray(full[h.perm]))[:, None]
        with torch.no_grad():
            y = self.net._cycle(h.tail, h.gathered, canon).numpy().reshape(-1)
        return y[h.pos[h.offset : h.offset + h.n_own]]

    # -- the whole cycle ----------------------------------------------------------------------
    def apply(self, r: np.ndarray) -> np.ndarray:
        """M r for this rank's owned cells r (n_own_cells,) float64 in C order of its block;
        0 off the unknowns."""
        g = self.h.grid
        x = np.zeros(g.shape)
        x[g.inner] = r.reshape(self.active.shape) * self.active
        y = self._grid_cycle(x)
        return y[g.inner].reshape(-1)
