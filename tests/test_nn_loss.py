"""dcdm_loss: zero for the exact solution up to any nonzero scalar, finite when degenerate."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from deepcd.nn import GridLaplacian, dcdm_loss, problem_to_tensor
from deepcd.problems import AIR, FLUID, SOLID, Problem


def obstacle(shape, seed=0) -> Problem:
    """A box with a solid block at a random place and AIR on the last face: positive definite."""
    rng = np.random.default_rng(seed)
    flags = np.zeros(shape, np.int8)
    lo = [int(rng.integers(1, s // 2)) for s in shape]
    flags[tuple(slice(a, a + s // 3 + 1) for a, s in zip(lo, shape, strict=True))] = SOLID
    boundary = [SOLID] * (2 * len(shape))
    boundary[-1] = AIR
    n = int(np.count_nonzero(flags == FLUID))
    b = rng.standard_normal(n)
    p = Problem(flags, b / np.linalg.norm(b), tuple(boundary))
    assert not p.is_singular
    return p


@pytest.fixture(params=[(12, 10), (8, 7, 6)], ids=["2d", "3d"])
def problem(request) -> Problem:
    return obstacle(request.param)


def tensors(p: Problem, q_vec: np.ndarray):
    q = problem_to_tensor(p, q_vec, dtype=torch.float64)
    b = problem_to_tensor(p, p.b, dtype=torch.float64)
    return q, b, GridLaplacian.from_problem(p, dtype=torch.float64)


@pytest.mark.parametrize("scale", [1.0, 7.5, 1e-3, -1.0, -40.0])
def test_exact_solution_any_scale(problem, scale):
    x = spla.spsolve(problem.A.tocsc(), problem.b)
    q, b, op = tensors(problem, scale * x)
    loss = dcdm_loss(q, b, op)
    assert loss.item() < 1e-20


def test_random_direction_positive_and_differentiable(problem):
    rng = np.random.default_rng(3)
    q, b, op = tensors(problem, rng.standard_normal(problem.n))
    q.requires_grad_(True)
    loss = dcdm_loss(q, b, op)
    assert 1e-3 < loss.item() < np.inf
    loss.backward()
    assert torch.isfinite(q.grad).all()
    assert q.grad.abs().sum() > 0
    # the sign and size of q do not matter
    for c in (-1.0, 3.0):
        assert dcdm_loss(c * q.detach(), b, op).item() == pytest.approx(loss.item(), rel=1e-10)


def test_reference_formula(problem):
    rng = np.random.default_rng(4)
    qv = rng.standard_normal(problem.n)
    q, b, op = tensors(problem, qv)
    Aq = problem.A @ qv
    alpha = (qv @ problem.b) / (qv @ Aq)
    expected = np.sum((problem.b - alpha * Aq) ** 2)
    assert dcdm_loss(q, b, op).item() == pytest.approx(expected, rel=1e-12)


def test_degenerate_directions_are_finite(problem):
    b = problem_to_tensor(problem, problem.b, dtype=torch.float64)
    op = GridLaplacian.from_problem(problem, dtype=torch.float64)
    b_norm2 = float(np.sum(problem.b**2))
    zero = torch.zeros_like(b, requires_grad=True)
    off_fluid = torch.as_tensor(problem.flags != FLUID, dtype=torch.float64)[None, None]
    for q in (zero, off_fluid.clone().requires_grad_(True)):
        loss = dcdm_loss(q, b, op)
        assert loss.item() == pytest.approx(b_norm2, rel=1e-12)
        loss.backward()
        assert torch.isfinite(q.grad).all()
        assert torch.all(q.grad == 0)


def test_singular_null_vector_direction():
    # a closed box: constants on the fluid cells are the null space, qᵀAq = 0
    flags = np.zeros((6, 5, 4), np.int8)
    rng = np.random.default_rng(0)
    b = rng.standard_normal(flags.size)
    p = Problem(flags, b - b.mean(), SOLID)
    q, bt, op = tensors(p, np.ones(p.n))
    assert dcdm_loss(q, bt, op).item() == pytest.approx(float(p.b @ p.b), rel=1e-12)


def test_batch_reductions_and_mixed_matrices():
    problems = [obstacle((9, 8, 7), seed=s) for s in range(3)]
    op = GridLaplacian.stack(problems, dtype=torch.float64)
    rng = np.random.default_rng(5)
    qs = [problem_to_tensor(p, rng.standard_normal(p.n), dtype=torch.float64) for p in problems]
    bs = [problem_to_tensor(p, p.b, dtype=torch.float64) for p in problems]
    q, b = torch.cat(qs), torch.cat(bs)
    per = dcdm_loss(q, b, op, reduction="none")
    assert per.shape == (3,)
    for i, p in enumerate(problems):
        single = dcdm_loss(qs[i], bs[i], GridLaplacian.from_problem(p, dtype=torch.float64))
        assert per[i].item() == pytest.approx(single.item(), rel=1e-12)
    assert dcdm_loss(q, b, op).item() == pytest.approx(per.mean().item(), rel=1e-12)
    assert dcdm_loss(q, b, op, reduction="sum").item() == pytest.approx(per.sum().item())
    with pytest.raises(ValueError, match="reduction"):
        dcdm_loss(q, b, op, reduction="max")


def test_low_precision_output_is_upcast(problem):
    x = spla.spsolve(problem.A.tocsc(), problem.b)
    q, b, _ = tensors(problem, x)
    op = GridLaplacian.from_problem(problem)
    loss = dcdm_loss(q.to(torch.bfloat16), b.float(), op)
    assert loss.dtype == torch.float32
    assert 0 <= loss.item() < 1e-3  # bf16 rounding of q only


def test_residual_step_is_the_unit_step(problem):
    rng = np.random.default_rng(5)
    q, b, op = tensors(problem, rng.standard_normal(problem.n))
    res = b - op(q)
    assert dcdm_loss(q, b, op, step="residual").item() == pytest.approx(float((res**2).sum()))
    with pytest.raises(ValueError, match="step"):
        dcdm_loss(q, b, op, step="pcg")


def test_pcg_loss_matches_cg_and_rewards_a_better_preconditioner(problem):
    from deepcd.iterative.krylov import cg
    from deepcd.nn.loss import pcg_loss

    _, b, op = tensors(problem, np.zeros(problem.n))
    b = b.float()
    op = GridLaplacian.from_problem(problem)
    res = cg(problem.stencil, problem.b, rtol=0.0, maxiter=3)
    expected = np.log10(res.residuals[3] / res.residuals[0]) / 3
    plain = pcg_loss(lambda r: r, b, op, steps=3)
    assert plain.item() == pytest.approx(expected, abs=1e-4)
    # an exact inverse converges in one step: far lower
    A = problem.A.tocsc()

    def exact(r):
        x = spla.spsolve(A, problem.from_grid(r[0, 0].double().numpy()))
        return problem_to_tensor(problem, x)

    assert pcg_loss(exact, b, op, steps=3).item() < plain.item() - 1.0
    # gradients reach the preconditioner's parameters
    w = torch.tensor(0.5, requires_grad=True)
    pcg_loss(lambda r: w * r + (1 - w) * op.mask(op(r)), b, op, steps=2).backward()
    assert w.grad is not None and torch.isfinite(w.grad) and w.grad != 0
