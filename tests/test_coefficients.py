"""Variable-coefficient operators (issue 11): assembly, a user's matrix, storage, the network's
levels built from A's own stencil, and solves on two-phase / ghost-fluid / cut-cell scenes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import deepcd
from deepcd.iterative.dcdm_torch import dcdm_torch
from deepcd.nn import coarsening_plan
from deepcd.nn.multigrid import STRENGTH, build_hierarchy
from deepcd.nn.stencil import GridLaplacian
from deepcd.nn.weights import default_solver, load_solver
from deepcd.problems import AIR, FLUID, SOLID, from_flags, load_problem, save_problem, scene
from deepcd.problems.coefficients import (
    Coefficients,
    face_average,
    ghost_fluid_theta,
    stencil_of_csr,
    weighted_stencil,
)
from deepcd.problems.mac import face_shapes
from tests.test_nn_vcycle import component_aggregation, grid_matrix

COEFFICIENT_SCENES = ("two-phase", "ghost-splash", "cut-cells")


def random_coefficients(shape, seed: int, theta: bool = True) -> Coefficients:
    rng = np.random.default_rng(seed)
    beta = [rng.uniform(0.0, 3.0, s) * (rng.random(s) > 0.1) for s in face_shapes(shape)]
    th = [rng.uniform(0.05, 1.0, s) for s in face_shapes(shape)] if theta else None
    return Coefficients.validated(shape, beta, th)


def random_flags(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice([FLUID, SOLID, AIR], size=shape, p=[0.7, 0.15, 0.15]).astype(np.int8)


def dense_reference(flags, boundary, c: Coefficients) -> np.ndarray:
    """The operator of the module docstring, assembled cell by cell with plain loops."""
    shape, nd = flags.shape, flags.ndim
    cells = [tuple(i) for i in np.argwhere(flags == FLUID)]
    number = {cell: k for k, cell in enumerate(cells)}
    A = np.zeros((len(cells), len(cells)))
    for cell, k in number.items():
        for a in range(nd):
            for step in (-1, +1):
                m = list(cell)
                m[a] += step
                face = list(cell)
                face[a] += step > 0  # face i lies between cells i-1 and i
                face = tuple(face)
                if 0 <= m[a] < shape[a]:
                    other = flags[tuple(m)]
                else:
                    other = boundary[2 * a + (step > 0)]
                w = c.beta[a][face]
                if other == FLUID:
                    A[k, k] += w
                    A[k, number[tuple(m)]] -= w
                elif other == AIR:
                    A[k, k] += w / (1.0 if c.theta is None else c.theta[a][face])
    return A


@pytest.mark.parametrize("shape", [(9, 7), (6, 5, 4)])
@pytest.mark.parametrize("theta", [False, True])
def test_assembly_equals_an_independent_dense_assembly(shape, theta):
    flags = random_flags(shape, seed=len(shape))
    boundary = (SOLID, AIR) * len(shape)
    c = random_coefficients(shape, seed=3, theta=theta)
    problem = from_flags(flags, boundary=boundary, coefficients=c)
    ref = dense_reference(flags, problem.boundary, c)
    np.testing.assert_allclose(problem.A.toarray(), ref, atol=1e-13)
    np.testing.assert_allclose(problem.diagonal, np.diag(ref), atol=1e-13)
    x = np.random.default_rng(0).standard_normal(problem.n)
    np.testing.assert_allclose(problem.stencil.matvec(x), ref @ x, atol=1e-12)
    # the torch operator applies the same matrix on the grid
    lap = GridLaplacian.from_problem(problem, dtype=torch.float64)
    y = lap(torch.as_tensor(problem.to_grid(x))[None, None])[0, 0].numpy()
    np.testing.assert_allclose(problem.from_grid(y), ref @ x, atol=1e-12)


def test_unit_coefficients_are_the_flag_laplacian():
    flags = random_flags((11, 9, 7), seed=5)
    ones = Coefficients.validated(flags.shape, [np.ones(s) for s in face_shapes(flags.shape)])
    plain = from_flags(flags, boundary=AIR)
    weighted = from_flags(flags, boundary=AIR, coefficients=ones)
    assert abs(plain.A - weighted.A).max() == 0.0
    assert plain.closed_regions[1] == weighted.closed_regions[1]
    np.testing.assert_array_equal(plain.closed_regions[0], weighted.closed_regions[0])


def test_closed_regions_follow_the_open_faces():
    """A cut-cell fraction of 0 closes a face: the region behind it no longer reaches AIR."""
    flags = np.zeros((8, 6), np.int8)
    boundary = (SOLID, SOLID, SOLID, AIR)  # open top
    beta = [np.ones(s) for s in face_shapes(flags.shape)]
    beta[1][:, 3] = 0.0  # a closed horizontal plane between rows 2 and 3
    problem = from_flags(
        flags, boundary=boundary, coefficients=Coefficients.validated((8, 6), beta)
    )
    labels, count = problem.closed_regions
    assert count == 1
    closed = problem.to_grid(labels.astype(float), fill=-9)
    assert np.all(closed[:, :3] == 0) and np.all(closed[:, 3:] == -1)
    with pytest.warns(deepcd.SingularSystemWarning):  # projected onto the range
        res = deepcd.solve_result(problem, rtol=1e-8)
    assert res.converged


@pytest.mark.parametrize("shape", [(12, 10), (7, 6, 5)])
def test_a_users_matrix_is_read_as_its_stencil(shape):
    flags = random_flags(shape, seed=7)
    c = random_coefficients(shape, seed=8)
    problem = from_flags(flags, boundary=AIR, coefficients=c)
    diag, links = stencil_of_csr(problem.A, flags)
    ref_d, ref_l = problem.grid_stencil
    np.testing.assert_allclose(diag, ref_d, atol=1e-13)
    for got, want in zip(links, ref_l, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-13)
    again = from_flags(flags, coefficients=Coefficients.from_stencil(flags, diag, links))
    assert abs(again.A - problem.A).max() <= 1e-13


def test_stencil_of_csr_names_what_is_wrong():
    flags = np.zeros((6, 5), np.int8)
    A = from_flags(flags, boundary=AIR).A.tolil()
    far = A.copy()
    far[0, 7] = far[7, 0] = -0.1  # cells (0,0) and (1,2): not face neighbours
    with pytest.raises(ValueError, match="not a 5/7-point stencil"):
        stencil_of_csr(far.tocsr(), flags)
    pos = A.copy()
    pos[0, 1] = pos[1, 0] = 0.5
    with pytest.raises(ValueError, match="positive off-diagonal"):
        stencil_of_csr(pos.tocsr(), flags)
    skew = A.copy()
    skew[0, 1] = -2.0
    with pytest.raises(ValueError, match="not symmetric"):
        stencil_of_csr(skew.tocsr(), flags)
    weak = A.copy()
    weak[0, 0] = 0.5
    with pytest.raises(ValueError, match="not weakly diagonally dominant"):
        stencil_of_csr(weak.tocsr(), flags)
    with pytest.raises(ValueError, match="FLUID cells"):
        stencil_of_csr(A.tocsr()[:-1, :-1], flags)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda s: Coefficients.validated(s, [-np.ones(f) for f in face_shapes(s)]), "beta"),
        (lambda s: Coefficients.validated(s, [np.full(f, np.nan) for f in face_shapes(s)]), "NaN"),
        (lambda s: Coefficients.validated(s, [np.ones((3, 3)), np.ones((3, 3))]), "face shape"),
        (lambda s: Coefficients.validated(s, [np.ones(f) for f in face_shapes(s)][:1]), "axis"),
        (
            lambda s: Coefficients.validated(
                s, [np.ones(f) for f in face_shapes(s)], [np.zeros(f) for f in face_shapes(s)]
            ),
            "theta",
        ),
        (lambda s: Coefficients.from_density(np.zeros(s)), "positive"),
        (lambda s: Coefficients.from_density(-np.ones(s)), "positive"),
        (lambda s: Coefficients.from_density(np.full(s, np.inf)), "NaN or Inf"),
        (lambda s: ghost_fluid_theta(np.zeros(s, np.int8), np.full(s, np.nan)), "NaN"),
        (lambda s: ghost_fluid_theta(np.zeros(s, np.int8), np.ones((2, 2))), "shape"),
        (lambda s: from_flags(np.zeros(s, np.int8), coefficients="rho"), "Coefficients"),
        (
            lambda s: from_flags(
                np.zeros(s, np.int8),
                coefficients=Coefficients.validated(
                    (4, 4), [np.ones(f) for f in face_shapes((4, 4))]
                ),
            ),
            "face shapes",
        ),
    ],
)
def test_bad_coefficients_get_a_clear_error(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build((5, 6))


def test_density_and_ghost_fluid_builders():
    rho = np.ones((6, 4))
    rho[3:] = 1000.0
    c = Coefficients.from_density(rho)
    assert c.beta[0][3, 0] == pytest.approx(2 / 1001)  # the face between the two phases
    assert c.beta[0][0, 0] == 1.0 and c.beta[0][6, 0] == pytest.approx(1e-3)
    np.testing.assert_allclose(face_average(rho)[1][:, 0], rho[:, 0])
    flags = np.zeros((6, 4), np.int8)
    flags[4:] = AIR
    phi = np.arange(6)[:, None] - 3.75 + np.zeros((6, 4))  # surface at x = 3.75 + ½
    theta = ghost_fluid_theta(flags, phi)
    np.testing.assert_allclose(theta[0][4], 0.75)  # from the centre of cell 3: 0.75 of the way
    assert np.all(theta[0][:4] == 1.0) and np.all(theta[1] == 1.0)


def test_hdf5_keeps_the_coefficients(tmp_path):
    problem = scene("ghost-splash", (20, 18), seed=2)
    path = save_problem(tmp_path / "p.h5", problem)
    back = load_problem(path)
    assert back.has_coefficients and abs(back.A - problem.A).max() == 0.0
    user = from_flags(
        problem.flags, coefficients=Coefficients.from_stencil(problem.flags, *problem.grid_stencil)
    )
    back = load_problem(save_problem(tmp_path / "u.h5", user))
    assert abs(back.A - user.A).max() == 0.0
    import h5py

    with h5py.File(path, "a") as f:
        del f["beta_1"]
    with pytest.raises(ValueError, match="incomplete"):
        load_problem(path)


@pytest.mark.parametrize("name", COEFFICIENT_SCENES)
@pytest.mark.parametrize("shape", [(24, 20), (16, 16, 18)])
def test_scenes_are_seeded_valid_operators(name, shape):
    a, b = scene(name, shape, seed=4), scene(name, shape, seed=4)
    assert a.has_coefficients and np.array_equal(a.b, b.b)
    assert abs(a.A - b.A).max() == 0.0 and abs(a.A - a.A.T).max() == 0.0
    assert not a.is_singular and np.linalg.norm(a.b) > 0
    d, links = a.grid_stencil
    assert d.min() >= 0 and all(w.min() >= 0 for w in links)


def test_two_phase_ratio_one_is_the_flag_laplacian_and_keeps_its_count():
    p = scene("two-phase", (32, 32, 32), seed=1, ratio=1.0)
    plain = from_flags(p.flags, p.b, boundary=p.boundary)
    assert abs(p.A - plain.A).max() <= 1e-12
    assert (
        deepcd.solve_result(p, rtol=1e-6).iterations
        == deepcd.solve_result(plain, rtol=1e-6).iterations
    )


def reference_strong_components(A: sp.csr_matrix, coords, halved) -> np.ndarray:
    """`component_aggregation` restricted to strong links, w_ij ≥ STRENGTH·max(w_max,i,
    w_max,j) — computed independently with scipy."""
    off = (-A).tocoo()
    mask = (off.row != off.col) & (off.data > 0)
    r, c, w = off.row[mask], off.col[mask], off.data[mask]
    wmax = np.zeros(A.shape[0])
    np.maximum.at(wmax, r, w)
    strong = w >= STRENGTH * np.maximum(wmax[r], wmax[c])
    S = sp.csr_matrix((-w[strong], (r[strong], c[strong])), shape=A.shape)
    S = S + sp.diags(A.diagonal())
    return component_aggregation(S.tocsr(), coords, halved)


@pytest.mark.parametrize("shape", [(13, 10, 9), (21, 17)])
def test_weighted_galerkin_levels_and_strong_components(shape):
    """Levels from a variable-coefficient stencil: each coarse level is ½ P₀ᵀ A P₀ for the
    components of strong links per block (independent scipy reference)."""
    flags = random_flags(shape, seed=11)
    rng = np.random.default_rng(1)
    rho = np.where(rng.random(shape) < 0.5, 1.0, 1000.0)
    problem = from_flags(flags, boundary=AIR, coefficients=Coefficients.from_density(rho))
    lap = GridLaplacian.from_problem(problem, dtype=torch.float64)
    plan = coarsening_plan(shape, 2)
    h = build_hierarchy(
        torch.as_tensor(flags)[None],
        problem.boundary,
        plan,
        dtype=torch.float64,
        operator=lap,
        merge_below=0,  # the block components alone (merging: tests/test_nn_vcycle.py)
    )
    A = grid_matrix(problem)
    keep = np.flatnonzero(A.diagonal() > 0)
    A = A[keep][:, keep].tocsr()
    coords = np.stack(np.unravel_index(keep, shape), axis=1)
    fine, coarse = h.levels[0], h.levels[1]
    labels = reference_strong_components(A, coords, plan[0])
    P = sp.csr_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)))
    Ac = (0.5 * (P.T @ A @ P)).tocsr()
    alive = np.flatnonzero(Ac.diagonal() > 1e-9 * Ac.diagonal().max())
    ours = fine.agg.numpy()
    for c in range(P.shape[1]):
        got = np.unique(ours[labels == c])
        assert len(got) == 1 and (got[0] >= 0) == (c in set(alive.tolist()))
    order = np.argsort([ours[labels == c][0] for c in alive])
    Ac = Ac[alive[order]][:, alive[order]]
    x = rng.standard_normal(coarse.n)
    got = coarse.apply(torch.as_tensor(x)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(got, Ac @ x, rtol=1e-12, atol=1e-12 * abs(Ac).max())


def test_a_density_jump_never_shares_a_coarse_unknown():
    """Water beside air (1000×) inside one block: like a wall, the jump splits the block."""
    shape = (16, 16)
    rho = np.ones(shape)
    rho[:, 7:] = 1000.0  # the interface at an odd position: blocks straddle it
    flags = np.zeros(shape, np.int8)
    problem = from_flags(flags, boundary=AIR, coefficients=Coefficients.from_density(rho))
    lap = GridLaplacian.from_problem(problem, dtype=torch.float64)
    h = build_hierarchy(
        torch.as_tensor(flags)[None], problem.boundary, coarsening_plan(shape, 2), operator=lap
    )
    heavy = (rho == 1000.0).ravel()
    owner = np.arange(flags.size)
    for level in h.levels[:-1]:
        owner = np.where(owner >= 0, level.agg.numpy()[np.maximum(owner, 0)], -1)
        for c in np.unique(owner[owner >= 0]):
            assert len(np.unique(heavy[owner == c])) == 1


@pytest.mark.parametrize(
    "name,shape,kw",
    [
        ("two-phase", (64, 64), {"ratio": 1000.0}),
        ("two-phase", (24, 24, 24), {"ratio": 1e4}),
        ("ghost-splash", (24, 24, 24), {}),
        ("cut-cells", (64, 64), {}),
    ],
)
def test_dcdm_on_coefficient_scenes_beats_the_issue_targets(name, shape, kw):
    """Converges to 1e-6 on the true residual within 2× pyamg SA's iterations + 10, and far
    below what the flags' Laplacian V-cycle (the old behaviour) takes on the same system."""
    problem = scene(name, shape, seed=3, **kw)
    res = deepcd.solve_result(problem, rtol=1e-6)
    amg = deepcd.solve_result(problem, method="amg-sa", rtol=1e-6)
    assert res.converged and res.final_relres <= 1e-6
    assert res.iterations <= 2 * amg.iterations + 10, (res.iterations, amg.iterations)
    assert res.iterations <= 30


