"""DCDM's safeguard: convergence must never depend on the direction source being good."""

import numpy as np
import pytest
import scipy.sparse.linalg as spla

from deepcd.iterative.dcdm import dcdm
from deepcd.iterative.krylov import cg
from deepcd.iterative.preconditioners import make_preconditioner
from deepcd.problems import scene


def adversaries(problem):
    rng = np.random.default_rng(0)
    fixed = rng.standard_normal(problem.n)

    def orthogonal_to_r(r):
        v = rng.standard_normal(r.size)
        return v - (v @ r) / (r @ r) * r

    return {
        "fixed-vector": lambda r: fixed,
        "orthogonal-to-r": orthogonal_to_r,
        "minus-r": lambda r: -r,
        "zero": lambda r: np.zeros_like(r),
        "nan": lambda r: np.full_like(r, np.nan),
        "inf-spikes": lambda r: np.where(np.arange(r.size) % 7 == 0, np.inf, r),
        "random": lambda r: rng.standard_normal(r.size),
        "huge-scale": lambda r: 1e200 * r,
    }


@pytest.mark.parametrize("shape", [(20, 18), (12, 11, 10)], ids=["2d", "3d"])
@pytest.mark.parametrize("safeguard", ["none", "jacobi", "mic0"])
@pytest.mark.parametrize(
    "name",
    [
        "fixed-vector",
        "orthogonal-to-r",
        "minus-r",
        "zero",
        "nan",
        "inf-spikes",
        "random",
        "huge-scale",
    ],
)
def test_adversarial_directions_still_converge(shape, safeguard, name):
    problem = scene("smoke-obstacles", shape, seed=2)
    op = problem.stencil
    M = None if safeguard == "none" else make_preconditioner(safeguard, op)
    res = dcdm(op, problem.b, direction=adversaries(problem)[name], M=M, rtol=1e-8)
    assert res.converged and res.final_relres <= 1e-8
    pcg = cg(op, problem.b, M=M, rtol=1e-8)
    # a direction that keeps losing is switched off after `patience` losses: then it is PCG
    assert res.iterations <= pcg.iterations + 15
    assert res.settings["safeguard_steps"] + res.settings["network_steps"] == res.iterations


def test_useless_direction_gives_exactly_pcg():
    problem = scene("pool", (14, 12, 10), seed=0)
    M = make_preconditioner("mic0", problem.stencil)
    res = dcdm(problem.stencil, problem.b, direction=np.zeros_like, M=M, rtol=1e-10)
    pcg = cg(problem.stencil, problem.b, M=M, rtol=1e-10)
    assert res.iterations == pcg.iterations
    np.testing.assert_allclose(res.residuals, pcg.residuals, rtol=1e-6)
    assert res.settings["rejected_directions"] == 3  # then it is no longer called (patience)


def test_exact_inverse_converges_in_one_step():
    problem = scene("bunny", (16, 16), seed=0)
    A = problem.A.tocsc()
    res = dcdm(problem.stencil, problem.b, direction=lambda r: spla.spsolve(A, r), rtol=1e-10)
    assert res.iterations == 1 and res.settings["network_steps"] == 1


def test_energy_norm_error_never_grows():
    problem = scene("smoke-plume", (16, 16, 16), seed=3)
    x_ref = spla.spsolve(problem.A.tocsc(), problem.b)
    errors = []
    rng = np.random.default_rng(1)
    dcdm(
        problem.stencil,
        problem.b,
        direction=lambda r: rng.standard_normal(r.size),
        rtol=1e-9,
        callback=lambda x: errors.append((x - x_ref) @ (problem.A @ (x - x_ref))),
    )
    assert np.all(np.diff(errors) <= 1e-12 * errors[0])


def test_bad_arguments():
    problem = scene("box", (10, 10), seed=0)
    with pytest.raises(ValueError, match="k must be"):
        dcdm(problem.stencil, problem.b, direction=lambda r: r, k=0)
    with pytest.raises(ValueError, match="shape"):
        dcdm(problem.stencil, problem.b, direction=lambda r: r[:-1])


@pytest.mark.parametrize(
    "name,shape",
    [
        ("maze", (48, 40)),
        ("porous", (20, 20, 20)),
        ("splash", (24, 20, 18)),
        ("two-phase", (18, 16, 16)),
    ],
)
def test_projected_step_takes_the_computed_steps(name, shape, monkeypatch):
    """With an SPD network the PCG step projects the new direction and steps in one pass,
    its dots by algebra from the matvec's pass (`_DirectionStore.project_dots`): the same
    iterations and, to rounding, the same solution as with the projection computed first
    (PROJECTED_CANCEL = inf), on hard geometry and a coefficient jump."""
    import deepcd
    from deepcd.iterative import dcdm as loop

    problem = scene(name, shape, seed=0)
    fused = deepcd.solve_result(problem, rtol=1e-8)
    monkeypatch.setattr(loop, "PROJECTED_CANCEL", float("inf"))
    computed = deepcd.solve_result(problem, rtol=1e-8)
    assert fused.converged and computed.converged
    assert fused.iterations == computed.iterations
    assert fused.settings["network_steps"] == computed.settings["network_steps"]
    diff = np.abs(fused.x - computed.x).max() / np.abs(computed.x).max()
    assert diff < 1e-6, diff
