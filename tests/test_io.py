import h5py
import numpy as np
import pytest

from deepcd.problems import load_problem, save_problem
from deepcd.problems.io import atomic_h5


def test_round_trip(small_problem, tmp_path):
    small_problem.params = {"note": "test", "radius": 0.5}
    small_problem.seed = 7
    path = save_problem(tmp_path / "p.h5", small_problem)
    back = load_problem(path)
    np.testing.assert_array_equal(back.flags, small_problem.flags)
    np.testing.assert_array_equal(back.b, small_problem.b)
    assert back.boundary == small_problem.boundary
    assert back.params == small_problem.params
    assert back.seed == 7
    with h5py.File(path) as f:
        assert f["flags"].compression == "gzip"
        assert f["flags"].chunks is not None
        assert f.attrs["deepcd_version"]


def test_interrupted_write_leaves_no_complete_looking_file(small_problem, tmp_path, monkeypatch):
    target = tmp_path / "p.h5"

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(h5py.Group, "create_dataset", explode)
    with pytest.raises(KeyboardInterrupt):
        save_problem(target, small_problem)
    assert list(tmp_path.iterdir()) == []


def test_partial_file_is_never_at_the_final_name(tmp_path):
    target = tmp_path / "p.h5"
    with atomic_h5(target) as f:
        f["x"] = np.zeros(3)
        assert not target.exists()
        assert any(p.name.startswith("p.h5.partial") for p in tmp_path.iterdir())
    assert target.exists()


def test_truncated_file_gives_clear_error(small_problem, tmp_path):
    path = save_problem(tmp_path / "p.h5", small_problem)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_problem(path)


def test_foreign_hdf5_file_refused(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["flags"] = np.zeros((3, 3), np.int8)
    with pytest.raises(ValueError, match="not a deepcd problem"):
        load_problem(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_problem(tmp_path / "nope.h5")
