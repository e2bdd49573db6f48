"""Every solve() method on singular porous grids: hundreds of closed regions, zero rows.

A grid with 30-60 % random SOLID cells and an open (AIR) top has many fluid regions that touch
no AIR (singular blocks with a constant null vector), many of them a single FLUID cell whose
matrix row is all zero. solve() projects b onto the range; every method must then converge on
the projected rhs (info 0, true relative residual <= rtol).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import deepcd
from deepcd.iterative.nullspace import (
    SingularSystemWarning,
    closed_components,
    grounded,
    remove_region_means,
)
from deepcd.iterative.preconditioners import make_preconditioner
from deepcd.kernels.ichol import IncompleteCholesky
from deepcd.operators import CSROperator
from deepcd.problems import AIR, SOLID, from_flags
from deepcd.problems.scenes import make_scene

RTOL = 1e-6
OPEN_TOP = (SOLID, SOLID, SOLID, SOLID, SOLID, AIR)


def random_cells(n: int, fraction: float, seed: int = 1) -> np.ndarray:
    """int8 (n, n, n): each cell SOLID with probability `fraction`, else FLUID."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, n, n)) < fraction).astype(np.int8)


def overlapping_spheres(n: int, fraction: float = 0.45, seed: int = 2) -> np.ndarray:
    """int8 (n, n, n): random SOLID balls of radius 1-3 cells until `fraction` is SOLID."""
    rng = np.random.default_rng(seed)
    flags = np.zeros((n, n, n), np.int8)
    x = np.arange(n) + 0.5
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    while (flags == SOLID).mean() < fraction:
        c = rng.uniform(0, n, 3)
        r = rng.uniform(1.0, 3.0)
        flags[(X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2 <= r * r] = SOLID
    return flags


GRIDS = {
    "cells30-16": lambda: random_cells(16, 0.3),
    "cells50-16": lambda: random_cells(16, 0.5),
    "cells30-24": lambda: random_cells(24, 0.3),
    "cells50-24": lambda: random_cells(24, 0.5),
    "spheres-24": lambda: overlapping_spheres(24),
    "porous-24": lambda: make_scene("porous", (24, 24, 24), seed=5, solid_fraction=0.55).flags,
    "pockets-16": lambda: make_scene("pockets", (16, 16, 16), seed=5).flags,
}
METHODS = {
    "cg": {},
    "jacobi": {},
    "ic0": {},
    "mic0": {},
    "amg-sa": {},
    "amg-rs": {},
    # Newton is damped preconditioned Richardson: with H = IC(0) it needs thousands of steps
    # on any 3D grid (singular or not), so test it with the multigrid Hessian
    "newton": {"hessian": "amg-sa"},
    "dcdm": {"device": "cpu"},
    "mgpcg": {"device": "cpu"},
}


@pytest.fixture(scope="module")
def problems():
    cache = {}

    def get(name):
        if name not in cache:
            flags = GRIDS[name]()
            rhs = np.random.default_rng(7).standard_normal(flags.shape)
            cache[name] = from_flags(flags, rhs, boundary=OPEN_TOP)
        return cache[name]

    return get


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_grids_are_hard(problems, grid):
    """The grids really have closed regions, and the 30/50 % ones have zero rows."""
    p = problems(grid)
    assert p.closed_regions[1] >= 2
    if not grid.startswith("spheres"):
        assert np.count_nonzero(p.diagonal == 0) >= 1


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_every_method_converges(problems, grid, method):
    p = problems(grid)
    with pytest.warns(SingularSystemWarning):
        result = deepcd.solve_result(p, method=method, rtol=RTOL, **METHODS[method])
    assert result.info == 0, result.message
    labels, count = p.closed_regions
    b = remove_region_means(p.b, labels, count)
    x = result.x
    assert np.all(np.isfinite(x))
    relres = np.linalg.norm(b - p.A @ x) / np.linalg.norm(b)
    assert relres <= RTOL * (1 + 1e-9)
    # isolated cells (zero rows) have the exact answer 0; every closed region has zero mean
    assert np.all(x[p.diagonal == 0] == 0.0)
    inside = labels >= 0
    means = np.bincount(labels[inside], x[inside], count) / np.bincount(labels[inside])
    assert np.abs(means).max() <= 1e-10 * max(np.abs(x).max(), 1.0)


@pytest.mark.parametrize("method", ["ic0", "mic0", "amg-sa", "amg-rs"])
def test_matrix_input_and_standalone_cycle(problems, method):
    """A bare CSR matrix (closed regions found from the matrix) works the same way."""
    p = problems("cells50-16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularSystemWarning)
        x, info = deepcd.solve(p.A, p.b, method=method, rtol=RTOL)
        assert info == 0
        if method.startswith("amg"):
            _, info = deepcd.solve(p.A, p.b, method=method, rtol=RTOL, accel=None)
            assert info == 0
    b = remove_region_means(p.b, *closed_components(p.A))
    assert np.linalg.norm(b - p.A @ x) <= RTOL * np.linalg.norm(b) * (1 + 1e-9)


def test_grounded_matrix_is_spd_and_consistent(problems):
    p = problems("cells50-16")
    A = p.A
    labels, count = p.closed_regions
    G, anchors = grounded(A, labels, count)
    assert anchors.size == count
    assert np.all(labels[anchors] == np.arange(count))
    diff = (G - A).tocoo()
    assert diff.nnz == count and np.allclose(diff.data, 1.0)  # one AIR neighbour's weight
    assert A.diagonal()[anchors].min() >= 0  # A untouched
    assert np.count_nonzero(A.diagonal() == 0) > 0
    # SPD: positive definite (smallest eigenvalue of a small principal block well above 0)
    sub = G[:600, :600].toarray()
    assert np.linalg.eigvalsh(sub).min() > 1e-8
    # on the range, G⁻¹ and A's least-squares solution agree up to a constant per region
    rng = np.random.default_rng(3)
    r = remove_region_means(A @ rng.standard_normal(A.shape[0]), labels, count)
    y = sp.linalg.spsolve(G.tocsc(), r)
    assert np.linalg.norm(A @ y - r) <= 1e-8 * np.linalg.norm(r)


def test_grounded_adds_missing_diagonal():
    """A matrix without stored diagonal entries in its zero rows still grounds them."""
    A = sp.csr_matrix(np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    A.eliminate_zeros()
    labels, count = closed_components(A)
    assert count == 2
    G, anchors = grounded(A, labels, count)
    assert anchors.tolist() == [0, 2]
    assert np.allclose(G.toarray(), [[2, -1, 0], [-1, 1, 0], [0, 0, 1]])


@pytest.mark.parametrize("name", ["ic0", "mic0", "amg-sa", "amg-rs"])
def test_preconditioners_positive_on_singular(problems, name):
    """r·M⁻¹r > 0 for random residuals in the range; settings count the grounded regions."""
    p = problems("spheres-24")
    labels, count = p.closed_regions
    for closed in (None, (labels, count)):  # found from the matrix, or given
        M = make_preconditioner(name, CSROperator(p.A), closed)
        assert M.settings()["grounded_regions"] == count
        rng = np.random.default_rng(4)
        z = np.empty(p.n)
        for _ in range(3):
            r = remove_region_means(rng.standard_normal(p.n), labels, count)
            assert M.apply_dot(r, z) > 0
            assert np.all(np.isfinite(z))


def test_raw_ichol_still_rejects_zero_rows(problems):
    with pytest.raises(ValueError, match="grounded"):
        IncompleteCholesky(problems("cells50-16").A)
