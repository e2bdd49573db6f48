"""The learned V-cycle network: Galerkin levels, symmetry, linearity, caching, convergence."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from deepcd.iterative.dcdm import dcdm
from deepcd.iterative.krylov import cg
from deepcd.nn import build_network, coarsening_plan, count_parameters, flops_per_unknown
from deepcd.nn.direction import NetworkDirection
from deepcd.nn.multigrid import build_hierarchy
from deepcd.problems import AIR, FLUID, SOLID, from_flags, scene
from deepcd.problems.problem import Problem


def random_problem(shape, seed, boundary=SOLID) -> Problem:
    rng = np.random.default_rng(seed)
    flags = rng.choice([FLUID, SOLID, AIR], size=shape, p=[0.75, 0.15, 0.1]).astype(np.int8)
    return from_flags(flags, boundary=boundary)


def grid_matrix(problem: Problem) -> sp.csr_matrix:
    """problem.A embedded in the whole grid (zero rows/columns off FLUID)."""
    n = problem.flags.size
    idx = np.flatnonzero(problem.flags.ravel() == FLUID)
    a = problem.A.tocoo()
    return sp.csr_matrix((a.data, (idx[a.row], idx[a.col])), shape=(n, n))


def component_aggregation(A: sp.csr_matrix, coords: np.ndarray, halved) -> np.ndarray:
    """The reference aggregation, computed independently with scipy: the connected components
    of A's graph restricted to links inside a block (coords (n, d) // 2 on halved axes)."""
    block = np.stack(
        [coords[:, a] // 2 if on else coords[:, a] for a, on in enumerate(halved)], axis=1
    )
    key = np.unique(block, axis=0, return_inverse=True)[1].ravel()
    a = A.tocoo()
    inside = (a.row != a.col) & (key[a.row] == key[a.col]) & (a.data != 0)
    n = A.shape[0]
    g = sp.csr_matrix((np.ones(inside.sum()), (a.row[inside], a.col[inside])), shape=(n, n))
    return connected_components(g, directed=False)[1]


@pytest.mark.parametrize(
    "shape,boundary,name",
    [((9, 8, 11), SOLID, None), ((7, 12, 6), AIR, None), ((17, 10), SOLID, None),
     ((9, 13), AIR, None), ((24, 24, 24), SOLID, "maze"), ((48, 40), SOLID, "maze")],
)  # fmt: skip
def test_galerkin_levels_equal_scipy_products(shape, boundary, name):
    """Each coarse level is f·P₀ᵀ A P₀ for the aggregation into connected components per
    block, computed here independently with scipy (components with a zero coarse diagonal,
    whole closed regions inside a block, dropped), f = level_scale of the level's counts: ½
    on grid-like levels, less on a maze's corridors."""
    from deepcd.nn.multigrid import level_scale

    if name is None:
        problem = random_problem(shape, seed=len(shape), boundary=boundary)
    else:
        problem = scene(name, shape, seed=0)
    flags = torch.tensor(problem.flags)[None]
    plan = coarsening_plan(shape, 2)
    # the block components alone (the merging of one-node components is tested below)
    h = build_hierarchy(flags, problem.boundary, plan, dtype=torch.float64, merge_below=0)
    A = grid_matrix(problem)
    keep = np.flatnonzero(A.diagonal() > 0)
    A = A[keep][:, keep].tocsr()
    coords = np.stack(np.unravel_index(keep, shape), axis=1)
    rng = np.random.default_rng(0)
    factors = []
    for fine, coarse, halved in zip(h.levels[:-1], h.levels[1:], plan, strict=False):
        labels = component_aggregation(A, coords, halved)
        P = sp.csr_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)))
        Ac = (P.T @ A @ P).tocsr()
        alive = np.flatnonzero(Ac.diagonal() > 1e-9 * Ac.diagonal().max())
        links = A.nnz - np.count_nonzero(A.diagonal())
        factors.append(level_scale(A.shape[0], len(alive), links, 0.5))
        Ac = factors[-1] * Ac
        # the same partition (up to numbering): each reference component maps to one node
        ours = fine.agg.numpy()
        for c in range(P.shape[1]):
            got = np.unique(ours[labels == c])
            assert len(got) == 1 and (got[0] >= 0) == (c in set(alive.tolist()))
        order = np.array([ours[labels == c][0] for c in alive])
        perm = np.argsort(order)
        Ac = Ac[alive[perm]][:, alive[perm]]
        x = rng.standard_normal(coarse.n)
        got = coarse.apply(torch.as_tensor(x)[:, None])[:, 0].numpy()
        np.testing.assert_allclose(got, Ac @ x, atol=1e-12)
        A = Ac.tocsr()
        c0 = np.stack([coords[:, a] // 2 if on else coords[:, a] for a, on in enumerate(halved)], 1)
        coords = np.array([c0[labels == alive[perm][i]][0] for i in range(coarse.n)])
    # every level is symmetric positive semidefinite
    assert np.linalg.eigvalsh(A.toarray()).min() > -1e-10
    if name == "maze":  # corridors coarsen with a smaller factor
        assert min(factors) < 0.45


@pytest.mark.parametrize(
    "n_fine,n_coarse,links,base,want",
    [
        (8000, 1000, 6 * 8000 - 1200, 0.5, 0.5),  # 2³ blocks of a 3D grid: ½ exactly
        (4000, 1000, 4 * 4000, 0.5, 0.5),  # 2² blocks of a 2D grid
        (2500, 1000, 2 * 2500, 0.5, 0.4),  # a chain cut into pieces of 2.5 cells: 1/2.5
        (10000, 1000, 2 * 10000, 0.5, 0.3),  # pieces of 10: at least SCALE_MIN
        (2500, 1000, 2 * 2500, 0.35, 0.35),  # never above the base
        (0, 0, 0, 0.5, 0.5),
    ],
)
def test_level_scale_is_one_over_the_aggregate_size(n_fine, n_coarse, links, base, want):
    from deepcd.nn.multigrid import level_scale

    assert level_scale(n_fine, n_coarse, links, base) == pytest.approx(want, rel=1e-3)


@pytest.mark.parametrize("shape", [(13, 11, 9), (29, 23)])
def test_one_node_components_merge_along_links_and_galerkin_stays_exact(shape):
    """With MERGE_BELOW = 2 a one-node block component joins a neighbour's across blocks:
    every aggregate stays connected through A's links (so never across a wall), none of one
    node is left that has a link, and each coarse level is still exactly f·P₀ᵀ A P₀
    (f: `level_scale`)."""
    from deepcd.nn.multigrid import level_scale

    problem = random_problem(shape, seed=5, boundary=AIR)
    plan = coarsening_plan(shape, 2)
    h = build_hierarchy(
        torch.tensor(problem.flags)[None], problem.boundary, plan, dtype=torch.float64
    )
    A = grid_matrix(problem)
    keep = np.flatnonzero(A.diagonal() > 0)
    A = A[keep][:, keep].tocsr()
    rng = np.random.default_rng(1)
    for fine, coarse in zip(h.levels[:-1], h.levels[1:], strict=False):
        agg = fine.agg.numpy()
        on = agg >= 0
        P = sp.csr_matrix(
            (np.ones(on.sum()), (np.flatnonzero(on), agg[on])), shape=(len(agg), coarse.n)
        )
        x = rng.standard_normal(coarse.n)
        got = coarse.apply(torch.as_tensor(x)[:, None])[:, 0].numpy()
        f = level_scale(A.shape[0], coarse.n, A.nnz - np.count_nonzero(A.diagonal()), 0.5)
        np.testing.assert_allclose(got, f * (P.T @ A @ P) @ x, atol=1e-12)
        links = (A - sp.diags(A.diagonal())).tocsr()
        for c in range(coarse.n):
            members = np.flatnonzero(agg == c)
            sub = links[members][:, members]
            assert connected_components(sub, directed=False)[0] == 1
            if len(members) == 1:
                assert links[members[0]].nnz == 0 or np.all(agg[links[members[0]].indices] < 0)
        A = (f * (P.T @ A @ P)).tocsr()


@pytest.mark.parametrize("shape", [(16, 12, 10), (32, 20)])
@pytest.mark.parametrize("hole", [False, True])
def test_one_cell_wall_never_shares_a_coarse_unknown(shape, hole):
    """A wall one cell thick at an odd position: piecewise-constant blocks from the second
    coarsening on would merge its two sides. Every coarse unknown, at every level, must hold
    fine cells of one side only (no hole), or cells connected inside its block (hole)."""
    flags = np.zeros(shape, np.int8)
    wall = 5
    flags[wall] = SOLID
    if hole:
        flags[(wall, *([0] * (len(shape) - 1)))] = FLUID
    problem = from_flags(flags, boundary=(SOLID,) * (2 * len(shape) - 1) + (AIR,))
    h = build_hierarchy(torch.as_tensor(flags)[None], problem.boundary, coarsening_plan(shape, 2))
    node = np.flatnonzero(flags.ravel() == FLUID)
    side = np.unravel_index(node, shape)[0] > wall
    owner = np.arange(len(node))
    for level in h.levels[:-1]:
        owner = np.where(owner >= 0, level.agg.numpy()[np.maximum(owner, 0)], -1)
        for c in np.unique(owner[owner >= 0]):
            sides = np.unique(side[owner == c])
            if not hole:
                assert len(sides) == 1
        if not hole:
            assert len(np.unique(owner[owner >= 0])) >= 2


def perturbed(dim: int, seed: int = 0):
    torch.manual_seed(seed)
    net = build_network("vcycle", dim, coarsest=2, dtype=torch.float64)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("shape", [(9, 12, 15), (13, 17)])
def test_symmetric_linear_and_masked(shape):
    problem = random_problem(shape, seed=3, boundary=AIR)
    net = perturbed(len(shape))
    flags = torch.tensor(problem.flags)
    u, v = torch.randn(2, 1, 1, *shape, dtype=torch.float64)
    with torch.no_grad():
        mu, mv = net(u, flags, problem.boundary), net(v, flags, problem.boundary)
        assert float((mu * v).sum()) == pytest.approx(float((mv * u).sum()), rel=1e-12)
        torch.testing.assert_close(net(2 * u - 3 * v, flags, problem.boundary), 2 * mu - 3 * mv)
        assert torch.all(mu[0, 0][flags != FLUID] == 0)


@pytest.mark.parametrize("shape", [(9, 12, 15), (13, 17)])
def test_inference_fast_paths_equal_the_autograd_path(shape):
    """CPU inference runs the numba Chebyshev smoother, shifted-tap convolutions and cached
    transfer weights; training runs torch ops. Both must compute the same V-cycle."""
    problem = random_problem(shape, seed=4)
    net = perturbed(len(shape)).float()
    flags = torch.tensor(problem.flags)
    r = torch.randn(1, 1, *shape)
    with torch.inference_mode():
        fast = net(r, flags, problem.boundary)
    slow = net(r, flags, problem.boundary)  # parameters require grad: torch's convolution
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "dim,name,shape,model,layout,fused",
    [(3, "smoke-obstacles", (18, 17, 16), "vcycle-3d", "grid", True),
     (3, "smoke-obstacles", (18, 17, 16), "vcycle-3d", "grid", False),
     (3, "maze", (20, 18, 16), None, "graph", True),
     (3, "two-phase", (16, 16, 16), None, "grid", True),
     (2, "splash", (33, 40), "vcycle-2d", "grid", True),
     (2, "maze", (40, 36), "vcycle-2d", "graph", True)],
)  # fmt: skip
def test_cpu_inference_ignores_r_off_unknowns(dim, name, shape, model, layout, fused):
    """CPU inference takes r without masking it (`VCycleNet.forward`): whatever r holds off
    level 0's unknowns — SOLID and AIR cells, and a FLUID cell walled in on every side (no
    unknown: its diagonal is 0) — the V-cycle is the one of r masked, bit for bit, and 0
    there. Shipped networks (2D: local weights) and random ones, grid and graph level 0,
    fused and unfused transfers, variable coefficients."""
    from deepcd.nn.stencil import GridLaplacian
    from deepcd.nn.weights import load_solver

    problem = scene(name, shape, seed=0)
    flags = problem.flags.copy()
    inner = tuple(n // 2 for n in shape)  # a FLUID cell walled in by SOLID
    for a in range(dim):
        for step in (-1, 1):
            nbr = list(inner)
            nbr[a] += step
            flags[tuple(nbr)] = SOLID
    flags[inner] = FLUID
    n = int((flags == FLUID).sum())
    problem = Problem(flags, np.zeros(n), problem.boundary, coefficients=problem.coefficients)
    if model is None:
        net = perturbed(dim)
    else:
        net, _ = load_solver(model)
    net.fine_layout, net.fused_cycle = layout, fused
    operator = None
    if problem.has_coefficients:
        operator = GridLaplacian.from_problem(problem, "cpu", torch.float64)
    ft = torch.tensor(flags)[None, None]
    h = net.hierarchy(ft, shape, problem.boundary, torch.float32, 1, operator)
    active = h.grid.active
    assert float(active[(0, 0, *inner)]) == 0.0  # the walled-in cell has no unknown
    r = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        got = net(r, ft, problem.boundary, operator=operator, levels=h)
        want = net(r * active, ft, problem.boundary, operator=operator, levels=h)
    assert torch.equal(got, want)
    assert torch.all(got[active == 0] == 0)


@pytest.mark.parametrize(
    "dim,name,shape,model",
    [(3, "smoke-obstacles", (40, 40, 40), "vcycle-3d"),  # level 1 a grid, levels 2+ graphs
     (3, "maze", (24, 24, 24), "vcycle-3d"),  # level 0 on its graph: the whole V-cycle
     (3, "two-phase", (24, 24, 24), "vcycle-3d"),
     (3, "porous", (20, 20, 20), None),  # random weights, smooth=2
     (2, "splash", (64, 64), "vcycle-2d"),  # local weights
     (2, "maze", (60, 60), "vcycle-2d")],
)  # fmt: skip
def test_graph_cycle_plan_is_the_same_vcycle(dim, name, shape, model):
    """The graph levels' V-cycle from arrays resolved once (`VCycleNet.graph_plans`,
    `deepcd.nn.graph_cycle`) gives the looked-up one bit for bit, is cached per parameter
    state, and a parameter changed in place makes a new plan."""
    from deepcd.nn.weights import load_solver

    problem = scene(name, shape, seed=0)
    net = perturbed(dim) if model is None else load_solver(model)[0]
    direction = NetworkDirection(net, problem)
    r = np.random.default_rng(1).standard_normal(problem.n)
    planned = direction(r)
    h = net._cache[2]
    plans = [v for lv in h.levels for k, v in lv.cache.items() if k[0] == "graph_cycle"]
    assert plans  # the plan ran
    assert direction(r).tobytes() == planned.tobytes()  # and is reused
    net.graph_plans = False
    assert direction(r).tobytes() == planned.tobytes()
    with torch.no_grad():
        net.corrections.mul_(0.5)
        net.smoothers[-1].add_(0.3)
    looked_up = direction(r)
    net.graph_plans = True
    assert not np.array_equal(looked_up, planned)
    assert direction(r).tobytes() == looked_up.tobytes()
    h.coarse_inverse = None  # the last level by smoothing sweeps instead
    swept = direction(r)
    net.graph_plans = False
    assert direction(r).tobytes() == swept.tobytes()


@pytest.mark.parametrize("spread", [0.0, 3.0])
def test_positive_definite_for_any_parameters(spread):
    """SPD by construction: at initialization and with large random parameters."""
    problem = scene("pool", (10, 9, 12), seed=0)
    torch.manual_seed(7)
    net = build_network("vcycle", 3, coarsest=2, dtype=torch.float64)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(spread * torch.randn_like(p))
    flags = torch.tensor(problem.flags)
    n = problem.n
    basis = np.eye(n)
    cols = []
    with torch.no_grad():
        for j in range(n):
            g = torch.as_tensor(problem.to_grid(basis[j]))[None, None]
            cols.append(problem.from_grid(net(g, flags, problem.boundary)[0, 0].numpy()))
    M = np.array(cols).T
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    assert np.linalg.eigvalsh(M).min() > 0


def test_batch_of_different_flags_and_no_stale_cache():
    a, b = random_problem((10, 9, 8), 5), random_problem((10, 9, 8), 6, boundary=AIR)
    net = perturbed(3)
    r = torch.randn(2, 1, 10, 9, 8, dtype=torch.float64)
    fa, fb = torch.tensor(a.flags), torch.tensor(b.flags)
    with torch.no_grad():
        qa = net(r[:1], fa, a.boundary)
        qa_again = net(r[:1], fa, a.boundary)  # cached hierarchy
        qb = net(r[1:], fb, b.boundary)  # a different problem must not hit the cache
        both = net(r, torch.stack([fa, fb]), torch.tensor([a.boundary, b.boundary]))
        fresh = perturbed(3)(r[1:], fb, b.boundary)
    torch.testing.assert_close(qa, qa_again)
    torch.testing.assert_close(qb, fresh)
    torch.testing.assert_close(both, torch.cat([qa, qb]))


@pytest.mark.parametrize("name,shape", [("smoke-obstacles", (24, 24, 24)), ("pool", (48, 40))])
def test_untrained_vcycle_in_dcdm_beats_cg(name, shape):
    problem = scene(name, shape, seed=2)
    net = build_network("vcycle", len(shape))
    res = dcdm(problem.stencil, problem.b, direction=NetworkDirection(net, problem), rtol=1e-8)
    base = cg(problem.stencil, problem.b, rtol=1e-8)
    assert res.converged and res.final_relres <= 1e-8
    assert res.iterations * 3 <= base.iterations
    assert res.settings["safeguard_steps"] == 0


def test_size_and_cost():
    net = build_network("vcycle", 3)
    assert count_parameters(net) == 4 * 3 + 3 * 3 + 3  # smoothers, per-axis ω, corrections
    cost = flops_per_unknown(net, (64, 64, 64))
    assert 50 < cost < 300
    assert flops_per_unknown(net, (256, 256, 256)) == pytest.approx(cost, rel=0.01)


def test_bad_input():
    with pytest.raises(ValueError, match="use_flags"):
        build_network("vcycle", 3, use_flags=True)
    with pytest.raises(ValueError, match="smooth"):
        build_network("vcycle", 3, smooth=0)
    with pytest.raises(ValueError, match="degree"):
        build_network("vcycle", 3, degree=0)
    net = build_network("vcycle", 2)
    with pytest.raises(ValueError, match="pass flags"):
        net(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="flags"):
        net(torch.zeros(1, 1, 8, 8), torch.zeros(8, 7, dtype=torch.int8))


def test_switched_off_network_restarts_as_cg():
    """A direction source that is good for two steps and then useless (a fixed vector) loses
    three times and is switched off: the iteration must then restart as plain CG rather than
    drag the mixed history along (measured before the restart: 339 iterations where CG
    took 214)."""
    problem = scene("smoke-obstacles", (24, 24, 24), seed=1)
    good = NetworkDirection(build_network("vcycle", 3), problem)
    fixed = np.random.default_rng(0).standard_normal(problem.n)
    calls = []

    def direction(r):
        calls.append(1)
        return good(r) if len(calls) <= 2 else fixed

    res = dcdm(problem.stencil, problem.b, direction=direction, rtol=1e-8)
    base = cg(problem.stencil, problem.b, rtol=1e-8)
    assert res.converged
    assert res.settings["network_steps"] == 2 and res.settings["network_losses"] == 3
    assert len(calls) == 5
    assert res.iterations <= base.iterations + 5


def test_coarsening_continues_until_the_coarsest_level_is_solved_exactly(monkeypatch):
    """A 3D maze barely coarsens (every block holds separate corridors): the hierarchy keeps
    coarsening past the geometric plan until the exact dense solve applies."""
    import deepcd.nn.multigrid as mg

    monkeypatch.setattr(mg, "DENSE_MAX", 40)
    problem = scene("maze", (16, 16, 16), seed=0)
    plan = coarsening_plan(problem.shape, 4)
    h = mg.build_hierarchy(torch.tensor(problem.flags)[None], problem.boundary, plan)
    assert len(h.levels) > len(plan) + 1
    assert h.levels[-1].n <= 40 and h.coarse_inverse is not None
    for level in h.levels[len(plan) : -1]:  # past the plan: pairs of linked nodes
        agg = level.host["agg"]
        sizes = np.bincount(agg[agg >= 0])
        assert sizes.max() <= 2 and (sizes == 2).any()
    net = build_network("vcycle", 3, smooth=1, degree=6)
    res = dcdm(problem.stencil, problem.b, direction=NetworkDirection(net, problem), rtol=1e-6)
    assert res.converged


@pytest.mark.parametrize("layout", ["grid", "graph"])
@pytest.mark.parametrize(
    "dim,name,shape",
    [(3, "maze", (20, 18, 16)), (2, "maze", (40, 36)), (3, "two-phase", (16, 16, 16)),
     (2, "two-phase", (40, 36)), (3, "smoke-plume", (24, 24, 24))],
)  # fmt: skip
def test_prepare_builds_everything_the_first_application_reads(
    dim, name, shape, layout, monkeypatch
):
    """After `NetworkDirection.prepare` (hierarchy + `prepare_inference`), applying the
    shipped network (3D: global weights; 2D: local weights) derives nothing new — nor builds
    the levels again, variable coefficients included — and gives what a direction without the
    warm-up gives, with level 0 on the grid or on its graph."""
    import deepcd.nn.multigrid as mg
    from deepcd.nn.weights import default_solver, load_solver

    monkeypatch.setattr(mg, "GRID_FORM_MIN", 0)  # coarse levels on the grid at test sizes
    net, _ = load_solver(default_solver(dim))
    net.fine_layout = layout
    problem = scene(name, shape, seed=0)
    direction = NetworkDirection(net, problem)
    direction.prepare()
    h = net._cache[2]
    if name == "smoke-plume":
        assert any(f is not None for f in h._forms.values())

    def keys():
        levels = [tuple(lv.cache) for lv in h.levels]
        forms = [
            (d, tuple(f.grid.cache), f._members is not None)
            for d, f in h._forms.items()
            if f is not None
        ]
        return tuple(h.grid.cache), levels, h._members is not None, len(net._beta_cache), forms

    before = keys()
    r = np.random.default_rng(0).standard_normal(problem.n)
    q = direction(r)
    assert net._cache[2] is h
    assert keys() == before
    net._cache = None  # a fresh hierarchy, built lazily by the first application
    fresh = NetworkDirection(net, problem)
    np.testing.assert_array_equal(fresh(r), q)


@pytest.mark.parametrize(
    "dim,name,shape",
    [(3, "maze", (20, 18, 16)), (3, "porous", (17, 16, 18)), (3, "two-phase", (16, 16, 16)),
     (2, "maze", (40, 36)), (2, "splash", (33, 40)), (2, "two-phase", (40, 36))],
)  # fmt: skip
def test_level_zero_on_its_graph_is_the_same_vcycle(dim, name, shape):
    """CPU inference may run level 0 on its graph of unknowns (`fine_layout`): the same
    smoother, residual and transfers as the grid kernels, summed in another order — shipped
    networks with global (3D) and local (2D) weights, variable coefficients included."""
    from deepcd.nn.weights import default_solver, load_solver

    problem = scene(name, shape, seed=0)
    r = np.random.default_rng(3).standard_normal(problem.n)
    out = {}
    for layout in ("grid", "graph"):
        net, _ = load_solver(default_solver(dim))
        net.fine_layout = layout
        direction = NetworkDirection(net, problem)
        direction.prepare()
        assert net.fine_on_graph(net._cache[2]) == (layout == "graph")
        out[layout] = direction(r)
    np.testing.assert_allclose(out["graph"], out["grid"], rtol=2e-4, atol=2e-5 * abs(r).max())
    # and both are the float64 autograd-free torch V-cycle, up to float32 rounding
    net, _ = load_solver(default_solver(dim))
    net.fine_layout = "grid"
    ref = NetworkDirection(net, problem, dtype=torch.float64)(r)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(out["graph"], ref, rtol=0, atol=1e-4 * scale)


def test_auto_layout_follows_the_fluid_share():
    """ "auto" runs level 0 on its graph where few cells are unknowns (a maze), on the grid
    where most are (an open scene); a wrong name is an error."""
    from deepcd.nn.networks.vcycle import GRAPH_FINE_BELOW

    net = build_network("vcycle", 3, smooth=1, degree=3)
    for name, graph in (("maze", True), ("smoke-obstacles", False)):
        problem = scene(name, (24, 24, 24), seed=0)
        direction = NetworkDirection(net, problem)
        direction.prepare()
        h = net._cache[2]
        share = h.levels[0].n / np.prod(problem.shape)
        assert (share < GRAPH_FINE_BELOW) == graph
        assert net.fine_on_graph(h) == graph
    net.fine_layout = "sparse"
    with pytest.raises(ValueError, match="fine_layout must be auto, grid or graph"):
        net.fine_on_graph(h)


@pytest.mark.parametrize(
    "dim,name,shape,local,seed",
    [(3, "smoke-plume", (24, 20, 26), 0, 0), (3, "smoke-obstacles", (40, 40, 40), 0, 0),
     (2, "smoke-plume", (48, 40), 0, 0), (3, "smoke-obstacles", (40, 40, 40), 1, 0),
     (3, "smoke-obstacles", (40, 40, 40), 0, 1), (3, "bunny", (32, 36, 34), 0, 0),
     (3, "smoke-obstacles", (36, 34, 38), 0, 3), (2, "splash", (96, 80), 0, 0),
     (3, "ghost-splash", (32, 30, 28), 0, 0), (2, "cut-cells", (64, 60), 0, 0)],
)  # fmt: skip
def test_coarse_levels_that_are_grids_run_the_same_vcycle(
    dim, name, shape, local, seed, monkeypatch
):
    """A graph level whose graph is a stencil on its block grid, save a few links off it
    (`ExtraLinks`: smoke-obstacles seeds 1 and 3, bunny, splash, and the variable
    coefficients of ghost-splash and cut-cells), runs on the grid kernels (`grid_form`): the
    same V-cycle as on the graph, up to float32 summation order — with random parameters, on
    odd shapes, in 2D; never with local weights (they are per link of the graph)."""
    import deepcd.nn.multigrid as mg

    monkeypatch.setattr(mg, "GRID_FORM_MIN", 0)
    problem = scene(name, shape, seed=seed)
    net = build_network("vcycle", dim, smooth=1, degree=4, local=local)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    direction = NetworkDirection(net, problem)
    direction.prepare()
    h = net._cache[2]
    forms = [net._grid_form(h, d) for d in range(1, len(h.levels))]
    assert any(f is not None for f in forms)
    extra = any(f is not None and f.grid.extra is not None for f in forms)
    assert extra == (seed > 0 or name not in ("smoke-plume", "smoke-obstacles")) or local
    r = np.random.default_rng(2).standard_normal(problem.n)
    on = direction(r)
    net.grid_forms = False
    off = direction(r)
    if local:
        np.testing.assert_array_equal(on, off)  # local weights: the graph in both
        return
    assert not np.array_equal(on, off)  # another summation order: the grid form ran
    np.testing.assert_allclose(on, off, rtol=0, atol=2e-5 * np.abs(off).max())


def test_grid_form_is_the_graph_level_on_its_grid(monkeypatch):
    """The grid form's stencil applied to a level vector is the graph level's A x; levels
    whose blocks hold two unknowns (cells that touch only diagonally inside a block) have
    none, nor do a maze's."""
    import deepcd.nn.multigrid as mg

    monkeypatch.setattr(mg, "GRID_FORM_MIN", 0)
    problem = scene("smoke-plume", (20, 22, 18), seed=0)
    net = build_network("vcycle", 3, smooth=1, degree=3)
    flags = torch.tensor(problem.flags)[None, None]
    h = net.hierarchy(flags, problem.shape, tuple(problem.boundary), torch.float64)
    sub = mg.grid_form(h, 1)
    assert sub is not None and sub.offset == 1 and sub.levels[0] is h.levels[1]
    x = torch.as_tensor(np.random.default_rng(0).standard_normal((h.levels[1].n, 1)))
    want = h.levels[1].apply(x)
    got = sub.to_nodes(sub.grid.apply(sub.from_nodes(x)))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)

    # one with links off its grid (a one-cell component merged into a neighbouring block's
    # unknown): the stencil plus those links is the graph level, for A and every S_a
    problem = scene("bunny", (32, 36, 34), seed=0)
    flags = torch.tensor(problem.flags)[None, None]
    h = net.hierarchy(flags, problem.shape, tuple(problem.boundary), torch.float64)
    sub = mg.grid_form(h, 1)
    assert sub is not None and sub.grid.extra is not None and sub.grid.extra.nnz > 0
    level = h.levels[1]
    x = torch.as_tensor(np.random.default_rng(1).standard_normal((level.n, 1)))
    got = sub.to_nodes(sub.grid.apply(sub.from_nodes(x)))
    np.testing.assert_allclose(got.numpy(), level.apply(x).numpy(), rtol=1e-12, atol=1e-12)
    for a in range(3):
        omega = torch.tensor(0.3)
        got = sub.to_nodes(sub.smooth_grid_axis(sub.from_nodes(x), a, omega))
        want = level.smooth_axis(x, a, omega)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)

    flags = np.full((16, 16, 16), FLUID, dtype=np.int8)
    flags[6, 7, :] = flags[7, 6, :] = SOLID  # block (3, 3, ·): two diagonal columns
    for p in (from_flags(flags, boundary=AIR), scene("maze", (16, 16, 16), seed=0)):
        h = net.hierarchy(
            torch.tensor(p.flags)[None, None], p.shape, tuple(p.boundary), torch.float64
        )
        assert mg.grid_form(h, 1) is None


