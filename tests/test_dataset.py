"""Lanczos/Ritz training data: the Lanczos process, right-hand sides, recipes, the HDF5 dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse.linalg as spla

import deepcd.nn.dataset as ds
from deepcd.cli import main
from deepcd.nn.dataset import PoissonDataset, iter_ritz_rhs, parse_recipe, ritz_rhs
from deepcd.nn.lanczos import lanczos, memory_estimate
from deepcd.problems import AIR, FLUID, SOLID, Problem, save_problem, scene

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "datasets" / "tiny-16.toml"


def obstacle_problem(shape=(12, 10, 8)) -> Problem:
    flags = np.zeros(shape, dtype=np.int8)
    flags[tuple(slice(s // 4, s // 2) for s in shape)] = SOLID
    boundary = [SOLID] * (2 * len(shape))
    boundary[-1] = AIR
    return Problem(flags, np.ones(int(np.count_nonzero(flags == FLUID))), tuple(boundary))


# ---------------------------------------------------------------------------------------------
# Lanczos


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_extreme_ritz_values_match_eigsh(dtype):
    p = obstacle_problem()
    r = lanczos(p, 160, basis_dtype=dtype, seed=1)
    low = spla.eigsh(p.A, k=4, sigma=0, which="LM", return_eigenvectors=False)
    high = spla.eigsh(p.A, k=4, which="LA", return_eigenvectors=False)
    tol = 1e-9 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(r.ritz_values[:4], np.sort(low), rtol=tol)
    np.testing.assert_allclose(r.ritz_values[-4:], np.sort(high), rtol=tol)
    assert r.steps == 160 and r.alpha.shape == (160,) and r.beta.shape == (159,)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ritz_vectors_orthonormal_and_converged_pairs_are_eigenpairs(dtype):
    p = obstacle_problem()
    r = lanczos(p, 120, basis_dtype=dtype, seed=2)
    Y = r.ritz_vectors(dtype=np.float64)
    assert Y.shape == (r.ritz_values.size, p.n)
    orth = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(Y @ Y.T, np.eye(len(Y)), atol=orth)
    residual = np.linalg.norm(p.A @ Y.T - Y.T * r.ritz_values, axis=0)
    # the bound |beta_m s_m| is the true residual up to the basis rounding
    np.testing.assert_allclose(residual, r.residual_bounds, atol=10 * orth * r.ritz_values[-1])
    converged = r.residual_bounds < 1e-9
    assert converged[:3].all() and converged.sum() >= 6  # the extremes converge first
    assert residual[converged].max() < (2e-9 if dtype == np.float64 else 1e-5)
    # a chosen subset (the lowest 5) equals the same rows of the full set
    np.testing.assert_allclose(r.ritz_vectors(5, dtype=np.float64), Y[:5], atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_m_equal_n_gives_every_eigenvalue_even_repeated_ones(dtype):
    # a square Dirichlet box has repeated eigenvalues: one Krylov space cannot hold them all,
    # so this also checks the restart after breakdown
    p = Problem(np.zeros((7, 7), np.int8), np.ones(49), AIR)
    r = lanczos(p, p.n, basis_dtype=dtype, seed=0)
    exact = np.linalg.eigvalsh(p.A.toarray())
    assert r.steps == p.n and r.restarts
    tol = 1e-11 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(r.ritz_values, exact, atol=tol)


def test_singular_matrix_stays_in_range_and_drops_zero_ritz_values():
    p = scene("closed-box", (6, 5, 4), seed=0)
    assert p.is_singular
    r = lanczos(p, p.n, seed=0, basis_dtype=np.float64)
    exact = np.linalg.eigvalsh(p.A.toarray())
    nonzero = exact[exact > 1e-9]
    assert r.steps == p.n - 1  # the range has n - 1 dimensions: it stops when exhausted
    np.testing.assert_allclose(r.ritz_values, nonzero, atol=1e-10)
    Y = r.ritz_vectors(dtype=np.float64)
    np.testing.assert_allclose(Y.sum(axis=1), 0.0, atol=1e-10)  # orthogonal to the constant


def test_disk_basis_matches_memory_basis(tmp_path):
    p = obstacle_problem()
    row = p.n * 4
    mem = lanczos(p, 50, seed=3, block_bytes=16 * row)
    disk = lanczos(p, 50, seed=3, store=tmp_path / "basis.h5", block_bytes=16 * row)
    assert (tmp_path / "basis.h5").exists()
    np.testing.assert_array_equal(mem.alpha, disk.alpha)
    np.testing.assert_array_equal(mem.beta, disk.beta)
    np.testing.assert_allclose(mem.ritz_vectors(7), disk.ritz_vectors(7), atol=1e-7)
    disk.close()
    assert not (tmp_path / "basis.h5").exists()


def test_operator_with_matvec_only_and_argument_errors():
    p = obstacle_problem((8, 7, 6))
    op = spla.aslinearoperator(p.A)
    r = lanczos(op, 60, seed=0)  # no null space known: starts from A times a random vector
    ref = lanczos(p, 60, seed=0)
    np.testing.assert_allclose(r.ritz_values[[0, -1]], ref.ritz_values[[0, -1]], rtol=1e-6)
    with pytest.raises(ValueError, match="m must be"):
        lanczos(p, 0)
    with pytest.raises(ValueError, match="start='range' needs"):
        lanczos(op, 10, start="range")
    with pytest.raises(TypeError, match="matvec"):
        lanczos("not an operator", 10)
    assert memory_estimate(64**3, 1000) > 1000 * 64**3 * 4


# ---------------------------------------------------------------------------------------------
# right-hand sides


def test_rhs_concentrate_on_the_low_spectrum():
    p = scene("smoke-obstacles", (16, 16, 16), seed=0)
    r = lanczos(p, 60, seed=0)
    b, kind = ritz_rhs(r, 40, A=p, seed=5, white_fraction=0.25, batch=16)
    assert b.shape == (40, p.n) and b.dtype == np.float32
    assert np.count_nonzero(kind == ds.KIND_WHITE) == 10
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-6)
    b64 = b.astype(np.float64)
    rq = np.einsum("ij,ij->i", b64, (p.A @ b64.T).T)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, p.n))
    rq_random = np.einsum("ij,ij->i", x, (p.A @ x.T).T) / np.einsum("ij,ij->i", x, x)
    ritz = rq[kind == ds.KIND_RITZ]
    # about half the energy of white noise on average, and every sample below all the noise
    assert ritz.mean() < 0.6 * rq_random.mean() and ritz.max() < rq_random.min()
    # the boosted low end: stronger boost, lower energy
    plain, _ = ritz_rhs(r, 30, seed=5, low_boost=1.0)
    boosted, _ = ritz_rhs(r, 30, seed=5, low_boost=9.0)

    def mean_rq(v):
        v = v.astype(np.float64)
        return float(np.mean(np.einsum("ij,ij->i", v, (p.A @ v.T).T)))

    assert mean_rq(boosted) < 0.5 * mean_rq(plain)
    # seeded and independent of the batch size
    again, kind2 = ritz_rhs(r, 40, A=p, seed=5, white_fraction=0.25, batch=7)
    np.testing.assert_array_equal(again, b)
    np.testing.assert_array_equal(kind2, kind)


def test_rhs_options_and_errors():
    p = scene("closed-box", (8, 8, 8), seed=0)
    r = lanczos(p, 40, seed=0)
    b, kind = ritz_rhs(r, 6, A=p, seed=0, white_fraction=1.0)
    assert (kind == ds.KIND_WHITE).all()
    np.testing.assert_allclose(b.astype(np.float64).sum(axis=1), 0.0, atol=1e-5)  # in range
    b, _ = ritz_rhs(r, 4, A=p, seed=0, white_fraction=1.0, white_kind="A")
    np.testing.assert_allclose(b.astype(np.float64).sum(axis=1), 0.0, atol=1e-5)
    low, _ = ritz_rhs(r, 3, seed=0, ritz_vectors=5)
    Y = r.ritz_vectors(5, dtype=np.float64)
    np.testing.assert_allclose(low @ Y.T @ Y, low, atol=1e-5)  # in the span of the lowest 5
    with pytest.raises(ValueError, match="needs A"):
        next(iter_ritz_rhs(r, 4, white_fraction=0.5))
    with pytest.raises(ValueError, match="low_fraction"):
        next(iter_ritz_rhs(r, 4, low_fraction=1.5))


# ---------------------------------------------------------------------------------------------
# recipes and datasets


def _h5_contents(path: Path) -> dict:
    """Every attribute and dataset of an HDF5 file, by path."""
    out = {}

    def visit(name, obj):
        out[name + "@attrs"] = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[...]

    with h5py.File(path, "r") as f:
        visit("", f)
        f.visititems(visit)
    return out


def _assert_same_contents(a: Path, b: Path) -> None:
    ca, cb = _h5_contents(a), _h5_contents(b)
    assert sorted(ca) == sorted(cb)
    for key, value in ca.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == cb[key].dtype and value.shape == cb[key].shape, key
            assert value.tobytes() == cb[key].tobytes(), key  # bit for bit
        else:
            assert value == cb[key], key


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "tiny.h5"
    code = main(["generate", "dataset", "--recipe", str(TINY), "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_generated_dataset_reads_back(tiny_dataset):
    recipe = ds.load_recipe(TINY)
    data = PoissonDataset(tiny_dataset)
    assert len(data) == sum(m.samples for m in recipe.matrices) == 32
    assert data.recipe == TINY.read_text()
    assert sorted(data.matrices) == [0, 1, 2, 3]
    for i in range(len(data)):
        x, mid = data[i]
        info = data.matrices[mid]
        assert x.dtype == np.float32 and x.shape == info.shape == (16, 16, 16)
        assert np.all(x[info.flags != FLUID] == 0)
        assert abs(np.linalg.norm(x.astype(np.float64)) - 1.0) < 1e-5
    x, mid = data[-1]
    assert mid == 3 and data.matrices[3].scene == "pool"
    assert data.matrices[3].problem().n == data.matrices[3].n
    assert set(data.matrices[0].boundary) <= {SOLID, AIR}
    with pytest.raises(IndexError):
        data[len(data)]
    with h5py.File(tiny_dataset, "r") as f:
        g = f["matrices/0000"]
        assert f.attrs["deepcd_version"] and f.attrs["seed"] == recipe.seed
        assert g.attrs["split"] == "train" and g.attrs["complete"]
        assert g.attrs["scene"] == "smoke-obstacles" and g.attrs["seed"] == 0
        assert g["rhs"].dtype == np.float32 and g["rhs"].shape == (8, 16, 16, 16)
    data.close()


def test_val_split_holds_whole_matrices(tiny_dataset):
    val = PoissonDataset(tiny_dataset, split="val")
    train = PoissonDataset(tiny_dataset, split="train")
    assert set(val.matrices) == {2} and set(train.matrices) == {0, 1, 3}
    assert {val[i][1] for i in range(len(val))} == {2}
    assert 2 not in {train[i][1] for i in range(len(train))}
    assert len(val) == val.matrices[2].samples and len(val) + len(train) == 32
    everything = PoissonDataset(tiny_dataset)
    np.testing.assert_array_equal(val[0][0], everything[16][0])
    with pytest.raises(ValueError, match="split"):
        PoissonDataset(tiny_dataset, split="test")


def test_interrupted_generation_resumes_to_the_same_file(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "resumed.h5"
    partial = tmp_path / "resumed.h5.partial"
    real = ds.iter_ritz_rhs
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        for i, item in enumerate(real(*args, **kwargs)):
            if len(calls) == 2 and i == 1:  # second matrix, half written
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(ds, "iter_ritz_rhs", interrupted)
    argv = ["generate", "dataset", "--recipe", str(TINY), "--out", str(out), "--no-progress"]
    assert main(argv) == 130
    assert partial.exists() and not out.exists()
    with h5py.File(partial, "r") as f:
        assert f["matrices/0000"].attrs["complete"]
        assert not f["matrices/0001"].attrs["complete"]
        assert not f.attrs["complete"]
    with pytest.raises(ValueError, match="incomplete"):
        PoissonDataset(partial)
    monkeypatch.setattr(ds, "iter_ritz_rhs", real)
    done = []
    monkeypatch.setattr(
        ds, "_write_matrix", lambda *a, _w=ds._write_matrix: done.append(1) or _w(*a)
    )
    assert main(argv) == 0
    assert len(done) == 3  # matrix 0 was kept, 1 redone, 2 and 3 new
    assert out.exists() and not partial.exists()
    _assert_same_contents(out, tiny_dataset)
    # an already complete file is left alone
    assert main(argv) == 0 and len(done) == 3


def test_partial_from_another_recipe_is_refused(tmp_path):
    recipe = ds.load_recipe(TINY)
    out = tmp_path / "d.h5"
    partial = tmp_path / "d.h5.partial"
    other = parse_recipe(recipe.text.replace("seed = 0\n", "seed = 1\n", 1), "other")
    with h5py.File(partial, "w") as f:
        f.attrs["format"] = ds.FORMAT
        f.attrs["recipe"] = other.text
        f.attrs["recipe_key"] = other.key
    assert parse_recipe("# a comment\n" + recipe.text).key == recipe.key != other.key
    with pytest.raises(ValueError, match="another recipe"):
        ds.generate_dataset(recipe, out, progress=False)
    small = parse_recipe(recipe.text.replace("samples = 8", "samples = 2"), "small")
    path = ds.generate_dataset(small, out, resume=False, progress=False)
    assert len(PoissonDataset(path)) == 8


def test_truncated_foreign_and_missing_files_are_refused(tiny_dataset, tmp_path):
    cut = tmp_path / "cut.h5"
    shutil.copy(tiny_dataset, cut)
    with open(cut, "r+b") as f:
        f.truncate(cut.stat().st_size // 2)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        PoissonDataset(cut)
    foreign = save_problem(tmp_path / "problem.h5", obstacle_problem((8, 8, 8)))
    with pytest.raises(ValueError, match="not a deepcd dataset"):
        PoissonDataset(foreign)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(ValueError, match="cannot be read as HDF5"):
        PoissonDataset(text)
    with pytest.raises(FileNotFoundError):
        PoissonDataset(tmp_path / "missing.h5")


def test_recipe_errors_are_clear():
    text = TINY.read_text()
    with pytest.raises(ValueError, match="unknown key"):
        parse_recipe(text.replace("[rhs]\n", "[rhs]\nsample = 3\n"))
    with pytest.raises(ValueError, match="unknown scene"):
        parse_recipe(text.replace('scene = "pool"', 'scene = "lake"'))
    with pytest.raises(ValueError, match="listed twice"):
        parse_recipe(text.replace("seeds = [0, 1]", "seeds = [0, 0]"))
    with pytest.raises(ValueError, match="not valid TOML"):
        parse_recipe("name = ")
    with pytest.raises(ValueError, match="2D"):
        parse_recipe(
            text.replace("dim = 3", "dim = 2").replace("shape = 16", "shape = [16, 16, 16]")
        )


@pytest.mark.parametrize("name", ["tiny-16", "tiny-16-2d", "smoke-64", "smoke-256-2d"])
def test_committed_recipes_parse(name):
    recipe = ds.load_recipe(ROOT / "datasets" / f"{name}.toml")
    assert recipe.name == name and recipe.split("train") and recipe.split("val")
    assert recipe.out == f"datasets/generated/{name}.h5"
    assert {m.shape for m in recipe.matrices} and all(
        len(m.shape) == recipe.ndim for m in recipe.matrices
    )
    if name == "smoke-64":
        scenes = {m.scene for m in recipe.matrices}
        assert {"smoke-obstacles", "bunny", "pool", "smoke-plume"} <= scenes


def test_tiny_2d_recipe_generates(tmp_path):
    path = ds.generate_dataset(
        ROOT / "datasets" / "tiny-16-2d.toml", tmp_path / "t.h5", progress=False
    )
    data = PoissonDataset(path, split="train")
    x, mid = data[0]
    assert x.shape == (16, 16) and data.matrices[mid].flags.shape == (16, 16)
