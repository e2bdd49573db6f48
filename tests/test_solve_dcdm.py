"""solve(method="dcdm"): the shipped solvers on every scene, grids from flags, devices, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import deepcd
from deepcd.api import _grid_problem
from deepcd.iterative.dcdm import dcdm
from deepcd.iterative.dcdm_torch import dcdm_torch
from deepcd.nn import build_network, default_solver, load_solver
from deepcd.nn.direction import NetworkDirection
from deepcd.nn.weights import WEIGHTS, resolve_solver
from deepcd.operators import CSROperator
from deepcd.problems import AIR, SOLID, from_flags, scene

SCENES = ["box", "smoke-plume", "smoke-obstacles", "bunny", "pool", "poisson-box", "closed-box"]


@pytest.mark.filterwarnings("ignore::deepcd.SingularSystemWarning")
@pytest.mark.parametrize("shape", [(40, 36), (20, 17, 23)], ids=["2d", "3d-odd"])
@pytest.mark.parametrize("name", SCENES)
def test_default_method_is_dcdm_with_the_shipped_solver(name, shape):
    problem = scene(name, shape, seed=3)
    res = deepcd.solve_result(problem, rtol=1e-8)
    assert res.method == "dcdm" and res.converged, res.summary()
    assert res.final_relres <= 1e-8
    assert res.settings["model"] == default_solver(len(shape))
    assert res.settings["device"] == "cpu" and res.settings["device_requested"] == "auto"
    cg = deepcd.solve_result(problem, rtol=1e-8, method="cg")
    assert res.iterations * 3 <= cg.iterations, (res.iterations, cg.iterations)


def test_csr_with_flags_and_a_mesh_scale():
    flags = np.zeros((30, 26), np.int8)
    flags[10:14, 5:20] = SOLID
    flags[:, -3:] = AIR
    problem = from_flags(flags, np.random.default_rng(0).standard_normal((30, 26)))
    h = 0.1
    A = problem.A / h**2  # a user's matrix in physical units
    x, info = deepcd.solve(A, problem.b, flags=flags, rtol=1e-9)
    assert info == 0
    np.testing.assert_allclose(A @ x, problem.b, atol=1e-8 * np.linalg.norm(problem.b))
    grid, scale, _ = _grid_problem(A, CSROperator(A), flags, None)
    assert grid.n == problem.n and scale == pytest.approx(1 / h**2)
    # a matrix that is not a multiple of the flags' Laplacian but a pressure stencil on the
    # grid (here with a reaction term) is read as the stencil it is: the network fits it
    B = (A + sp.identity(A.shape[0])).tocsr()
    grid, scale, check = _grid_problem(B, CSROperator(B), flags, None)
    assert scale == 1.0 and check.stencil and grid.has_coefficients
    assert abs(grid.A - B).max() <= 1e-12 * abs(B).max()
    x, info = deepcd.solve(B, problem.b, flags=flags, rtol=1e-9)
    assert info == 0
    np.testing.assert_allclose(B @ x, problem.b, atol=1e-8 * np.linalg.norm(problem.b))


def test_user_flags_closed_domain_is_projected():
    flags = np.full((15, 14, 13), SOLID, np.int8)
    flags[1:-1, 1:-1, 1:-1] = 0
    flags[6:9, 5:9, 2:10] = SOLID
    problem = from_flags(flags, np.random.default_rng(1).standard_normal(flags.shape))
    assert problem.is_singular
    with pytest.warns(deepcd.SingularSystemWarning):
        res = deepcd.solve_result(problem, rtol=1e-8)
    assert res.converged and abs(res.x.mean()) < 1e-10


def test_torch_path_matches_the_numpy_path():
    """The device iteration (run here on the CPU) takes the same steps as the numpy one."""
    problem = scene("bunny", (20, 18, 22), seed=4)
    net, _ = load_solver(default_solver(3))
    for safeguard, M in (("none", None), ("jacobi", "jacobi")):
        from deepcd.iterative.preconditioners import make_preconditioner

        pre = make_preconditioner(M, problem.stencil) if M else None
        ref = dcdm(
            problem.stencil, problem.b, direction=NetworkDirection(net, problem), M=pre, rtol=1e-9
        )
        dev = dcdm_torch(
            problem, problem.b, network=net, safeguard=safeguard, rtol=1e-9, check_every=1
        )
        assert dev.iterations == ref.iterations
        np.testing.assert_allclose(dev.x, ref.x, rtol=0, atol=1e-9 * np.abs(ref.x).max())
        np.testing.assert_allclose(dev.residuals, ref.residuals, rtol=1e-4)
        batched = dcdm_torch(problem, problem.b, network=net, safeguard=safeguard, rtol=1e-9)
        assert batched.converged and batched.final_relres <= 1e-9
        assert ref.iterations <= batched.iterations < ref.iterations + 8


def test_torch_path_scale_and_maxiter():
    problem = scene("pool", (24, 20, 16), seed=0)
    net, _ = load_solver(default_solver(3))
    res = dcdm_torch(problem, problem.b * 4.0, network=net, scale=4.0, rtol=1e-8)
    assert res.converged
    np.testing.assert_allclose(res.x, deepcd.solve(problem, rtol=1e-10)[0], atol=1e-6)
    capped = dcdm_torch(problem, problem.b, network=net, rtol=1e-12, maxiter=3)
    assert not capped.converged and capped.info == 3 and capped.iterations == 3


class _Broken(torch.nn.Module):
    """A 'network' that returns NaN or a fixed vector: the safeguard must carry the solve."""

    def __init__(self, dim: int, kind: str):
        super().__init__()
        self.dim, self.kind = dim, kind

    def forward(self, r, flags=None, boundary=None):
        if self.kind == "nan":
            return torch.full_like(r, float("nan"))
        return torch.ones_like(r)


@pytest.mark.filterwarnings("ignore::deepcd.NetworkUnusedWarning")
@pytest.mark.parametrize("kind", ["nan", "fixed"])
def test_broken_network_is_carried_by_the_safeguard(kind):
    problem = scene("smoke-obstacles", (16, 16, 16), seed=0)
    res = deepcd.solve_result(problem, rtol=1e-8, model=_Broken(3, kind), safeguard="jacobi")
    assert res.converged and res.final_relres <= 1e-8
    assert res.settings["safeguard_steps"] >= res.iterations - 1
    dev = dcdm_torch(problem, problem.b, network=_Broken(3, kind), rtol=1e-8)
    assert dev.converged and dev.settings["network_steps"] == 0


def test_maxiter_is_honest():
    problem = scene("bunny", (16, 16, 16), seed=1)
    _x, info = deepcd.solve(problem, rtol=1e-14, maxiter=2)
    assert info == 2


def test_errors_before_any_work(tmp_path):
    problem = scene("pool", (16, 16, 16), seed=0)
    with pytest.raises(ValueError, match="needs the grid"):
        deepcd.solve(problem.A, problem.b)
    with pytest.raises(ValueError, match="FLUID cells but A has"):
        deepcd.solve(problem.A, problem.b, flags=np.zeros((4, 4), np.int8))
    with pytest.raises(ValueError, match="2D grids but the problem is 3D"):
        deepcd.solve(problem, model=default_solver(2))
    with pytest.raises(ValueError, match="2D grids but the problem is 3D"):
        deepcd.solve(problem, model=build_network("vcycle", 2))
    with pytest.raises(FileNotFoundError, match="no solver folder"):
        deepcd.solve(problem, model="no-such-solver")
    with pytest.raises(ValueError, match="device"):
        deepcd.solve(problem, device="tpu")
    with pytest.raises(ValueError, match="safeguard"):
        deepcd.solve(problem, safeguard="ilu")
    with pytest.raises(TypeError, match="unexpected options"):
        deepcd.solve(problem, omega=1.0)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(resolve_solver(default_solver(3)), corrupt)
    data = bytearray((corrupt / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (corrupt / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its card"):
        deepcd.solve(problem, model=corrupt)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    problem = scene("pool", (16, 16, 16), seed=0)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        deepcd.solve(problem, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_and_cpu_agree():
    problem = scene("smoke-obstacles", (32, 32, 32), seed=2)
    cpu = deepcd.solve_result(problem, rtol=1e-8, device="cpu")
    gpu = deepcd.solve_result(problem, rtol=1e-8, device="cuda")
    assert gpu.converged and gpu.settings["device"] == "cuda"
    assert abs(gpu.iterations - cpu.iterations) <= 8
    np.testing.assert_allclose(gpu.x, cpu.x, atol=1e-6 * np.abs(cpu.x).max())


@pytest.mark.filterwarnings("error::deepcd.GridMismatchWarning")
@pytest.mark.filterwarnings("error::deepcd.NetworkUnusedWarning")
@pytest.mark.parametrize("name", ["smoke-obstacles", "bunny", "poisson-box"])
def test_matrix_with_flags_infers_the_boundary(name):
    """Issue 14.2: the README's solve(A, b, flags=) on a scene whose outside is not all
    SOLID: the boundary is read off A, the network fits, DCDM takes its usual few steps."""
    problem = scene(name, (24, 24, 24), seed=0)
    assert problem.boundary != (SOLID,) * 6
    res = deepcd.solve_result(problem.A, problem.b, flags=problem.flags, rtol=1e-6)
    ref = deepcd.solve_result(problem, rtol=1e-6)
    assert res.converged and res.iterations <= ref.iterations + 1, (res.iterations, ref.iterations)
    check = res.settings["grid_check"]
    assert check["boundary"] == list(problem.boundary) and check["boundary_inferred"]
    assert "boundary inferred" in res.message
    # scaled by 1/h²: the same
    h = 0.5
    res = deepcd.solve_result(problem.A / h**2, problem.b, flags=problem.flags, rtol=1e-6)
    assert res.iterations <= ref.iterations + 1
    assert res.settings["grid_check"]["scale"] == pytest.approx(1 / h**2)


@pytest.mark.filterwarnings("ignore::deepcd.NetworkUnusedWarning")
@pytest.mark.parametrize("change", ["permuted", "positive-coupling"])
def test_matrix_that_does_not_fit_its_flags_is_named(change):
    """Issue 14.2: A that is neither the flags' Laplacian nor a pressure stencil on their
    grid: a GridMismatchWarning naming the rows, the mismatch in the result's message, and
    still a converged answer (the CPU path)."""
    problem = scene("smoke-obstacles", (16, 16, 16), seed=0)
    A, b, boundary = problem.A, problem.b, None
    if change == "permuted":
        perm = np.random.default_rng(0).permutation(problem.n)
        A, b = A[perm][:, perm].tocsr(), b[perm]
    else:  # SPD, but one coupling with the wrong sign: no pressure stencil
        A = A.tolil()
        i, j = 0, A.rows[0][-1]
        A[i, j] = A[j, i] = 0.5
        A = (A + sp.identity(problem.n)).tocsr()
    match = r"differs from the flags' Laplacian .* in \d+ of"
    with pytest.warns(deepcd.GridMismatchWarning, match=match):
        res = deepcd.solve_result(A, b, flags=problem.flags, boundary=boundary, rtol=1e-6)
    assert res.converged and "expect many more iterations" in res.message
    assert res.settings["grid_check"]["mismatched_rows"] > 0
    assert not res.settings["grid_check"]["read_as_stencil"]


@pytest.mark.filterwarnings("error::deepcd.GridMismatchWarning")
@pytest.mark.parametrize("change", ["diagonal", "wrong-boundary"])
def test_pressure_matrix_off_the_flags_laplacian_is_read_as_its_stencil(change):
    """Issue 11: a symmetric 5/7-point pressure matrix on the grid that is not the flags'
    Laplacian (a reaction term; a boundary= that does not match) solves with the network
    built from A itself, in the iterations of the Problem that has that operator."""
    problem = scene("smoke-obstacles", (16, 16, 16), seed=0)
    A, boundary = problem.A, None
    if change == "diagonal":
        A = (A + 0.5 * sp.identity(problem.n)).tocsr()
    else:
        boundary = AIR  # stated, and wrong: A's own diagonal wins
    res = deepcd.solve_result(A, problem.b, flags=problem.flags, boundary=boundary, rtol=1e-6)
    assert res.converged and res.settings["grid_check"]["read_as_stencil"]
    assert "read as a variable-coefficient stencil" in res.message
    ref = deepcd.solve_result(problem, rtol=1e-6)
    assert res.iterations <= ref.iterations + 2, (res.iterations, ref.iterations)


def test_every_fallback_is_in_the_message_and_an_unused_network_warns():
    problem = scene("smoke-obstacles", (16, 16, 16), seed=0)
    with pytest.warns(deepcd.NetworkUnusedWarning, match="contributed no step"):
        res = deepcd.solve_result(problem, rtol=1e-8, model=_Broken(3, "fixed"))
    assert res.converged
    assert any("continuing with safeguard" in e for e in res.settings["events"])
    assert "lost 3 one-step comparisons" in res.message
    with pytest.warns(deepcd.NetworkUnusedWarning):
        res = deepcd.solve_result(problem, rtol=1e-8, model=_Broken(3, "nan"))
    assert "unusable" in res.message
    dev = dcdm_torch(problem, problem.b, network=_Broken(3, "fixed"), rtol=1e-8)
    assert "continuing with safeguard" in dev.message and dev.settings["events"]


def test_benchmark_warm_up_loads_every_kernel_a_timed_run_uses(monkeypatch):
    """After `deepcd.bench.runner.warm_up`, a DCDM run whose coarse level runs on the grid
    kernels (`grid_form`) compiles nothing and finds no levels cached: its time is its own."""
    import deepcd.nn.multigrid as mg
    from deepcd.bench.runner import run_solver, warm_up

    monkeypatch.setattr(mg, "GRID_FORM_MIN", 4096)  # grid forms at test sizes (16³ level 1)
    warm_up(["dcdm"], 3)
    rec = run_solver("dcdm", scene("smoke-plume", (32, 32, 32), seed=0), rtol=1e-6, maxiter=None)
    assert rec.converged
    assert rec.settings["jit_compile_s"] == 0.0
    assert not rec.settings["hierarchy_cached"]
    # a level 1 with links off its grid, on the parallel kernels and in tiles, as at 256³
    import deepcd.nn.fastpath as fp

    monkeypatch.setattr(fp, "GRID_SERIAL_BELOW", 1024)
    monkeypatch.setattr(fp, "RING_UNTILED_MAX", 1024)
    monkeypatch.setattr(fp, "WAVEFRONT_PLANES", 1)  # its 22 planes split for every thread
    problem = scene("smoke-obstacles", (44, 32, 36), seed=1)
    h = build_network("vcycle", 3).hierarchy(
        torch.tensor(problem.flags)[None, None], problem.shape, tuple(problem.boundary),
        torch.float32,
    )  # fmt: skip
    assert mg.grid_form(h, 1) is not None and mg.grid_form(h, 1).grid.extra is not None
    rec = run_solver("dcdm", problem, rtol=1e-6, maxiter=None)
    assert rec.converged
    assert rec.settings["jit_compile_s"] == 0.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_warm_up_grid_has_links_off_its_grid(ndim, monkeypatch):
    """The warm-up's grid for the kernels of links off the grid (`runner.extra_links_scene`)
    has a level 1 that runs on the grid kernels with such links."""
    import deepcd.nn.fastpath as fp
    import deepcd.nn.multigrid as mg
    from deepcd.bench.runner import extra_links_scene

    problem = extra_links_scene(ndim)
    net, _ = load_solver(default_solver(ndim))
    h = net.hierarchy(
        torch.tensor(problem.flags)[None, None], problem.shape, tuple(problem.boundary),
        torch.float32,
    )  # fmt: skip
    form = mg.grid_form(h, 1)
    assert form is not None and form.grid.extra is not None
    # ... run by the wavefront on every thread with the warm-up's bounds (else its kernels
    # would stay unloaded)
    monkeypatch.setattr(fp, "WAVEFRONT_PLANES", 1)
    monkeypatch.setattr(fp, "GRID_SERIAL_BELOW", 0)
    assert net._grid_form(h, 1) is form
