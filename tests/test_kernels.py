import numpy as np
import pytest
import scipy.sparse as sp

from deepcd.kernels.csr import csr_matvec, csr_matvec_dot
from deepcd.kernels.vector import (
    dot,
    residual,
    scale_dot,
    stream_triad,
    update_direction,
    update_solution_residual,
)


@pytest.mark.parametrize("n, density, seed", [(1, 1.0, 0), (50, 0.1, 1), (300, 0.02, 2)])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_csr_matvec_matches_scipy(n, density, seed, index_dtype):
    rng = np.random.default_rng(seed)
    A = sp.random(n, n, density=density, format="csr", random_state=seed)
    x = rng.standard_normal(n)
    out = np.empty(n)
    indptr, indices = A.indptr.astype(index_dtype), A.indices.astype(index_dtype)
    csr_matvec(indptr, indices, A.data, x, out)
    np.testing.assert_allclose(out, A @ x, rtol=1e-13, atol=1e-13)
    out2 = np.empty(n)
    assert csr_matvec_dot(indptr, indices, A.data, x, out2) == pytest.approx(x @ (A @ x))
    np.testing.assert_array_equal(out, out2)


def test_fused_vector_updates_match_numpy():
    rng = np.random.default_rng(0)
    x, r, p, ap, z, s = (rng.standard_normal(1001) for _ in range(6))
    x0, r0, p0 = x.copy(), r.copy(), p.copy()
    assert dot(x, r) == pytest.approx(x @ r)
    rr = update_solution_residual(x, r, p, ap, 0.3)
    np.testing.assert_allclose(x, x0 + 0.3 * p)
    np.testing.assert_allclose(r, r0 - 0.3 * ap)
    assert rr == pytest.approx(r @ r)
    update_direction(p, z, -1.5)
    np.testing.assert_allclose(p, z - 1.5 * p0)
    out = np.empty(1001)
    assert scale_dot(r, s, out) == pytest.approx(r @ (s * r))
    np.testing.assert_allclose(out, s * r)
    rr = residual(x, ap, out)
    np.testing.assert_allclose(out, x - ap)
    assert rr == pytest.approx(out @ out)
    stream_triad(out, x, r, 2.0)
    np.testing.assert_allclose(out, x + 2.0 * r)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scaled_scatter_and_checked_gather(dtype):
    from deepcd.kernels.vector import gather_checked, scatter

    rng = np.random.default_rng(3)
    index = np.sort(rng.choice(40, 25, replace=False)).astype(np.int64)
    r = rng.standard_normal(25)
    grid = np.zeros(40, dtype=dtype)
    scatter(r, index, grid, 0.5)
    np.testing.assert_allclose(grid[index], (0.5 * r).astype(dtype))
    out = np.empty(25)
    assert gather_checked(grid, index, out) == (0, 25)
    np.testing.assert_array_equal(out, grid[index].astype(np.float64))
    grid[index[3]], grid[index[7]], grid[index[9]] = np.nan, np.inf, 0.0
    assert gather_checked(grid, index, out) == (2, 24)  # NaN != 0 counts as non-zero
    assert gather_checked(np.zeros(40, dtype=dtype), index, out) == (0, 0)


def _store_of(rng, n: int, stored: int):
    """A random SPD A (n, n) and DCDM's direction store (k = 3) holding `stored` A-orthogonal
    directions, as the loop stores them: (A, store, the directions)."""
    from deepcd.iterative.dcdm import _DirectionStore

    B = rng.standard_normal((n, n))
    A = B @ B.T + n * np.eye(n)
    store = _DirectionStore(n, k=3)
    basis = []
    for _ in range(stored):
        p = rng.standard_normal(n)
        for q in basis:
            p -= (p @ A @ q) / (q @ A @ q) * q
        basis.append(p)
        row, arow = store.slot()
        row[:], arow[:] = p, A @ p
        store.push(row, arow, p @ A @ p)
    return A, store, basis


