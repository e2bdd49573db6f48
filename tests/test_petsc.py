"""deepcd.petsc: the learned V-cycle as a PETSc preconditioner, and the PETSc bench peers.

In-process tests need petsc4py in this interpreter (the .venv-petsc of
`./scripts/bootstrap.sh --petsc`); the MPI tests run `mpiexec -n 2` in a subprocess with the
interpreter `deepcd.bench.peers.petsc_python` finds, so they also run from the default venv
once .venv-petsc exists. Without PETSc they skip with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import deepcd.petsc as dp
from deepcd.kernels import aggregate as K
from deepcd.nn.multigrid import build_hierarchy
from deepcd.nn.networks import build_network, coarsening_plan
from deepcd.nn.weights import load_solver
from deepcd.problems import scene

HERE = Path(__file__).parent
needs_petsc = pytest.mark.skipif(
    not dp.available(), reason="petsc4py is not importable here (./scripts/bootstrap.sh --petsc)"
)


def _petsc_python():
    from deepcd.bench.peers import petsc_python

    try:
        return petsc_python()
    except RuntimeError:
        return None


needs_mpi = pytest.mark.skipif(
    _petsc_python() is None or shutil.which("mpiexec") is None,
    reason="no Python with petsc4py or no mpiexec (./scripts/bootstrap.sh --petsc)",
)


def test_package_imports_without_petsc():
    assert isinstance(dp.available(), bool)
    if not dp.available():
        with pytest.raises(ImportError, match=r"bootstrap\.sh --petsc"):
            dp.require()


def test_aggregate_given_wmax_is_the_same():
    """aggregate(wmax_in=…) with the CSR's own largest links is aggregate without it."""
    p = scene("baffles", (16, 16, 16), seed=0)
    from deepcd.nn.stencil import GridLaplacian

    lap = GridLaplacian(torch.as_tensor(np.array(p.flags))[None], p.boundary, dim=3)
    diag = lap.diag[0, 0].double().numpy()
    links = [w[0, 0].double().numpy() for w in lap.links()]
    _, coords, d, indptr, indices, weight, axis = K.grid_graph(diag, *links)
    wmax = np.zeros(len(d))
    np.maximum.at(wmax, np.repeat(np.arange(len(d)), np.diff(indptr)), weight)
    args = (coords, d, indptr, indices, weight, axis, np.ones(3, bool), np.array([8, 8, 8]))
    a = K.aggregate(*args, 0.5, False, 0.02, 0)
    b = K.aggregate(*args, 0.5, False, 0.02, 0, wmax)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def _reference(net, problem, r_grid, dtype):
    plan = coarsening_plan(problem.shape, net.coarsest)
    flags = torch.as_tensor(np.array(problem.flags))[None]
    h = build_hierarchy(flags, problem.boundary, plan, dtype=dtype, merge_below=0)
    r = torch.as_tensor(r_grid, dtype=dtype)[None, None] * h.grid.active
    return h, r


@needs_petsc
def test_laplacian_matches_csr():
    from deepcd.petsc import grid as G

    PETSc = dp.require()
    p = scene("smoke-obstacles", (12, 10, 8), seed=0)
    da = G.create_dmda(p.shape, PETSc.COMM_SELF)
    A = dp.laplacian(da, p.flags, p.boundary)
    indptr, indices, data = A.getValuesCSR()
    import scipy.sparse as sp

    M = sp.csr_matrix((data, indices, indptr), shape=A.getSize())
    fluid = np.flatnonzero(p.to_grid(np.ones(p.n), fill=0).ravel() > 0)
    assert abs(M[fluid][:, fluid] - p.A).max() == 0
    other = np.setdiff1d(np.arange(M.shape[0]), fluid)
    assert abs(M[other] - sp.eye(M.shape[0], format="csr")[other]).max() == 0
    A.destroy()
    da.destroy()


def _pc(problem, net, PETSc, **kw):
    from deepcd.petsc import grid as G

    da = G.create_dmda(problem.shape, PETSc.COMM_SELF)
    A = dp.laplacian(da, problem.flags, problem.boundary)
    ksp = PETSc.KSP().create(PETSc.COMM_SELF)
    ksp.setOperators(A)
    ksp.setType("cg")
    ctx = dp.set_preconditioner(ksp, problem.flags, da=da, boundary=problem.boundary, **kw)
    return da, A, ksp, ctx


