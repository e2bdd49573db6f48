"""Fixtures: small problems made on the fly (never large files)."""

from __future__ import annotations

import numpy as np
import pytest

from deepcd.problems import AIR, SOLID, Problem


def obstacle_problem(shape: tuple[int, ...], seed: int = 0) -> Problem:
    """A box with a solid block inside, an AIR top face, and a random right-hand side."""
    rng = np.random.default_rng(seed)
    flags = np.zeros(shape, dtype=np.int8)
    block = tuple(slice(s // 4, s // 2) for s in shape)
    flags[block] = SOLID
    boundary = [SOLID] * (2 * len(shape))
    boundary[-1] = AIR
    n = int(np.count_nonzero(flags == 0))
    return Problem(flags, rng.standard_normal(n), tuple(boundary))


@pytest.fixture(params=[(14, 11), (9, 8, 7)], ids=["2d", "3d"])
def small_problem(request) -> Problem:
    return obstacle_problem(request.param)


@pytest.fixture
def dirichlet_box() -> Problem:
    rng = np.random.default_rng(1)
    return Problem(np.zeros((10, 9, 8), np.int8), rng.standard_normal(720), AIR)