def _level_dict(A: sp.csr_matrix) -> dict:
    """A Laplacian-like matrix as a hierarchy level's dict (diagonal + negated off-diagonal
    links), the input of `multigrid._coarse_inverse`."""
    off = sp.csr_matrix(A - sp.diags(A.diagonal()))
    off.eliminate_zeros()
    return dict(d=A.diagonal().copy(), w=-off.data, indices=off.indices, indptr=off.indptr)


@pytest.mark.parametrize("cholesky_fails", [False, True])
def test_coarse_inverse_is_the_pseudo_inverse_on_the_range(cholesky_fails, monkeypatch):
    """The coarsest level's dense inverse: A's pseudo-inverse on its range with a closed
    component (Neumann: constant null vector) and an open one (Dirichlet: invertible), the
    same through the Cholesky factor and through LU (taken when the factor fails)."""
    import deepcd.nn.multigrid as mg

    def path(m: int, dirichlet: bool) -> np.ndarray:
        L = sp.diags([-np.ones(m - 1), 2.0 * np.ones(m), -np.ones(m - 1)], [-1, 0, 1]).toarray()
        L[0, 0] = L[-1, -1] = 1.0
        if dirichlet:
            L[0, 0] += 1.0
        return L

    A = sp.csr_matrix(sp.block_diag([path(7, False), path(5, True)]))
    if cholesky_fails:
        monkeypatch.setattr(
            mg.torch.linalg,
            "cholesky_ex",
            lambda a: (a, torch.ones((), dtype=torch.int32)),
        )
    inv = mg._coarse_inverse(_level_dict(A))
    np.testing.assert_allclose(inv, inv.T, atol=0)
    closed = np.r_[np.ones(7), np.zeros(5)] / np.sqrt(7)
    proj = np.eye(12) - np.outer(closed, closed)  # onto A's range
    np.testing.assert_allclose(proj @ inv @ proj, np.linalg.pinv(A.toarray()), atol=1e-12)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randint(0, 3, (1, 16, 16, 16), dtype=torch.int8),  # words of 8 flags
        lambda: torch.randint(0, 3, (1, 5, 7, 3), dtype=torch.int8),  # 105 bytes: elementwise
        lambda: torch.rand(2, 1, 6, 4, dtype=torch.float64),
        lambda: torch.rand(4, 6, dtype=torch.float32)[:, :3],  # not contiguous
    ],
)
def test_levels_cache_compares_every_byte(make):
    """The hierarchy cache's check (`_same_bytes`): equal for a copy, unequal when any one
    element differs, whatever the size, dtype or layout."""
    from deepcd.nn.networks.vcycle import _same_bytes

    a = make()
    assert _same_bytes(a, a.clone())
    flat = a.reshape(-1)
    for i in (0, flat.numel() // 2, flat.numel() - 1):
        b = a.clone()
        b.reshape(-1)[i] = flat[i] + 1
        assert not _same_bytes(a, b)
    assert not _same_bytes(a, a.clone().to(torch.int16 if a.is_floating_point() else torch.float32))


def test_a_prepared_direction_applies_its_own_levels(monkeypatch):
    """After `prepare`, a direction hands the network its levels: no per-application lookup
    (the flags and a variable-coefficient stencil compared with the cache), the same
    directions, and still its own system's after the network built levels for another."""
    from deepcd.nn.networks.vcycle import VCycleNet
    from deepcd.nn.weights import default_solver, load_solver

    net, _ = load_solver(default_solver(3))
    problem = scene("two-phase", (16, 16, 16), seed=0)
    r = np.random.default_rng(0).standard_normal(problem.n)
    want = NetworkDirection(net, problem)(r)  # without prepare: the lookup path
    direction = NetworkDirection(net, problem)
    direction.prepare()
    lookups = []
    real = VCycleNet.hierarchy
    monkeypatch.setattr(VCycleNet, "hierarchy", lambda *a, **k: lookups.append(1) or real(*a, **k))
    np.testing.assert_array_equal(direction(r), want)
    assert lookups == []
    other = scene("maze", (16, 16, 16), seed=0)
    NetworkDirection(net, other)(np.ones(other.n))  # the network's cache: another system
    np.testing.assert_array_equal(direction(r), want)
    with pytest.raises(ValueError, match="do not match"):
        net(torch.zeros(1, 1, 8, 8, 8), torch.tensor(other.flags)[None], levels=net._cache[2])


@pytest.mark.parametrize("threads,used", [(1, True), (2, False)])
def test_links_off_the_grid_run_on_it_only_where_the_wavefront_gets_every_thread(
    threads, used, monkeypatch
):
    """`VCycleNet._grid_form`: a level with links off its grid runs on the grid kernels only
    where its wavefront (stages `lag` planes apart) still splits into every thread; else its
    graph (64³'s level 1 for the shipped degree), whose kernels were faster there."""
    import deepcd.nn.fastpath as fp
    import deepcd.nn.multigrid as mg

    monkeypatch.setattr(mg, "GRID_FORM_MIN", 0)
    monkeypatch.setattr(fp, "grid_threads", lambda cells: threads)
    problem = scene("bunny", (32, 36, 34), seed=0)
    net = build_network("vcycle", 3, smooth=1, degree=4)
    flags = torch.tensor(problem.flags)[None, None]
    h = net.hierarchy(flags, problem.shape, tuple(problem.boundary), torch.float32)
    form = mg.grid_form(h, 1)
    assert form is not None and form.grid.extra is not None  # 16 planes, lag 2
    assert (net._grid_form(h, 1) is form) == used