def test_flags_only_vcycle_is_what_the_coefficients_fix():
    """The measured reason for issue 11: the same network on the flags' Laplacian (blind to
    the density) needs many times the iterations of the one built from A."""
    problem = scene("two-phase", (48, 48), seed=0, ratio=1000.0)
    net, _ = load_solver(default_solver(2))
    from deepcd.iterative.dcdm import dcdm
    from deepcd.nn.direction import NetworkDirection

    blind = NetworkDirection(net, from_flags(problem.flags, problem.b, boundary=problem.boundary))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = dcdm(problem.stencil, problem.b, direction=blind, rtol=1e-6, maxiter=3000)
    new = deepcd.solve_result(problem, rtol=1e-6)
    assert new.converged and old.iterations >= 3 * new.iterations, (old.iterations, new.iterations)


@pytest.mark.parametrize("shape", [(40, 36), (16, 16, 16)])
def test_users_csr_with_coefficients_solves_on_both_paths(shape):
    """solve(A, b, flags=) with a two-phase matrix: read as its stencil on the CPU path; the
    torch path (run here on the CPU, as on CUDA) takes the same steps."""
    problem = scene("two-phase", shape, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", deepcd.GridMismatchWarning)
        res = deepcd.solve_result(problem.A, problem.b, flags=problem.flags, rtol=1e-6)
    ref = deepcd.solve_result(problem, rtol=1e-6)
    assert res.converged and res.settings["grid_check"]["read_as_stencil"]
    assert abs(res.iterations - ref.iterations) <= 1
    net, _ = load_solver(default_solver(len(shape)))
    dev = dcdm_torch(problem, problem.b, network=net, rtol=1e-6)
    assert dev.converged and abs(dev.iterations - ref.iterations) <= 1
    np.testing.assert_allclose(problem.A @ dev.x, problem.b, atol=2e-6 * np.linalg.norm(problem.b))
    mg = deepcd.solve_result(problem, method="mgpcg", device="cpu", rtol=1e-6)
    assert mg.converged and mg.iterations <= ref.iterations + 5


def test_weighted_stencil_without_coefficients_is_the_flags():
    flags = random_flags((9, 8, 7), seed=2)
    d, links = weighted_stencil(flags, AIR, None)
    plain = GridLaplacian(flags, AIR, dtype=torch.float64)
    np.testing.assert_array_equal(d, plain.diag[0, 0].numpy())
    for w, t in zip(links, plain.links(), strict=True):
        np.testing.assert_array_equal(w, t[0, 0].numpy())


def dense_preconditioner(net, lap, shape) -> np.ndarray:
    n = int(np.prod(shape))
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, *shape)
    with torch.no_grad():
        return (
            torch.cat([net(eye[i : i + 1], operator=lap) for i in range(n)]).reshape(n, n).numpy()
        )


