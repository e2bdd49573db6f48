"""The torch (GPU-ready) baselines: CG, Jacobi-PCG and geometric-multigrid PCG, run on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deepcd
from deepcd.iterative.device import next_check
from deepcd.iterative.krylov import cg
from deepcd.iterative.krylov_torch import pcg_torch
from deepcd.iterative.preconditioners import make_preconditioner
from deepcd.problems import scene


@pytest.mark.filterwarnings("ignore::deepcd.SingularSystemWarning")
@pytest.mark.parametrize(
    "name,shape", [("bunny", (20, 18, 22)), ("pool", (40, 36)), ("closed-box", (12, 12, 12))]
)
@pytest.mark.parametrize("pre", [None, "jacobi"])
def test_torch_pcg_takes_the_numpy_steps(name, shape, pre):
    problem = scene(name, shape, seed=1)
    b = problem.b - (problem.b.mean() if problem.is_singular else 0.0)
    M = make_preconditioner(pre, problem.stencil) if pre else None
    ref = cg(problem.stencil, b, rtol=1e-9, M=M)
    dev = pcg_torch(problem, b, preconditioner=pre, rtol=1e-9, check_every=1)
    assert dev.iterations == ref.iterations
    np.testing.assert_allclose(dev.x, ref.x, atol=1e-10 * np.abs(ref.x).max())
    batched = pcg_torch(problem, b, preconditioner=pre, rtol=1e-9)  # host checks batched
    assert batched.converged and batched.final_relres <= 1e-9
    assert ref.iterations <= batched.iterations <= ref.iterations + 16


@pytest.mark.filterwarnings("ignore::deepcd.SingularSystemWarning")
@pytest.mark.parametrize("name", ["smoke-obstacles", "pool", "closed-box"])
@pytest.mark.parametrize("shape", [(48, 40), (24, 20, 28)], ids=["2d", "3d"])
def test_mgpcg_and_torch_cg_through_solve(name, shape):
    problem = scene(name, shape, seed=2)
    mg = deepcd.solve_result(problem, method="mgpcg", rtol=1e-8)
    assert mg.converged and mg.final_relres <= 1e-8 and mg.iterations <= 15
    assert mg.settings["device"] == "cpu" and mg.settings["backend"] == "torch"
    plain = deepcd.solve_result(problem, method="cg", device="cpu", rtol=1e-8)
    assert plain.converged and plain.iterations > 3 * mg.iterations


def test_next_check_schedule():
    assert next_check(1, 1.0, 0.5, 1e-6, 16) == 2  # never more than doubling at first
    assert next_check(8, 1.0, 1e-5, 1e-6, 16) == 10  # fast: 10x per 1.6 steps, 2 to go
    assert next_check(64, 1.0, 0.5, 1e-6, 16) == 80  # a slow one: every check_every
    assert next_check(4, 1.0, 2.0, 1e-6, 16) == 8  # no progress yet: no extrapolation


def test_torch_path_errors():
    problem = scene("pool", (16, 16, 16), seed=0)
    with pytest.raises(ValueError, match="needs the grid"):
        deepcd.solve(problem.A, problem.b, method="cg", device="cpu")
    with pytest.raises(ValueError, match="callback"):
        deepcd.solve(problem, method="mgpcg", callback=lambda x: None)
    with pytest.raises(ValueError, match="M="):
        deepcd.solve(problem, method="cg", device="cpu", M=problem.A)
    with pytest.raises(ValueError, match="preconditioner"):
        pcg_torch(problem, problem.b, preconditioner="ilu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            deepcd.solve(problem, method="mgpcg", device="cuda")
