"""The DCDM loop is never much worse than the preconditioners it holds.

Invariant (issue: "a safeguard that is provably never worse"): DCDM's iterations are within
1.25× (+2) of PCG with the same network as M (when the network is SPD) and of PCG with the
safeguard's M (CG when there is none) — on strips, near-eigenvector right-hand sides, thin
walls and mazes, with SPD networks and with deliberately bad ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepcd.iterative.dcdm import dcdm
from deepcd.iterative.krylov import cg
from deepcd.iterative.preconditioners import Preconditioner, make_preconditioner
from deepcd.nn import build_network
from deepcd.nn.direction import NetworkDirection
from deepcd.operators import CSROperator
from deepcd.problems import AIR, FLUID, SOLID, from_flags, scene


def strip(length: int = 400, width: int = 7):
    """A long 2D channel, SOLID walls, an AIR end: nearly one-dimensional, κ ~ length²."""
    flags = np.zeros((length, width), np.int8)
    rng = np.random.default_rng(0)
    return from_flags(flags, rng.standard_normal(flags.size), boundary=(SOLID, AIR, SOLID, SOLID))


def checkerboard(n: int = 24):
    """The open box with a checkerboard right-hand side: (nearly) the top eigenvector."""
    flags = np.zeros((n, n, n), np.int8)
    b = (np.indices(flags.shape).sum(axis=0) % 2 * 2 - 1).astype(float).ravel()
    b += 1e-3 * np.random.default_rng(1).standard_normal(b.size)
    return from_flags(flags, b, boundary=(SOLID,) * 5 + (AIR,))


def smooth_mode(n: int = 24):
    """The open box with the lowest sine mode as the right-hand side (the other end)."""
    flags = np.zeros((n, n, n), np.int8)
    i, j, k = np.indices(flags.shape) + 0.5
    b = np.sin(np.pi * i / n) * np.sin(np.pi * j / n) * np.sin(np.pi * k / (2 * n))
    return from_flags(flags, b.ravel(), boundary=(SOLID,) * 5 + (AIR,))


def baffles(shape):
    """One-cell walls across axis 0, one hole each on alternating sides, AIR on top."""
    flags = np.zeros(shape, np.int8)
    for i, x in enumerate(range(3, shape[0] - 2, 4)):
        flags[x] = SOLID
        hole = slice(0, 2) if i % 2 == 0 else slice(shape[1] - 2, shape[1])
        flags[(x, hole)] = FLUID
    rng = np.random.default_rng(2)
    b = rng.standard_normal(int((flags == FLUID).sum()))
    return from_flags(flags, b, boundary=(SOLID,) * (2 * len(shape) - 1) + (AIR,))


def maze(n: int = 33, seed: int = 3):
    """A 2D maze with one-cell corridors and walls (randomized depth-first search), AIR exit."""
    m = n // 2
    flags = np.full((2 * m + 1, 2 * m + 1), SOLID, np.int8)
    rng = np.random.default_rng(seed)
    seen = np.zeros((m, m), bool)
    stack = [(0, 0)]
    seen[0, 0] = True
    flags[1, 1] = FLUID
    while stack:
        i, j = stack[-1]
        options = [
            (i + di, j + dj)
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))
            if 0 <= i + di < m and 0 <= j + dj < m and not seen[i + di, j + dj]
        ]
        if not options:
            stack.pop()
            continue
        k, m2 = options[rng.integers(len(options))]
        seen[k, m2] = True
        flags[2 * k + 1, 2 * m2 + 1] = FLUID
        flags[i + k + 1, j + m2 + 1] = FLUID
        stack.append((k, m2))
    flags[-1, -2] = FLUID  # the exit cell, next to the AIR face
    b = rng.standard_normal(int((flags == FLUID).sum()))
    return from_flags(flags, b, boundary=(SOLID, AIR, SOLID, SOLID))


CASES = {
    "strip": strip,
    "checkerboard": checkerboard,
    "smooth-mode": smooth_mode,
    "baffles-2d": lambda: baffles((64, 48)),
    "baffles-3d": lambda: baffles((24, 20, 16)),
    "maze": maze,
    "smoke": lambda: scene("smoke-obstacles", (24, 24, 24), seed=4),
    # the hard-geometry scenes themselves (deepcd.problems.scenes_hard)
    "scene-baffles": lambda: scene("baffles", (24, 20, 16), seed=5),
    "scene-maze": lambda: scene("maze", (16, 16, 16), seed=6),
    "scene-maze-2d": lambda: scene("maze", (48, 48), seed=6, corridor=2),
    "scene-porous": lambda: scene("porous", (20, 20, 20), seed=7),
    "scene-splash": lambda: scene("splash", (20, 20, 24), seed=8),
    "scene-pockets": lambda: scene("pockets", (40, 40), seed=9),
}


class NetworkM(Preconditioner):
    """An SPD network as PCG's M."""

    name = "network"

    def __init__(self, direction):
        self.direction = direction

    def apply(self, r, out):
        out[:] = self.direction(r)