@pytest.mark.parametrize("local", [0, 4])
def test_vcycle_on_a_jump_is_symmetric_positive_definite(local):
    """Strength-split aggregates are irregular, so two coarse unknowns can be linked along
    several axes: the coarse link's axis must be the same both ways or the transfers, and the
    V-cycle, lose their symmetry (it did: 7e-5 relative at ratio 100). Local weights keep it."""
    shape = (14, 11)
    rng = np.random.default_rng(0)
    flags = rng.choice([FLUID, SOLID, AIR], size=shape, p=[0.8, 0.1, 0.1]).astype(np.int8)
    rho = np.where(rng.random(shape) < 0.5, 1.0, 100.0)
    problem = from_flags(flags, boundary=AIR, coefficients=Coefficients.from_density(rho))
    lap = GridLaplacian.from_problem(problem, dtype=torch.float64)
    torch.manual_seed(0)
    net = deepcd.nn.build_network("vcycle", 2, coarsest=2, local=local, dtype=torch.float64)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    M = dense_preconditioner(net, lap, shape)
    assert np.abs(M - M.T).max() <= 1e-12 * np.abs(M).max()
    keep = np.flatnonzero(lap.diag.numpy().ravel() > 0)
    assert np.linalg.eigvalsh(M[np.ix_(keep, keep)]).min() > 0


