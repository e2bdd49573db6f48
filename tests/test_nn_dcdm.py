"""DCDM with real (untrained) networks, and trained-solver files on disk."""

import json
import pickle

import numpy as np
import pytest
import torch

from deepcd.iterative.dcdm import dcdm
from deepcd.iterative.preconditioners import make_preconditioner
from deepcd.nn import build_network
from deepcd.nn.direction import NetworkDirection
from deepcd.nn.weights import load_solver, save_solver
from deepcd.problems import scene


@pytest.mark.parametrize("arch", ["paper-64", "multilevel"])
@pytest.mark.parametrize("shape", [(19, 17), (13, 12, 11)], ids=["2d", "3d"])
@pytest.mark.parametrize("safeguard", ["none", "mic0"])
def test_untrained_network_still_converges(arch, shape, safeguard):
    torch.manual_seed(0)
    problem = scene("smoke-obstacles", shape, seed=4)
    model = build_network(arch, len(shape))
    M = None if safeguard == "none" else make_preconditioner(safeguard, problem.stencil)
    res = dcdm(
        problem.stencil, problem.b, direction=NetworkDirection(model, problem), M=M, rtol=1e-8
    )
    assert res.converged and res.final_relres <= 1e-8
    assert res.settings["direction_s"] > 0


def test_model_of_wrong_dimension_is_refused():
    problem = scene("pool", (12, 12), seed=0)
    with pytest.raises(ValueError, match="3D grids but the problem is 2D"):
        NetworkDirection(build_network("multilevel", 3), problem)


def _saved(tmp_path):
    torch.manual_seed(1)
    model = build_network("multilevel", 2, channels=[2, 4])
    return model, save_solver(tmp_path / "s", model, {"note": "test"})


def test_save_load_round_trip(tmp_path):
    model, path = _saved(tmp_path)
    loaded, card = load_solver(path)
    assert card["arch"] == "multilevel" and card["note"] == "test"
    x = torch.randn(1, 1, 10, 9)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_tampered_weights_refused(tmp_path):
    _, path = _saved(tmp_path)
    w = path / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its card"):
        load_solver(path)


def test_pickled_weights_refused(tmp_path):
    model, path = _saved(tmp_path)
    w = path / "weights.safetensors"
    w.write_bytes(pickle.dumps(model.state_dict()))
    card = json.loads((path / "card.json").read_text())
    from deepcd.nn.weights import sha256

    card["weights_sha256"] = sha256(w)  # even with a matching hash, a pickle is refused
    (path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_solver(path)


def test_weights_for_another_architecture_refused(tmp_path):
    _, path = _saved(tmp_path)
    card = json.loads((path / "card.json").read_text())
    card["config"]["channels"] = [3, 4]
    (path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="does not fit architecture"):
        load_solver(path)


def test_unknown_solver_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="no solver folder"):
        load_solver("no-such-solver")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "card.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_solver(tmp_path / "bad")


def test_network_direction_into_is_its_call():
    """`NetworkDirection.into` (scaled scatter, checked gather, written in place) gives the
    direction of `__call__` on the scaled residual, and says when it is unusable."""
    from deepcd.nn.direction import NetworkDirection
    from deepcd.nn.weights import default_solver, load_solver
    from deepcd.problems import scene

    net, _ = load_solver(default_solver(3))
    problem = scene("smoke-obstacles", (16, 16, 16), seed=0)
    direction = NetworkDirection(net, problem)
    r = np.random.default_rng(0).standard_normal(problem.n)
    out = np.empty(problem.n)
    assert direction.into(r, 0.25, out)
    np.testing.assert_allclose(out, direction(0.25 * r), rtol=1e-6, atol=1e-7)
    assert not direction.into(np.zeros(problem.n), 1.0, out)  # all zero: unusable
    r[5] = np.nan
    assert not direction.into(r, 1.0, out)
