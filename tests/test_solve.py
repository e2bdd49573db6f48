import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import deepcd
from deepcd.problems import SOLID, Problem, from_flags

METHODS = ["cg", "jacobi", "ic0", "mic0", "amg-sa", "amg-rs", "newton"]


def reference(problem):
    return spla.spsolve(problem.A.tocsc(), problem.b)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_matches_spsolve(small_problem, method):
    residuals = []
    x, info = deepcd.solve(
        small_problem, rtol=1e-9, method=method, residuals=residuals, maxiter=5000
    )
    assert info == 0
    x_ref = reference(small_problem)
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-7 * np.abs(x_ref).max())
    assert residuals[0] == pytest.approx(np.linalg.norm(small_problem.b))
    assert residuals[-1] <= 1e-9 * residuals[0]


@pytest.mark.parametrize(
    "method, options",
    [
        ("amg-sa", {"accel": None}),
        ("amg-rs", {"accel": None}),
        ("newton", {"hessian": "jacobi"}),
        ("newton", {"hessian": "amg-sa"}),
        ("newton", {"hessian": "mic0"}),
    ],
)
def test_method_variants_converge(dirichlet_box, method, options):
    res = deepcd.solve_result(dirichlet_box, rtol=1e-8, method=method, maxiter=5000, **options)
    assert res.converged and res.final_relres <= 1e-8
    assert res.residuals.size == res.iterations + 1
    assert res.times.size == res.residuals.size
    assert np.all(np.diff(res.times) >= 0)


def test_preconditioners_cut_iterations(dirichlet_box):
    its = {
        m: deepcd.solve_result(dirichlet_box, rtol=1e-8, method=m).iterations
        for m in ("cg", "ic0", "mic0", "amg-sa")
    }
    assert its["ic0"] < its["cg"]
    assert its["mic0"] < its["ic0"]
    assert its["amg-sa"] < its["mic0"]


def test_newton_needs_more_steps_than_pcg_with_same_hessian(dirichlet_box):
    pcg = deepcd.solve_result(dirichlet_box, rtol=1e-8, method="ic0")
    newton = deepcd.solve_result(dirichlet_box, rtol=1e-8, method="newton", hessian="ic0")
    assert newton.converged
    assert newton.iterations > pcg.iterations
    assert newton.settings["trials"] >= newton.iterations


@pytest.mark.parametrize("form", ["csr", "dense", "linear-operator", "csr-array"])
def test_input_forms(small_problem, form):
    A = small_problem.A
    A_in = {
        "csr": A,
        "dense": A.toarray(),
        "linear-operator": spla.aslinearoperator(A),
        "csr-array": sp.csr_array(A),
    }[form]
    x, info = deepcd.solve(A_in, small_problem.b, rtol=1e-10, method="cg")
    assert info == 0
    np.testing.assert_allclose(A @ x, small_problem.b, atol=1e-8)


def test_float32_in_float32_out(small_problem):
    A32 = small_problem.A.astype(np.float32)
    x, info = deepcd.solve(A32, small_problem.b.astype(np.float32), rtol=1e-6, method="cg")
    assert info == 0 and x.dtype == np.float32


def test_x0_callback_and_b_column(small_problem):
    seen = []
    x_ref = reference(small_problem)
    x, info = deepcd.solve(
        small_problem.A,
        small_problem.b[:, None],
        x0=x_ref + 1e-3,
        rtol=1e-10,
        method="cg",
        callback=lambda xk: seen.append(xk.copy()),
    )
    assert info == 0 and len(seen) >= 1
    np.testing.assert_allclose(seen[-1], x)


def test_exact_x0_needs_no_iteration(small_problem):
    res = deepcd.solve_result(small_problem, x0=reference(small_problem), rtol=1e-6)
    assert res.converged and res.iterations == 0


def test_zero_rhs_gives_zero(small_problem):
    x, info = deepcd.solve(small_problem.A, np.zeros(small_problem.n), method="cg")
    assert info == 0 and not x.any()


def test_user_preconditioner(small_problem):
    inv_diag = 1.0 / small_problem.A.diagonal()
    M = spla.LinearOperator(small_problem.A.shape, matvec=lambda r: inv_diag * r)
    plain = deepcd.solve_result(small_problem, rtol=1e-10, method="cg")
    pre = deepcd.solve_result(small_problem, rtol=1e-10, method="cg", M=M)
    assert pre.converged and pre.method == "cg+M"
    np.testing.assert_allclose(pre.x, plain.x, atol=1e-7)


def test_maxiter_gives_positive_info(small_problem):
    _x, info = deepcd.solve(small_problem, rtol=1e-12, maxiter=3)
    assert info == 3


