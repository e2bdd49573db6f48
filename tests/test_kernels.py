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