@pytest.mark.parametrize("shape", [(19, 16), (9, 10, 11)])
def test_local_weights_fast_path_equals_autograd_and_learns(shape):
    """CPU inference folds the per-link ω and per-unknown damping into the fused kernels'
    arrays; training runs torch ops with gradients into the local networks. Same V-cycle."""
    rng = np.random.default_rng(1)
    flags = rng.choice([FLUID, SOLID, AIR], size=shape, p=[0.8, 0.1, 0.1]).astype(np.int8)
    rho = np.where(rng.random(shape) < 0.5, 1.0, 1000.0)
    problem = from_flags(flags, boundary=AIR, coefficients=Coefficients.from_density(rho))
    lap = GridLaplacian.from_problem(problem, dtype=torch.float64)
    torch.manual_seed(2)
    net = deepcd.nn.build_network("vcycle", len(shape), coarsest=2, local=4, dtype=torch.float64)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    r = torch.randn(1, 1, *shape, dtype=torch.float64) * lap.fluid
    slow = net(r, operator=lap)
    with torch.inference_mode():
        fast = net(r, operator=lap)
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-10, atol=1e-10)
    slow.square().sum().backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in net.local.parameters())
    # untouched, the local networks are the classical V-cycle (ω exactly, g ≈ 1.0025)
    plain = deepcd.nn.build_network("vcycle", len(shape), coarsest=2, dtype=torch.float64)
    fresh = deepcd.nn.build_network("vcycle", len(shape), coarsest=2, local=4, dtype=torch.float64)
    with torch.no_grad():
        a, b = plain(r, operator=lap), fresh(r, operator=lap)
    assert float((a - b).norm() / a.norm()) < 1e-2


