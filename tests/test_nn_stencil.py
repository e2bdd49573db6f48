"""GridLaplacian: the torch grid operator equals the assembled CSR Laplacian."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepcd.nn import GridLaplacian, problem_to_tensor, tensor_to_problem
from deepcd.problems import AIR, FLUID, SOLID, Problem


def random_problem(shape, boundary, seed) -> Problem:
    rng = np.random.default_rng(seed)
    flags = rng.choice([FLUID, SOLID, AIR], size=shape, p=[0.6, 0.25, 0.15]).astype(np.int8)
    flags.flat[0] = FLUID
    n = int(np.count_nonzero(flags == FLUID))
    return Problem(flags, rng.standard_normal(n), boundary)


def mixed_faces(ndim: int) -> tuple[int, ...]:
    return tuple(AIR if f % 3 == 1 else SOLID for f in range(2 * ndim))


CASES = [
    ((12, 9), SOLID),
    ((12, 9), AIR),
    ((12, 9), mixed_faces(2)),
    ((7, 8, 6), SOLID),
    ((7, 8, 6), AIR),
    ((7, 8, 6), mixed_faces(3)),
    ((1, 5, 4), AIR),  # an axis of length 1
]


def grid_apply(problem: Problem, op: GridLaplacian, v: np.ndarray) -> np.ndarray:
    x = problem_to_tensor(problem, v, dtype=torch.float64)
    return tensor_to_problem(problem, op(x))


@pytest.mark.parametrize(("shape", "boundary"), CASES)
def test_matches_csr_float64(shape, boundary):
    for seed in range(3):
        p = random_problem(shape, boundary, seed)
        op = GridLaplacian.from_problem(p, dtype=torch.float64)
        v = np.random.default_rng(seed + 10).standard_normal(p.n)
        np.testing.assert_allclose(grid_apply(p, op, v), p.A @ v, rtol=0, atol=1e-12)
        # the diagonal buffer is the CSR diagonal on FLUID cells, zero elsewhere
        diag = op.diag[0, 0].numpy()
        np.testing.assert_array_equal(p.from_grid(diag), p.A.diagonal())
        assert np.all(diag[p.flags != FLUID] == 0)


def test_ignores_and_zeroes_non_fluid_cells():
    p = random_problem((7, 8, 6), AIR, 4)
    op = GridLaplacian.from_problem(p, dtype=torch.float64)
    v = np.random.default_rng(0).standard_normal(p.n)
    x = problem_to_tensor(p, v, dtype=torch.float64)
    noise = torch.randn_like(x) * torch.as_tensor(p.flags != FLUID)[None, None]
    y = op(x + noise)
    assert torch.all(y[0, 0][torch.as_tensor(p.flags != FLUID)] == 0)
    np.testing.assert_allclose(tensor_to_problem(p, y), p.A @ v, atol=1e-12)


@pytest.mark.parametrize("shape", [(10, 11), (6, 5, 7)])
def test_batched_mixed_problems(shape):
    ndim = len(shape)
    problems = [
        random_problem(shape, SOLID, 1),
        random_problem(shape, AIR, 2),
        random_problem(shape, mixed_faces(ndim), 3),
    ]
    op = GridLaplacian.stack(problems, dtype=torch.float64)
    assert op.batch_size == 3
    vs = [np.random.default_rng(i).standard_normal(p.n) for i, p in enumerate(problems)]
    x = torch.cat(
        [problem_to_tensor(p, v, dtype=torch.float64) for p, v in zip(problems, vs, strict=True)]
    )
    y = op(x)
    for i, (p, v) in enumerate(zip(problems, vs, strict=True)):
        np.testing.assert_allclose(tensor_to_problem(p, y[i]), p.A @ v, atol=1e-12)
    # the same batch from a flag tensor with per-sample boundaries
    flags = torch.stack([torch.tensor(p.flags) for p in problems])  # flags are read-only
    op2 = GridLaplacian(flags, [p.boundary for p in problems], dim=ndim, dtype=torch.float64)
    torch.testing.assert_close(op2(x), y, rtol=0, atol=0)
    # stacking operators (one batched, one not) concatenates their samples
    op3 = GridLaplacian.stack([op, GridLaplacian.from_problem(problems[0], dtype=torch.float64)])
    assert op3.batch_size == 4
    torch.testing.assert_close(op3(torch.cat([x, x[:1]]))[:3], y, rtol=0, atol=0)


def test_unbatched_operator_broadcasts():
    p = random_problem((9, 8), AIR, 5)
    op = GridLaplacian.from_problem(p, dtype=torch.float64)
    x = torch.randn(4, 1, 9, 8, dtype=torch.float64)
    y = op(x)
    for i in range(4):
        torch.testing.assert_close(y[i : i + 1], op(x[i : i + 1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision(dtype):
    p = random_problem((6, 7, 5), AIR, 6)
    op = GridLaplacian.from_problem(p)
    x = torch.randn(2, 1, 6, 7, 5)
    ref = GridLaplacian.from_problem(p, dtype=torch.float64)(x.double())
    y = op(x.to(dtype))
    assert y.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * 4)


def test_bad_input():
    p = random_problem((6, 5), SOLID, 0)
    op = GridLaplacian.from_problem(p)
    with pytest.raises(ValueError, match="shape"):
        op(torch.zeros(1, 1, 5, 6))
    batched = GridLaplacian.stack([p, p])
    with pytest.raises(ValueError, match="batch"):
        batched(torch.zeros(3, 1, 6, 5))
    with pytest.raises(ValueError, match="dim"):
        GridLaplacian(np.zeros((2, 3, 4, 5), np.int8))
    with pytest.raises(ValueError, match="SOLID=1 or AIR=2"):
        GridLaplacian(np.zeros((3, 4), np.int8), boundary=0)
    with pytest.raises(ValueError, match="per-sample"):
        GridLaplacian(np.zeros((2, 3, 4), np.int8), [[1] * 4] * 3, dim=2)
    # one flag per sample
    two = GridLaplacian(np.zeros((3, 4, 5), np.int8), [SOLID, AIR, AIR], dim=2)
    assert two.boundary.tolist() == [[SOLID] * 4, [AIR] * 4, [AIR] * 4]
    with pytest.raises(ValueError, match="one grid shape"):
        GridLaplacian.stack([p, random_problem((5, 6), SOLID, 0)])


@pytest.mark.parametrize(
    "shape,boundary",
    [
        ((3, 9, 11), AIR),
        ((2, 7, 1, 5), (SOLID, AIR, AIR, SOLID, SOLID, AIR)),
        ((2, 1, 6), [(AIR, SOLID, SOLID, AIR), (SOLID, SOLID, AIR, AIR)]),
        ((1, 5, 6, 4), SOLID),
        ((4, 8, 2), (AIR, AIR, SOLID, SOLID)),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masks_in_one_numba_pass_equal_the_torch_masks(shape, boundary, dtype):
    """On the CPU `GridLaplacian` builds its FLUID mask, diagonal and face masks with
    `deepcd.kernels.masks` instead of ~30 torch passes: the same numbers, batched, on odd
    shapes, axes of length 1 and per-sample boundaries included."""
    from deepcd.nn.stencil import _boundary_table, _masks_host, _masks_torch

    dim = len(shape) - 1
    f = torch.from_numpy(
        np.random.default_rng(sum(shape)).choice([FLUID, SOLID, AIR], size=shape).astype(np.int8)
    )
    bc = torch.as_tensor(_boundary_table(boundary, shape[0], dim))
    fluid_t, diag_t, links_t = _masks_torch(f, bc, dim, dtype)
    fluid_h, diag_h, links_h = _masks_host(f, bc, dim, dtype)
    torch.testing.assert_close(fluid_h, fluid_t.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(diag_h, diag_t, rtol=0, atol=0)
    assert len(links_h) == dim
    for a, b in zip(links_h, links_t, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float(diag_h.max()) > 0