def perturbed_vcycle(dim: int, seed: int, spread: float):
    torch.manual_seed(seed)
    net = build_network("vcycle", dim, smooth=1, degree=6)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(spread * torch.randn_like(p))
    return net


def within(dcdm_iters: int, reference: int) -> bool:
    return dcdm_iters <= 1.25 * reference + 2


RTOL = 1e-6


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("spread", [0.0, 1.0])
@pytest.mark.parametrize("safeguard", [None, "mic0"])
def test_spd_network_is_never_worse_than_pcg(case, spread, safeguard):
    problem = CASES[case]()
    direction = NetworkDirection(perturbed_vcycle(problem.ndim, 5, spread), problem)
    op = problem.stencil
    M = None if safeguard is None else make_preconditioner(safeguard, CSROperator(problem.A))
    maxiter = 20 * problem.n
    res = dcdm(op, problem.b, direction=direction, M=M, rtol=RTOL, maxiter=maxiter)
    with_net = cg(op, problem.b, M=NetworkM(direction), rtol=RTOL, maxiter=maxiter)
    with_m = cg(op, problem.b, M=M, rtol=RTOL, maxiter=maxiter)
    assert res.converged and res.final_relres <= RTOL
    assert within(res.iterations, min(with_net.iterations, with_m.iterations)), (
        res.iterations,
        with_net.iterations,
        with_m.iterations,
        res.settings["events"],
    )
    assert res.settings["network_as"] == "preconditioner"


def _nonlinear(direction):
    """An SPD V-cycle made nonlinear and non-symmetric: its directions are only locally
    useful (the kind of network that made the old safeguard lose)."""

    def f(r):
        q = direction(r)
        return q * (1.0 + 0.9 * np.tanh(50.0 * r / (np.abs(r).max() + 1e-30)))

    return f


def _fixed(problem):
    v = np.random.default_rng(9).standard_normal(problem.n)
    return lambda r: v


BAD = {
    "nonlinear-vcycle": lambda p: _nonlinear(NetworkDirection(perturbed_vcycle(p.ndim, 1, 0.0), p)),
    "fixed-vector": _fixed,
    "negative-residual": lambda p: lambda r: -r,
    "nan": lambda p: lambda r: np.full_like(r, np.nan),
}


@pytest.mark.parametrize(
    "case",
    ["strip", "checkerboard", "baffles-2d", "maze", "smoke", "scene-porous", "scene-pockets"],
)
@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("safeguard", [None, "mic0"])
def test_bad_network_is_never_worse_than_its_safeguard(case, bad, safeguard):
    problem = CASES[case]()
    op = problem.stencil
    M = None if safeguard is None else make_preconditioner(safeguard, CSROperator(problem.A))
    maxiter = 20 * problem.n
    res = dcdm(op, problem.b, direction=BAD[bad](problem), M=M, rtol=RTOL, maxiter=maxiter)
    base = cg(op, problem.b, M=M, rtol=RTOL, maxiter=maxiter)
    assert res.converged and res.final_relres <= RTOL
    assert within(res.iterations, base.iterations), (res.iterations, base.iterations)


def test_stalled_spd_source_switches_only_to_what_measures_faster():
    """An 'SPD network' that is plain CG stalls on the strip; MIC(0) is measured for one
    window, found faster, and kept — and the events say so."""
    problem = strip(600, 5)
    op = problem.stencil
    M = make_preconditioner("mic0", CSROperator(problem.A))

    class Identity:
        spd = True

        def __call__(self, r):
            return r

    res = dcdm(op, problem.b, direction=Identity(), M=M, rtol=RTOL, maxiter=20 * problem.n)
    base = cg(op, problem.b, M=M, rtol=RTOL, maxiter=20 * problem.n)
    assert res.converged
    assert any("keeping safeguard" in e for e in res.settings["events"])
    assert within(res.iterations, base.iterations + 60)  # two windows of CG before the probe
    assert "measuring safeguard" in res.message

    # the other way round: a probe that measures slower is rejected and the network kept
    slow = make_preconditioner("jacobi", CSROperator(problem.A))
    vc = NetworkDirection(build_network("vcycle", 2, smooth=1, degree=6), problem)
    res = dcdm(op, problem.b, direction=vc, M=slow, rtol=RTOL, stall_window=3, maxiter=10**5)
    assert res.converged
    assert all("keeping safeguard" not in e for e in res.settings["events"])