@pytest.mark.parametrize("shape", [(32, 28), (20, 20, 20)])
def test_cut_cells_around_the_bunny_blob(shape):
    """The bunny's smooth star-shaped solid with cut-cell face fractions: partly open faces,
    a solid core, and DCDM within the issue's target of pyamg SA."""
    problem = scene("cut-cells", shape, seed=2, blob=1)
    assert problem.params["cut_faces"] > 0 and np.any(problem.flags == SOLID)
    res = deepcd.solve_result(problem, rtol=1e-6)
    amg = deepcd.solve_result(problem, method="amg-sa", rtol=1e-6)
    assert res.converged and res.iterations <= 2 * amg.iterations + 10


@pytest.mark.parametrize(
    "shape,boundary", [((9, 7, 5), SOLID), ((1, 6, 5), AIR), ((11, 8), AIR), ((7, 1), SOLID)]
)
def test_weighted_stencil_operator_is_the_assembled_matrix(shape, boundary):
    """A coefficient problem's matrix-free operator (`WeightedStencilOperator`) applies the
    CSR matrix it assembles — random faces, some closed, ghost-fluid fractions, odd and
    one-cell-thin grids — and its matvec_dot returns x·Ax."""
    from deepcd.operators import WeightedStencilOperator

    flags = random_flags(shape, 3)
    problem = from_flags(flags, boundary=boundary, coefficients=random_coefficients(shape, 4))
    op = problem.stencil
    assert isinstance(op, WeightedStencilOperator) and op.n == problem.n
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = rng.standard_normal(problem.n)
        want = problem.A @ x
        np.testing.assert_allclose(op.matvec(x), want, rtol=1e-13, atol=1e-13 * abs(want).max())
        out = np.empty(problem.n)
        assert op.matvec_dot(x, out) == pytest.approx(x @ want, rel=1e-12)
        np.testing.assert_allclose(out, want, rtol=1e-13, atol=1e-13 * abs(want).max())
    np.testing.assert_array_equal(op.diagonal(), problem.A.diagonal())
    assert op.csr is problem.A