@needs_petsc
@pytest.mark.parametrize("gather_below", [4096, 64])
@pytest.mark.parametrize(
    "name,shape,seed",
    [("pool", (24, 20, 16), 2), ("maze", (24, 24, 24), 0)],  # the maze: level_scale < ½
)
def test_pc_is_deepcds_vcycle(gather_below, name, shape, seed):
    """The PC applies VCycleNet's own cycle (same settings, merge_below=0): to rounding in
    float64, to 1e-5 against the torch float32 reference."""
    PETSc = dp.require()
    net, _ = load_solver("vcycle-3d")
    p = scene(name, shape, seed=seed)
    da, A, ksp, ctx = _pc(p, net.double(), PETSc, solver=net, gather_below=gather_below)
    ksp.getPC().setUp()
    r = np.random.default_rng(0).standard_normal(p.shape)
    x, y = da.createGlobalVec(), da.createGlobalVec()
    x.array[:] = r.ravel()
    ksp.getPC().apply(x, y)
    got = y.array_r.reshape(p.shape).copy()
    active = ctx.cycle.active
    h, rt = _reference(net, p, r, torch.float64)
    with torch.no_grad():
        ref64 = net._cycle(h, 0, rt).numpy()[0, 0]
    assert np.abs(got - ref64)[active].max() <= 1e-12 * np.abs(ref64).max()
    net32, _ = load_solver("vcycle-3d")
    h, rt = _reference(net32, p, r, torch.float32)
    rt.requires_grad_(True)  # the torch path (no numba fast path)
    ref32 = net32._cycle(h, 0, rt).detach().double().numpy()[0, 0]
    assert np.abs(got - ref32)[active].max() <= 1e-5 * np.abs(ref32).max()
    assert np.all(got[~active] == r[~active])  # identity off the unknowns
    for obj in (x, y, ksp, A, da):
        obj.destroy()


@needs_petsc
def test_options_route_and_iterations_match_deepcd():
    """-pc_type python -pc_python_type deepcd.petsc.VCycle with attached flags solves in the
    same iterations as set_preconditioner and as deepcd's own dcdm (±1)."""
    import deepcd
    from deepcd.petsc import grid as G

    PETSc = dp.require()
    p = scene("smoke-obstacles", (32, 32, 32), seed=0)
    its = []
    for route in ("call", "options"):
        da = G.create_dmda(p.shape, PETSc.COMM_SELF)
        A = dp.laplacian(da, p.flags, p.boundary)
        ksp = PETSc.KSP().create(PETSc.COMM_SELF)
        ksp.setOperators(A)
        ksp.setType("cg")
        ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
        ksp.setTolerances(rtol=1e-6, atol=0.0, max_it=100)
        if route == "call":
            dp.set_preconditioner(ksp, p.flags, da=da, boundary=p.boundary)
        else:
            dp.attach(da, p.flags, p.boundary)
            ksp.setDM(da)
            ksp.setDMActive(False)
            opts = PETSc.Options()
            opts["pc_type"] = "python"
            opts["pc_python_type"] = "deepcd.petsc.VCycle"
            ksp.setFromOptions()
            del opts["pc_type"], opts["pc_python_type"]
        b = da.createGlobalVec()
        b.array[:] = p.to_grid(p.b).ravel()
        x = b.duplicate()
        ksp.solve(b, x)
        assert ksp.getConvergedReason() > 0
        v = p.from_grid(x.array_r.reshape(p.shape))
        assert np.linalg.norm(p.b - p.A @ v) <= 1e-6 * np.linalg.norm(p.b)
        its.append(ksp.getIterationNumber())
        for obj in (x, b, ksp, A, da):
            obj.destroy()
    own = deepcd.solve_result(p, rtol=1e-6, method="dcdm")
    assert its[0] == its[1]
    assert abs(its[0] - own.iterations) <= 1


@needs_petsc
def test_bad_input_is_refused_clearly():
    PETSc = dp.require()
    p = scene("smoke-obstacles", (16, 16, 16), seed=0)
    net, _ = load_solver("vcycle-3d")
    cases = [
        (p.flags[:, :, :-1], net, "match neither"),
        (p.flags, build_network("vcycle", 2), "2D"),
        (p.flags, build_network("vcycle", 3, local=8), "local weights"),
        (p.flags.astype(np.float32), net, "integer"),
    ]
    for flags, model, match in cases:
        from deepcd.petsc import grid as G

        da = G.create_dmda(p.shape, PETSc.COMM_SELF)
        ksp = PETSc.KSP().create(PETSc.COMM_SELF)
        with pytest.raises(ValueError, match=match):
            dp.set_preconditioner(ksp, flags, da=da, boundary=p.boundary, solver=model)
        ksp.destroy()
        da.destroy()


