"""IC(0)/MIC(0): against a dense reference, exactness, symmetry, row sums, CG, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import cg, spsolve

from deepcd.kernels.ichol import IncompleteCholesky, ic0, mic0

# --------------------------------------------------------------------------- matrices


def lap1d(n: int, neumann: bool = False) -> sp.csr_array:
    """1D second difference: Dirichlet (diag 2) or Neumann (diag = neighbour count)."""
    main = np.full(n, 2.0)
    if neumann:
        main[[0, -1]] = 1.0
    off = -np.ones(n - 1)
    return sp.csr_array(sp.diags([off, main, off], [-1, 0, 1]))


def lap(shape: tuple[int, ...], neumann: bool = False) -> sp.csr_array:
    """5/7-point Laplacian on a box, as a Kronecker sum of 1D operators."""
    A = None
    for axis, n in enumerate(shape):
        term = lap1d(n, neumann)
        for other, m in enumerate(shape):
            if other != axis:
                eye = sp.eye(m)
                term = sp.kron(term, eye) if other > axis else sp.kron(eye, term)
        A = term if A is None else A + term
    return sp.csr_array(A)


def random_m_matrix(shape: tuple[int, int], extra: int, seed: int) -> sp.csr_array:
    """Dirichlet 2D Laplacian plus a few random symmetric couplings (weights on the diagonal)."""
    rng = np.random.default_rng(seed)
    A = lap(shape).tolil()
    n = A.shape[0]
    for _ in range(extra):
        i, j = rng.choice(n, 2, replace=False)
        w = rng.uniform(0.1, 1.0)
        A[i, j] -= w
        A[j, i] -= w
        A[i, i] += w
        A[j, j] += w
    return sp.csr_array(A)


MATRICES = {
    "2d-8x8": lambda: lap((8, 8)),
    "2d-12x9": lambda: lap((12, 9)),
    "3d-8x8x8": lambda: lap((8, 8, 8)),
    "3d-12x12x12": lambda: lap((12, 12, 12)),
    "neumann-2d-10x10": lambda: lap((10, 10), neumann=True),
    "neumann-3d-8x8x8": lambda: lap((8, 8, 8), neumann=True),
    "random-m-matrix": lambda: random_m_matrix((10, 11), extra=15, seed=3),
}

VARIANTS = {
    "ic0": dict(modified=False),
    "mic0": dict(modified=True),
    "mic0-tau1": dict(modified=True, tau=1.0),
    # a high safeguard threshold: many pivots get reset in the middle of the factorization
    "mic0-sigma0.65": dict(modified=True, tau=1.0, sigma=0.65),
}


@pytest.fixture(params=list(MATRICES), scope="module")
def matrix(request) -> sp.csr_array:
    return MATRICES[request.param]()


# --------------------------------------------------------------------------- reference


def dense_ilu0(A: sp.csr_array, tau: float = 0.0, sigma: float = 0.25):
    """Right-looking (KIJ) ILU(0) on a dense copy with a pattern mask; returns (L, U, resets)."""
    a = A.toarray().astype(np.float64)
    pattern = a != 0.0
    orig = np.diag(a).copy()
    n = a.shape[0]
    dropped = np.zeros(n)
    resets = 0
    for k in range(n):
        pivot = a[k, k] - tau * dropped[k]
        if not pivot >= sigma * orig[k]:
            pivot = orig[k]
            resets += 1
        a[k, k] = pivot
        rows = k + 1 + np.flatnonzero(pattern[k + 1 :, k])
        cols = k + 1 + np.flatnonzero(pattern[k, k + 1 :])
        a[rows, k] /= pivot
        update = np.outer(a[rows, k], a[k, cols])
        keep = pattern[np.ix_(rows, cols)]
        a[np.ix_(rows, cols)] -= np.where(keep, update, 0.0)
        dropped[rows] += np.where(keep, 0.0, update).sum(axis=1)
    L = np.tril(a, -1) + np.eye(n)
    U = np.triu(a)
    return L, U, resets


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_dense_reference(matrix, variant):
    opts = VARIANTS[variant]
    M = IncompleteCholesky(matrix, **opts)
    tau = opts.get("tau", 0.97) if opts["modified"] else 0.0
    L_ref, U_ref, resets = dense_ilu0(matrix, tau=tau, sigma=opts.get("sigma", 0.25))
    L, U = M.factors()
    scale = np.abs(U_ref).max()
    np.testing.assert_allclose(L.toarray(), L_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(U.toarray(), U_ref, rtol=0, atol=1e-12 * scale)
    assert M.safeguarded_pivots == resets
    # the zero-fill pattern: no entry outside A's pattern
    assert M.nnz == matrix.nnz
    # and the solve is (L U)^{-1} r
    r = np.random.default_rng(0).standard_normal(M.n)
    z_ref = np.linalg.solve(L_ref @ U_ref, r)
    np.testing.assert_allclose(M.solve(r), z_ref, rtol=1e-10, atol=1e-10 * np.abs(z_ref).max())


@pytest.mark.parametrize("n", [1, 2, 9, 50])
@pytest.mark.parametrize("kind", ["laplacian", "random-spd"])
def test_tridiagonal_is_exact_cholesky(n, kind):
    if kind == "laplacian":
        A = lap1d(n) if n > 1 else sp.csr_array(np.array([[2.0]]))
    else:
        rng = np.random.default_rng(n)
        off = -rng.uniform(0.1, 1.0, n - 1)
        main = rng.uniform(0.1, 1.0, n) + np.r_[0, -off] + np.r_[-off, 0]
        A = sp.csr_array(sp.diags([off, main, off], [-1, 0, 1]))
    r = np.random.default_rng(1).standard_normal(n)
    x = np.atleast_1d(spsolve(sp.csc_array(A), r))
    for M in (ic0(A), mic0(A), mic0(A, tau=1.0)):
        assert M.safeguarded_pivots == 0
        np.testing.assert_allclose(M.solve(r), x, rtol=1e-12, atol=1e-12 * np.abs(x).max())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_symmetric_positive_definite(matrix, variant):
    M = IncompleteCholesky(matrix, **VARIANTS[variant])
    rng = np.random.default_rng(2)
    for _ in range(3):
        x, y = rng.standard_normal((2, M.n))
        xMy, yMx = x @ M.solve(y), y @ M.solve(x)
        assert xMy == pytest.approx(yMx, rel=1e-12, abs=1e-12)
        assert x @ M(x) > 0.0
    # U = D L^T up to rounding, with positive pivots
    L, U = M.factors()
    d = U.diagonal()
    assert np.all(d > 0.0)
    DLt = (sp.diags_array(d) @ L.T).toarray()
    np.testing.assert_allclose(U.toarray(), DLt, rtol=0, atol=1e-12 * d.max())


@pytest.mark.parametrize("shape", [(8, 8), (12, 9), (8, 8, 8), (12, 12, 12)])
def test_mic_tau1_keeps_row_sums(shape):
    A = lap(shape)
    M = mic0(A, tau=1.0)
    assert M.safeguarded_pivots == 0
    L, U = M.factors()
    ones = np.ones(M.n)
    np.testing.assert_allclose(L @ (U @ ones), A @ ones, rtol=0, atol=1e-12)
    # IC(0) does not keep them (it drops fill in every 2D/3D case)
    L0, U0 = ic0(A).factors()
    assert np.abs(L0 @ (U0 @ ones) - A @ ones).max() > 1e-3


@pytest.mark.parametrize("shape", [(10, 10), (8, 8, 8), (5, 7, 6)])
def test_singular_neumann(shape):
    A = lap(shape, neumann=True)
    ones = np.ones(A.shape[0])
    assert np.abs(A @ ones).max() == 0.0  # really singular
    M = mic0(A, tau=1.0)
    assert M.safeguarded_pivots >= 1
    r = np.random.default_rng(4).standard_normal(M.n)
    r -= r.mean()  # consistent right-hand side
    for P in (M, mic0(A), ic0(A)):
        z = P.solve(r)
        assert np.all(np.isfinite(z))
        assert r @ z > 0.0
        assert np.all(P.data[P.diag_pos] > 0.0)


def _cg_iterations(A, b, M=None) -> int:
    count = 0

    def callback(_xk):
        nonlocal count
        count += 1

    x, info = cg(A, b, rtol=1e-8, maxiter=2000, M=M, callback=callback)
    assert info == 0
    assert np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b) * 1.01
    return count


def test_cg_preconditioning_reduces_iterations():
    A = lap((16, 16, 16))
    b = np.random.default_rng(5).standard_normal(A.shape[0])
    plain = _cg_iterations(A, b)
    with_ic = _cg_iterations(A, b, ic0(A).as_linear_operator())
    with_mic = _cg_iterations(A, b, mic0(A).as_linear_operator())
    assert with_ic < plain
    assert with_mic < with_ic


def test_input_formats_and_dtypes():
    A = random_m_matrix((9, 8), extra=10, seed=7)
    ref = ic0(A)
    r = np.random.default_rng(6).standard_normal(ref.n)
    z = ref.solve(r)

    # unsorted indices, and duplicate entries (each row listed reversed, then again, halved)
    indptr, indices, data = [0], [], []
    for i in range(A.shape[0]):
        lo, hi = A.indptr[i], A.indptr[i + 1]
        cols, vals = A.indices[lo:hi], A.data[lo:hi] / 2
        indices += [cols[::-1], cols]
        data += [vals[::-1], vals]
        indptr.append(indptr[-1] + 2 * (hi - lo))
    messy = sp.csr_matrix((np.concatenate(data), np.concatenate(indices), indptr), shape=A.shape)
    assert not messy.has_canonical_format
    unsorted = sp.csr_array(
        (np.concatenate(data[::2]) * 2, np.concatenate(indices[::2]), np.asarray(indptr) // 2),
        shape=A.shape,
    )
    assert not unsorted.has_sorted_indices
    snapshot = unsorted.indices.copy()

    variants = [
        sp.csr_matrix(A),
        A.astype(np.float32),
        A.tocsc(),
        A.tocoo(),
        sp.csr_array(A.toarray()),
        messy,
        unsorted,
    ]
    for B in variants:
        M = ic0(B)
        assert M.data.dtype == np.float64
        assert M.indices.dtype == np.int32 and M.indptr.dtype == np.int32
        rtol = 1e-6 if B.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(M.solve(r), z, rtol=rtol, atol=rtol * np.abs(z).max())
    # the caller's matrix is left as it was
    np.testing.assert_array_equal(unsorted.indices, snapshot)
    # float32 right-hand side
    np.testing.assert_allclose(ref.solve(r.astype(np.float32)), ref.solve(r.astype(np.float32)))
    assert ref.solve(r.astype(np.float32)).dtype == np.float64


def test_out_variant_and_operator():
    A = lap((9, 7, 5))
    M = mic0(A)
    r = np.random.default_rng(9).standard_normal(M.n)
    z = M.solve(r)
    out = np.full(M.n, np.nan)
    assert M.solve(r, out=out) is out
    np.testing.assert_array_equal(out, z)
    inplace = r.copy()
    assert M.solve(inplace, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, z)
    np.testing.assert_array_equal(M(r), z)
    # non-contiguous input
    wide = np.zeros(2 * M.n)
    wide[::2] = r
    np.testing.assert_array_equal(M.solve(wide[::2]), z)
    op = M.as_linear_operator()
    assert op.shape == (M.n, M.n) and op.dtype == np.float64
    np.testing.assert_array_equal(op @ r, z)
    np.testing.assert_array_equal((op @ r[:, None]).ravel(), z)
    np.testing.assert_array_equal(op.rmatvec(r), z)


def test_attributes():
    A = lap((6, 5))
    M = ic0(A)
    assert (M.n, M.nnz, M.modified, M.tau) == (30, A.nnz, False, 0.0)
    N = mic0(A, tau=0.9)
    assert (N.modified, N.tau) == (True, 0.9)
    assert IncompleteCholesky(A, tau=0.5).tau == 0.0  # tau only counts when modified
    assert "MIC(0)" in repr(N) and "IC(0)" in repr(M)


def test_bad_input():
    with pytest.raises(ValueError, match=r"\bA\b.*square"):
        ic0(sp.csr_array(np.ones((3, 4))))
    A = lap((4, 4)).tolil()
    A[5, 5] = -1.0
    with pytest.raises(ValueError, match=r"row 5"):
        ic0(sp.csr_array(A))
    A[5, 5] = 0.0  # an explicit zero
    with pytest.raises(ValueError, match=r"row 5"):
        ic0(sp.csr_array(A))
    B = lap((4, 4)).tolil()
    B[7, 7] = 0.0
    B = sp.csr_array(B)
    B.eliminate_zeros()  # structurally missing diagonal
    with pytest.raises(ValueError, match=r"row 7"):
        ic0(B)
    C = lap((4, 4)).tolil()
    C[3, 3] = np.nan
    with pytest.raises(ValueError, match=r"row 3"):
        ic0(sp.csr_array(C))
    with pytest.raises(TypeError, match="sparse"):
        ic0(np.eye(3))
    with pytest.raises(TypeError, match="real"):
        ic0(sp.csr_array(np.eye(3, dtype=complex)))
    with pytest.raises(ValueError, match="tau"):
        mic0(lap((3, 3)), tau=1.5)
    with pytest.raises(ValueError, match="sigma"):
        ic0(lap((3, 3)), sigma=-0.1)
    M = ic0(lap((3, 3)))
    with pytest.raises(ValueError, match="shape"):
        M.solve(np.ones(8))
    with pytest.raises(ValueError, match="out"):
        M.solve(np.ones(9), out=np.ones(9, dtype=np.float32))
    with pytest.raises(ValueError, match="out"):
        M.solve(np.ones(9), out=np.ones(18)[::2])


def test_empty_matrix():
    M = ic0(sp.csr_array((0, 0)))
    assert M.n == 0 and M.solve(np.zeros(0)).shape == (0,)