@pytest.mark.parametrize("name", COEFFICIENT_SCENES)
def test_coefficient_scenes_apply_their_matrix_matrix_free(name):
    problem = scene(name, (16, 17, 18), seed=0)
    x = np.random.default_rng(0).standard_normal(problem.n)
    want = problem.A @ x
    got = problem.stencil.matvec(x)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * abs(want).max())


@pytest.mark.parametrize(
    "dim,name,shape",
    [(2, "splash", (70, 61)), (2, "two-phase", (33, 40)), (3, "ghost-splash", (18, 17, 19))],
)
def test_fused_local_weight_kernels_equal_the_torch_networks(dim, name, shape):
    """CPU inference computes a float32 network's local weights with `deepcd.kernels.local`
    (features and both networks in one pass, a rational tanh): g per unknown on the grid and
    on every graph level, ω per grid face and per graph link, to float32 rounding of the
    torch form that training differentiates."""
    from deepcd.nn.direction import NetworkDirection
    from deepcd.nn.local import grid_face_features

    problem = scene(name, shape, seed=0)
    torch.manual_seed(3)
    net = deepcd.nn.build_network("vcycle", dim, local=8)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5 * torch.randn_like(p))
    NetworkDirection(net, problem).prepare()
    h = net._cache[2]
    tol = dict(rtol=2e-6, atol=2e-6)
    with torch.no_grad():
        want = net.local.damping(net._grid_node_features(h))
        torch.testing.assert_close(net._host_damping(h, 0, True), want, **tol)
        for depth in range(1, len(h.levels)):
            level, i = h.levels[depth], min(depth, net._J - 1)
            node, edge = net._features(level)
            g, omega = net._graph_local(level, i)
            torch.testing.assert_close(torch.from_numpy(g), net.local.damping(node), **tol)
            theta = net.transfers[i][torch.from_numpy(level.host["axis"].astype(np.int64))]
            want = net.local.omega(edge, theta)
            torch.testing.assert_close(torch.from_numpy(omega), want, **tol)
        for a, link in enumerate(h.grid.links):
            if link.shape[a + 2] == 0:
                continue
            feats = grid_face_features(h.grid.diag, link, h.grid_axis[a][0], a)
            want = net.local.omega(feats.reshape(-1, 3), net.transfers[0][a]).reshape(link.shape)
            want = torch.where(link > 0, want, torch.zeros_like(want))
            torch.testing.assert_close(net._host_face_omega(h, a, 0), want, **tol)
        assert float(want.abs().max()) > 0


def test_rational_tanh_of_the_local_kernels():
    """`deepcd.kernels.local._tanh` (Eigen's float32 rational form) stays within 3e-7 of
    tanh everywhere, odd, and saturates below 1."""
    import numba as nb

    from deepcd.kernels.local import _tanh

    @nb.njit
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = _tanh(x[i])

    x = np.linspace(-40.0, 40.0, 400_001)
    out = np.empty_like(x)
    run(x, out)
    assert np.abs(out - np.tanh(x)).max() < 3e-7
    neg = np.empty_like(x)
    run(-x, neg)
    np.testing.assert_array_equal(neg, -out)
    assert np.abs(out).max() < 1.0