def test_singular_system_is_projected_and_warned():
    flags = np.zeros((9, 8, 7), np.int8)
    flags[3, 3, 3] = SOLID
    rng = np.random.default_rng(0)
    p = from_flags(flags, rng.standard_normal(int((flags == 0).sum())))
    assert p.is_singular
    for method in ("cg", "ic0", "mic0", "amg-sa"):
        with pytest.warns(deepcd.SingularSystemWarning, match="closed region"):
            res = deepcd.solve_result(p, rtol=1e-9, method=method)
        assert res.converged, method
        assert abs(res.x.mean()) < 1e-12
        b_proj = p.b - p.b.mean()
        np.testing.assert_allclose(p.A @ res.x, b_proj, atol=1e-7)


def test_singular_csr_detected_without_a_grid():
    p = from_flags(np.zeros((6, 6), np.int8), np.arange(36.0))
    with pytest.warns(deepcd.SingularSystemWarning):
        x, info = deepcd.solve(p.A, p.b, rtol=1e-10, method="cg")
    assert info == 0 and abs(x.mean()) < 1e-12


def test_indefinite_matrix_is_a_breakdown():
    A = sp.diags([1.0, 2.0, -1.0, 3.0]).tocsr()
    # a negative diagonal is caught before iterating; an indefinite matrix with a positive
    # diagonal is caught by CG's curvature test:
    B = sp.csr_matrix(np.array([[1.0, 2.0], [2.0, 1.0]]))
    _x, info = deepcd.solve(B, np.array([1.0, -1.0]), method="cg")
    assert info == -1
    with pytest.raises(ValueError, match="negative diagonal"):
        deepcd.solve(A, np.ones(4))


def _bad_cases(problem):
    A, b = problem.A, problem.b
    n = problem.n
    nonsym = A.tolil()
    nonsym[0, 1] = -5.0
    nan_A = A.copy()
    nan_A.data[0] = np.nan
    return {
        "non-square": (sp.csr_matrix((3, 4)), np.ones(3), {}, ValueError, "square"),
        "b-shape": (A, np.ones(n + 1), {}, ValueError, "shape"),
        "b-nan": (A, np.where(np.arange(n) == 2, np.nan, b), {}, ValueError, "NaN"),
        "b-inf": (A, np.full(n, np.inf), {}, ValueError, "NaN or Inf"),
        "A-nan": (nan_A, b, {}, ValueError, "NaN"),
        "x0-shape": (A, b, {"x0": np.ones(2)}, ValueError, "x0"),
        "non-symmetric": (nonsym.tocsr(), b, {}, ValueError, "not symmetric"),
        "non-symmetric-op": (
            spla.aslinearoperator(nonsym.tocsr()),
            b,
            {},
            ValueError,
            "not symmetric",
        ),
        "unknown-method": (A, b, {"method": "gmres"}, ValueError, "unknown method"),
        "bad-option": (A, b, {"method": "cg", "omega": 1.0}, TypeError, "omega"),
        "complex": (A.astype(complex), b, {}, TypeError, "real"),
        "not-a-matrix": ("A", b, {}, TypeError, "scipy sparse"),
        "b-missing": (A, None, {}, TypeError, "b is required"),
        "jacobi-without-diagonal": (
            spla.aslinearoperator(A),
            b,
            {"method": "jacobi"},
            TypeError,
            "diagonal",
        ),
        "ic0-without-matrix": (
            spla.aslinearoperator(A),
            b,
            {"method": "ic0"},
            TypeError,
            "assembled matrix",
        ),
        "bad-rtol": (A, b, {"rtol": -1.0}, ValueError, "rtol"),
        "M-with-ic0": (A, b, {"method": "ic0", "M": A}, ValueError, "M="),
    }


@pytest.mark.parametrize(
    "case", list(_bad_cases(Problem(np.zeros((4, 4), np.int8), np.ones(16), 2)))
)
def test_bad_input_raises_clearly(dirichlet_box, case):
    A, b, kwargs, err, match = _bad_cases(dirichlet_box)[case]
    with pytest.raises(err, match=match):
        deepcd.solve(A, b, **kwargs)


@pytest.mark.parametrize("shape", [(24, 20), (12, 10, 14)], ids=["2d", "3d"])
@pytest.mark.parametrize(
    "name", ["box", "smoke-plume", "smoke-obstacles", "bunny", "pool", "poisson-box", "closed-box"]
)
@pytest.mark.parametrize("method", METHODS)
def test_every_scene_and_method_solves_the_system(name, shape, method):
    import warnings

    from deepcd.problems import scene

    problem = scene(name, shape, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deepcd.SingularSystemWarning)
        res = deepcd.solve_result(problem, rtol=1e-8, method=method, maxiter=20000)
    assert res.converged, res.message
    if problem.is_singular:
        b = problem.b - problem.b.mean()
        np.testing.assert_allclose(problem.A @ res.x, b, atol=1e-7 * np.abs(b).max())
        assert abs(res.x.mean()) < 1e-10
    else:
        x_ref = reference(problem)
        np.testing.assert_allclose(res.x, x_ref, atol=1e-6 * np.abs(x_ref).max())
