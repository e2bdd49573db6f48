import numpy as np
import pytest
import scipy.sparse.linalg as spla

from deepcd.problems import AIR, FLUID, SOLID, Problem, from_flags, parse_shape
from deepcd.problems.assembly import closed_regions, laplacian_csr


def dense_laplacian(flags, boundary):
    """Reference: the pressure Laplacian built cell by cell with Python loops."""
    f3 = flags if flags.ndim == 3 else flags[:, :, None]
    bc = tuple(boundary) if flags.ndim == 3 else (*boundary, SOLID, SOLID)
    cells = [c for c in np.ndindex(f3.shape) if f3[c] == FLUID]
    number = {c: i for i, c in enumerate(cells)}
    A = np.zeros((len(cells), len(cells)))
    for c, i in number.items():
        for axis in range(3):
            for step in (-1, 1):
                nb = list(c)
                nb[axis] += step
                if 0 <= nb[axis] < f3.shape[axis]:
                    flag = f3[tuple(nb)]
                else:
                    flag = bc[2 * axis + (step > 0)]
                if flag != SOLID:
                    A[i, i] += 1
                if flag == FLUID:
                    A[i, number[tuple(nb)]] -= 1
    return A


@pytest.mark.parametrize("shape", [(7, 6), (5, 6, 4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_csr_matches_reference_on_random_flags(shape, seed):
    rng = np.random.default_rng(seed)
    flags = rng.choice([FLUID, SOLID, AIR], size=shape, p=[0.7, 0.2, 0.1]).astype(np.int8)
    flags.flat[0] = FLUID
    boundary = tuple(rng.choice([SOLID, AIR], size=2 * len(shape)))
    A = laplacian_csr(flags, boundary)
    np.testing.assert_array_equal(A.toarray(), dense_laplacian(flags, boundary))
    assert A.has_sorted_indices


def test_assembled_matrix_is_symmetric_positive_definite(small_problem):
    A = small_problem.A.toarray()
    np.testing.assert_array_equal(A, A.T)
    assert np.linalg.eigvalsh(A).min() > 1e-8
    assert not small_problem.is_singular


def test_stencil_matvec_equals_csr(small_problem):
    x = np.random.default_rng(3).standard_normal(small_problem.n)
    np.testing.assert_allclose(small_problem.stencil.matvec(x), small_problem.A @ x, atol=1e-13)
    out = np.empty_like(x)
    xax = small_problem.stencil.matvec_dot(x, out)
    assert xax == pytest.approx(x @ (small_problem.A @ x))


def test_closed_regions_found_and_null_space_is_constant():
    flags = np.zeros((10, 8), np.int8)
    flags[4, :] = SOLID  # splits the box in two
    flags[0, 0] = AIR  # the lower part touches AIR, the upper part is closed
    labels, count = closed_regions(flags, (SOLID,) * 4)
    assert count == 1
    p = from_flags(flags)
    assert p.is_singular
    closed = labels >= 0
    ones = closed.astype(float)
    np.testing.assert_allclose(p.A @ ones, 0.0, atol=1e-14)
    assert np.linalg.matrix_rank(p.A.toarray()) == p.n - 1


def test_layout_round_trip(small_problem):
    v = np.arange(small_problem.n, dtype=float)
    grid = small_problem.to_grid(v, fill=np.nan)
    assert grid.shape == small_problem.shape
    assert np.isnan(grid[small_problem.flags != FLUID]).all()
    np.testing.assert_array_equal(small_problem.from_grid(grid), v)


def test_rhs_on_grid_accepted():
    flags = np.zeros((4, 5), np.int8)
    flags[0] = SOLID
    grid = np.arange(20.0).reshape(4, 5)
    p = Problem(flags, grid)
    np.testing.assert_array_equal(p.b, grid[1:].ravel())


@pytest.mark.parametrize(
    "flags, rhs, err",
    [
        (np.zeros((4, 4), np.float64), None, TypeError),
        (np.zeros(4, np.int8), None, ValueError),
        (np.full((4, 4), 3, np.int8), None, ValueError),
        (np.full((4, 4), SOLID, np.int8), None, ValueError),
        (np.zeros((4, 4), np.int8), np.ones(15), ValueError),
        (np.zeros((4, 4), np.int8), np.full(16, np.nan), ValueError),
    ],
    ids=["float-flags", "1d", "bad-value", "no-fluid", "rhs-size", "rhs-nan"],
)
def test_bad_problems_raise(flags, rhs, err):
    with pytest.raises(err):
        from_flags(flags, rhs)


def test_bad_boundary_raises():
    with pytest.raises(ValueError, match="boundary"):
        from_flags(np.zeros((4, 4), np.int8), boundary=(SOLID, AIR))
    with pytest.raises(ValueError, match="SOLID"):
        from_flags(np.zeros((4, 4), np.int8), boundary=FLUID)


def test_parse_shape():
    assert parse_shape(16) == (16, 16, 16)
    assert parse_shape("16", 2) == (16, 16)
    assert parse_shape("32x16") == (32, 16)
    with pytest.raises(ValueError):
        parse_shape("16xa")


def test_solution_of_user_flags_matches_spsolve():
    flags = np.zeros((12, 12), np.int8)
    flags[3:9, 5] = SOLID
    p = from_flags(flags, boundary=AIR)
    x = spla.spsolve(p.A.tocsc(), p.b)
    np.testing.assert_allclose(p.A @ x, p.b, atol=1e-10)