@pytest.mark.parametrize("stored", [0, 1, 2, 3])
def test_fused_orthogonalization_is_the_sequential_one(stored):
    """DCDM's direction store: the two-pass projection (coefficients in one pass, update and
    dots in the next) gives the per-direction one on A-orthogonal stored directions."""

    rng = np.random.default_rng(stored)
    n = 60
    A, store, basis = _store_of(rng, n, stored)
    w, r = rng.standard_normal(n), rng.standard_normal(n)
    w1, aw1 = w.copy(), A @ w
    store.orthogonalize(w1, aw1)
    w2, aw2 = w.copy(), A @ w
    waw, wr = store.orthogonalize_dots(w2, aw2, r)
    np.testing.assert_allclose(w2, w1, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(aw2, aw1, rtol=1e-10, atol=1e-8)
    assert waw == pytest.approx(w1 @ A @ w1, rel=1e-10)
    assert wr == pytest.approx(w1 @ r, rel=1e-10)
    for p in basis:
        assert abs(w2 @ A @ p) < 1e-8 * np.linalg.norm(A @ p) * np.linalg.norm(w2)


@pytest.mark.parametrize("n", [0, 1, 1000, (1 << 17) + 3])
def test_inner_and_norm_equal_numpy(n):
    """`vector.inner` / `vector.norm` (numba, instead of numpy's threaded BLAS) give numpy's
    values, serial and parallel, and norm scales where x·x would overflow or underflow."""
    from deepcd.kernels.vector import inner, norm

    rng = np.random.default_rng(n)
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    assert inner(x, y) == pytest.approx(float(np.dot(x, y)), rel=1e-12, abs=1e-12)
    assert norm(x) == pytest.approx(float(np.linalg.norm(x)), rel=1e-12, abs=1e-300)
    assert norm(x.astype(np.float32)) == pytest.approx(float(np.linalg.norm(x)), rel=1e-6)
    if n:
        assert norm(1e200 * x) == pytest.approx(1e200 * float(np.linalg.norm(x)), rel=1e-12)
        assert norm(1e-200 * x) == pytest.approx(1e-200 * float(np.linalg.norm(x)), rel=1e-12)
        assert norm(np.full(n, np.inf)) == np.inf
    with pytest.raises(ValueError, match="differ in length"):
        inner(x, np.zeros(n + 1))


def _operators():
    """A flag Laplacian's stencil, a variable-coefficient one and a plain CSR matrix (the
    base class's matvec_dots): odd shapes, 2D and 3D."""
    from deepcd.operators import CSROperator
    from deepcd.problems import scene

    flag3, flag2 = scene("smoke-obstacles", (11, 9, 8), seed=1), scene("maze", (19, 17), seed=0)
    coeff = scene("two-phase", (17, 16, 18), seed=0)
    return {
        "stencil-3d": flag3.stencil,
        "stencil-2d": flag2.stencil,
        "weighted-3d": coeff.stencil,
        "csr": CSROperator(flag3.A),
    }


@pytest.mark.parametrize("name", ["stencil-3d", "stencil-2d", "weighted-3d", "csr"])
@pytest.mark.parametrize("use1", [True, False])
def test_matvec_dots_is_the_matvec_and_its_dots(name, use1):
    """`Operator.matvec_dots`: out is the matvec bit for bit, and the six dots DCDM's fused
    projection takes are numpy's (p1's two 0 unless use1)."""
    op = _operators()[name]
    rng = np.random.default_rng(3)
    x, p0, p1, r = (rng.standard_normal(op.n) for _ in range(4))
    want = op.matvec(x)
    out = np.empty(op.n)
    got = op.matvec_dots(x, out, p0, p1, use1, r)
    np.testing.assert_array_equal(out, want)
    dots = [x @ want, p0 @ want, p1 @ want if use1 else 0.0, x @ r, p0 @ r, p1 @ r if use1 else 0]
    np.testing.assert_allclose(got, dots, rtol=1e-12, atol=1e-12 * np.abs(dots).max())


@pytest.mark.parametrize("use1", [True, False])
def test_project_step_is_subtract2_then_step_along(use1):
    """The fused projection + step: the same vectors bit for bit as `subtract2` followed by
    `step_along`, and the same dots."""
    from deepcd.kernels.vector import project_step, step_along, subtract2

    rng = np.random.default_rng(4)
    n = (1 << 14) + 5
    w, aw, p0, ap0, p1, ap1, x, r, b = (rng.standard_normal(n) for _ in range(9))
    c0, c1, c = 0.3, -0.7, 1.3
    w1, aw1, x1, r1 = w.copy(), aw.copy(), x.copy(), r.copy()
    waw1, _ = subtract2(w1, aw1, c0, p0, ap0, c1, p1, ap1, use1, r1)
    rr1, xbr1 = step_along(x1, r1, w1, aw1, c, b)
    waw2, rr2, xbr2 = project_step(w, aw, c0, p0, ap0, c1, p1, ap1, use1, c, x, r, b)
    for got, want in ((w, w1), (aw, aw1), (x, x1), (r, r1)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose([waw2, rr2, xbr2], [waw1, rr1, xbr1], rtol=1e-12)


@pytest.mark.parametrize("stored", [0, 1, 2, 3])
def test_projected_dots_are_the_computed_ones(stored):
    """DCDM's direction store: the projection's dots by algebra from the matvec's pass
    (`project_dots`) are those `orthogonalize_dots` computes after projecting, and
    `project_step` leaves w, Aw as it does; more than two stored directions fall back."""
    from deepcd.kernels.vector import step_along
    from deepcd.operators import CSROperator

    rng = np.random.default_rng(stored)
    n = 60
    A, store, _ = _store_of(rng, n, stored)
    op = CSROperator(sp.csr_matrix(A))
    w, r, x, b = (rng.standard_normal(n) for _ in range(4))
    w1, aw1 = w.copy(), A @ w
    waw, wr = store.orthogonalize_dots(w1, aw1, r)
    aw2 = np.empty(n)
    got = store.project_dots(op, w, aw2, r)
    np.testing.assert_allclose(aw2, A @ w, rtol=1e-12, atol=1e-10)
    if stored > 2:
        assert got is None
        return
    c0, c1, vav, vr = got
    assert vav == pytest.approx(waw, rel=1e-10) and vr == pytest.approx(wr, rel=1e-10)
    c = vr / vav
    x1, r1 = x.copy(), r.copy()
    step_along(x1, r1, w1, aw1, c, b)
    pap, _, _ = store.project_step(w, aw2, c0, c1, c, x, r, b)
    np.testing.assert_allclose(w, w1, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(aw2, aw1, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(x, x1, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(r, r1, rtol=1e-10, atol=1e-8)
    assert pap == pytest.approx(waw, rel=1e-10)


def test_projected_dots_fall_back_where_the_projection_cancels():
    """A new direction inside the span of the stored ones (its projection ~0): the algebra
    would be rounding only, so `project_dots` leaves it to the computed dots."""
    from deepcd.iterative.dcdm import _DirectionStore
    from deepcd.operators import CSROperator

    rng = np.random.default_rng(7)
    n = 40
    A = np.diag(rng.uniform(1, 10, n))
    op = CSROperator(sp.csr_matrix(A))
    store = _DirectionStore(n, k=2)
    p = rng.standard_normal(n)
    row, arow = store.slot()
    row[:], arow[:] = p, A @ p
    store.push(row, arow, p @ A @ p)
    assert store.project_dots(op, 2.5 * p, np.empty(n), rng.standard_normal(n)) is None
    assert store.project_dots(op, rng.standard_normal(n), np.empty(n), p) is not None