def _mpi(args, timeout=600):
    from deepcd.bench.peers import mpi_env, mpiexec_command

    cmd = [*mpiexec_command(2), _petsc_python(), *args]
    proc = subprocess.run(cmd, env=mpi_env(2), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


@needs_mpi
def test_two_ranks(tmp_path):
    """mpiexec -n 2: the PC equals deepcd's own V-cycle on every rank's block; a 32³ scene
    takes the same iterations (and solution, to rounding) as one process; bad input raises
    the same clear error on every rank, and nothing hangs."""
    out = tmp_path / "checks.json"
    _mpi([str(HERE / "mpi" / "petsc_checks.py"), str(out)])
    rep = json.loads(out.read_text())
    assert rep["np"] == 2
    assert rep["apply_err_gathered"] <= 1e-12
    assert rep["apply_err_weighted"] <= 1e-11
    assert rep["distributed_gathered_level"] >= 2  # graph levels really distributed
    assert all(r["apply_err"] <= 1e-12 for r in rep["ranks"])
    assert rep["iterations"] == rep["iterations_1"]
    assert rep["relres"] <= 1e-6 and rep["relres_1"] <= 1e-6
    assert rep["solution_diff"] <= 1e-10
    keys = ("flags_shape", "model_2d", "local_weights", "straddling_blocks")
    for key in keys:
        messages = [r["errors"][key] for r in rep["ranks"]]
        assert all(messages) and len(set(messages)) == 1, (key, messages)


@needs_mpi
def test_peers_in_the_benchmark():
    """petsc-deepcd at 1 and 2 processes: the same iterations, true residual ≤ 1e-6; hypre
    and GAMG converge at 2 processes; results carry the PETSc options."""
    from deepcd.bench.runner import run_one

    p = scene("pool", (24, 24, 24), seed=0)
    recs = {
        (name, n): run_one(name, p, rtol=1e-6, maxiter=200, nprocs=n)
        for name, n in (("petsc-deepcd", 1), ("petsc-deepcd", 2), ("petsc-hypre", 2))
    }
    recs[("petsc-gamg", 2)] = run_one("petsc-gamg", p, rtol=1e-6, maxiter=200, nprocs=2)
    weighted = scene("two-phase", (24, 24, 24), seed=0)  # variable coefficients
    recs[("weighted", 2)] = run_one("petsc-deepcd", weighted, rtol=1e-6, maxiter=200, nprocs=2)
    for rec in recs.values():
        assert rec["converged"] and rec["final_relres"] <= 1e-6
        assert rec["settings"]["options"].startswith("-pc_type")
    assert recs[("petsc-deepcd", 1)]["iterations"] == recs[("petsc-deepcd", 2)]["iterations"]
    assert recs[("petsc-deepcd", 2)]["np"] == 2
    assert "boomeramg" in recs[("petsc-hypre", 2)]["settings"]["options"]


def test_mg_levels_halve_to_eight_cells():
    from deepcd.petsc.run import mg_levels

    assert mg_levels((128, 128, 128)) == 5  # 128, 64, 32, 16, 8
    assert mg_levels((24, 24, 24)) == 2  # 24, 12 (6 would be below 8)
    assert mg_levels((9, 16, 16)) == 1


@needs_mpi
def test_petsc_geometric_multigrid_peer():
    """PETSc's own PCMG on the DMDA (Q0 transfers, Galerkin) converges on a scene with walls
    and AIR, and the run records its levels and options."""
    from deepcd.bench.runner import run_one

    rec = run_one("petsc-mg", scene("smoke-obstacles", (32, 32, 32), seed=0), rtol=1e-6,
                  maxiter=300, nprocs=1)  # fmt: skip
    assert rec["converged"] and rec["final_relres"] <= 1e-6
    assert rec["settings"]["mg_levels"] == 3 and "pc_mg_galerkin" in rec["settings"]["options"]


@needs_petsc
def test_cleanup_destroys_a_released_python_pc(capfd):
    """petsc4py queues a PC whose last Python handle goes; left queued, PetscFinalize would
    call our python PC after the interpreter is gone (SIGSEGV at exit, seen in CI).
    dp.cleanup() empties the queue while Python still runs."""
    from deepcd.petsc import grid as G

    PETSc = dp.require()
    p = scene("pool", (16, 16, 16), seed=0)
    da = G.create_dmda(p.shape, PETSc.COMM_WORLD)
    A = dp.laplacian(da, p.flags, p.boundary)
    ksp = PETSc.KSP().create(PETSc.COMM_WORLD)
    ksp.setOperators(A)
    ctx = dp.set_preconditioner(ksp, p.flags, da=da, boundary=p.boundary)
    pc = ksp.getPC()
    pc.setUp()
    assert ctx.cycle is not None
    for obj in (ksp, A, da):
        obj.destroy()
    del pc  # the PC's last reference: queued, not destroyed

    def queued() -> str:
        capfd.readouterr()
        PETSc.garbage_view(PETSc.COMM_WORLD)
        return capfd.readouterr().out

    assert "PC " in queued()
    dp.cleanup()
    assert "PC " not in queued()
    assert ctx.cycle is None  # our destroy() ran, inside Python


@needs_petsc
def test_flexible_cg_takes_the_pc_too():
    from deepcd.petsc import grid as G

    PETSc = dp.require()
    p = scene("bunny", (24, 24, 24), seed=0)
    its = {}
    for kind in ("cg", "fcg"):
        da = G.create_dmda(p.shape, PETSc.COMM_SELF)
        A = dp.laplacian(da, p.flags, p.boundary)
        ksp = PETSc.KSP().create(PETSc.COMM_SELF)
        ksp.setOperators(A)
        ksp.setType(kind)
        ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
        ksp.setTolerances(rtol=1e-6, atol=0.0, max_it=100)
        dp.set_preconditioner(ksp, p.flags, da=da, boundary=p.boundary)
        b = da.createGlobalVec()
        b.array[:] = p.to_grid(p.b).ravel()
        x = b.duplicate()
        ksp.solve(b, x)
        assert ksp.getConvergedReason() > 0
        its[kind] = ksp.getIterationNumber()
        for obj in (x, b, ksp, A, da):
            obj.destroy()
    assert abs(its["cg"] - its["fcg"]) <= 1


@needs_petsc
@pytest.mark.parametrize("name", ["two-phase", "cut-cells"])
def test_pc_reads_a_weighted_stencil_from_the_matrix(name):
    """Variable coefficients: level 0 is read from the assembled matrix, and the PC equals
    deepcd's own V-cycle on that operator (merge_below=0) to rounding; CG converges."""
    from deepcd.nn.stencil import GridLaplacian
    from deepcd.petsc import grid as G

    PETSc = dp.require()
    net, _ = load_solver("vcycle-3d")
    p = scene(name, (24, 24, 24), seed=0)
    assert p.has_coefficients
    diag, links = p.grid_stencil
    da = G.create_dmda(p.shape, PETSc.COMM_SELF)
    A = dp.stencil_matrix(da, diag, links)
    ksp = PETSc.KSP().create(PETSc.COMM_SELF)
    ksp.setOperators(A)
    ksp.setType("cg")
    ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
    ksp.setTolerances(rtol=1e-6, atol=0.0, max_it=200)
    ctx = dp.set_preconditioner(ksp, p.flags, da=da, boundary=p.boundary, solver=net.double())
    ksp.getPC().setUp()
    r = np.random.default_rng(0).standard_normal(p.shape)
    x, y = da.createGlobalVec(), da.createGlobalVec()
    x.array[:] = r.ravel()
    ksp.getPC().apply(x, y)
    got = y.array_r.reshape(p.shape).copy()
    plan = coarsening_plan(p.shape, net.coarsest)
    op = GridLaplacian.from_problem(p, dtype=torch.float64)
    flags = torch.as_tensor(np.array(p.flags))[None]
    h = build_hierarchy(flags, p.boundary, plan, dtype=torch.float64, merge_below=0, operator=op)
    with torch.no_grad():
        ref = net._cycle(h, 0, torch.as_tensor(r)[None, None] * h.grid.active).numpy()[0, 0]
    active = ctx.cycle.active
    assert np.abs(got - ref)[active].max() <= 1e-11 * np.abs(ref).max()
    b = da.createGlobalVec()
    b.array[:] = p.to_grid(p.b).ravel()
    sol = b.duplicate()
    ksp.solve(b, sol)
    assert ksp.getConvergedReason() > 0
    v = p.from_grid(sol.array_r.reshape(p.shape))
    assert np.linalg.norm(p.b - p.A @ v) <= 1e-6 * np.linalg.norm(p.b)
    for obj in (x, y, b, sol, ksp, A, da):
        obj.destroy()


@needs_petsc
def test_operator_off_the_stencil_is_refused():
    from deepcd.petsc import grid as G

    PETSc = dp.require()
    p = scene("pool", (16, 16, 16), seed=0)
    da = G.create_dmda(p.shape, PETSc.COMM_SELF)
    A = dp.laplacian(da, p.flags, p.boundary)
    A.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, False)
    A.setValue(0, 37, -0.5)
    A.assemble()
    ksp = PETSc.KSP().create(PETSc.COMM_SELF)
    ksp.setOperators(A)
    ctx = dp.set_preconditioner(ksp, p.flags, da=da, boundary=p.boundary)
    with pytest.raises(ValueError, match="7-point stencil"):
        ctx.setUp(ksp.getPC())
    for obj in (ksp, A, da):
        obj.destroy()
