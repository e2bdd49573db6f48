"""Issue 14.5: the rough edges a new user hit, each with a clear answer now."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import deepcd
from deepcd.cli import main
from deepcd.problems import load_problem, save_problem, scene

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def problem():
    return scene("smoke-obstacles", (12, 12, 12), seed=0)


@pytest.mark.parametrize("method", ["cg", "dcdm"])
def test_x0_errors_name_x0_and_a_grid_x0_works(problem, method):
    with pytest.raises(ValueError, match=r"^x0 must have shape"):
        deepcd.solve(problem, x0=np.ones(3), method=method)
    with pytest.raises(ValueError, match=r"^x0 contains NaN"):
        deepcd.solve(problem, x0=np.full(problem.n, np.nan), method=method)
    bad_grid = np.zeros(problem.shape)
    bad_grid[problem.flags == 0] = np.nan
    with pytest.raises(ValueError, match=r"^x0 contains NaN"):
        deepcd.solve(problem, x0=bad_grid, method=method)
    x, info = deepcd.solve(problem, rtol=1e-8, method=method)
    warm = deepcd.solve_result(problem, x0=problem.to_grid(x), rtol=1e-8, method=method)
    assert info == 0 and warm.converged and warm.iterations == 0


@pytest.mark.parametrize("maxiter", [2.5, "10", True, np.float64(3.0)])
def test_maxiter_must_be_an_integer(problem, maxiter):
    with pytest.raises(TypeError, match="maxiter must be an integer"):
        deepcd.solve(problem, maxiter=maxiter, method="cg")
    assert deepcd.solve(problem, maxiter=np.int64(2), rtol=1e-14, method="cg")[1] == 2


def test_problem_file_without_its_boundary_is_a_clear_error(problem, tmp_path):
    path = save_problem(tmp_path / "p.h5", problem)
    with h5py.File(path, "a") as f:
        del f.attrs["boundary"]
    with pytest.raises(ValueError, match=r"missing attribute\(s\) \['boundary'\]"):
        load_problem(path)
    assert main(["solve", str(path), "--method", "cg"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", ["solve", "simulate"])
def test_cli_cuda_without_a_gpu_is_one_line(problem, tmp_path, capsys, command):
    if command == "solve":
        argv = ["solve", str(save_problem(tmp_path / "p.h5", problem)), "--device", "cuda"]
    else:
        argv = ["simulate", "--shape", "12", "--steps", "1", "--device", "cuda", "--out",
                str(tmp_path / "sim"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepcd: error: device='cuda' but torch sees no CUDA GPU")
    assert "Traceback" not in err


def test_weights_that_are_not_a_regular_file_are_refused(tmp_path):
    """A weights file linked to /dev/zero was hashed forever; now refused at once."""
    from deepcd.nn.weights import CARD, WEIGHTS, resolve_solver

    src = resolve_solver("vcycle-3d")
    folder = tmp_path / "zero"
    folder.mkdir()
    (folder / CARD).write_text((src / CARD).read_text())
    os.symlink("/dev/zero", folder / WEIGHTS)
    code = (
        "from deepcd.nn.weights import load_solver\n"
        "try:\n"
        f"    load_solver({str(folder)!r})\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert "is not a regular file" in proc.stdout, proc.stderr[-2000:]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_commands_do_not_rewrite_tracked_files():
    cg_kernels = _script("cg_kernels")
    assert Path(cg_kernels.parser().parse_args([]).out) == Path("bench-out/cg_kernels")
    dcdm_eval = _script("dcdm_eval")
    args = dcdm_eval.parser().parse_args(["vcycle-3d", "--card"])
    assert dcdm_eval.card_target(args) == Path("bench-out/dcdm-eval/vcycle-3d/card.json")
    shipped = dcdm_eval.parser().parse_args(["vcycle-3d", "--card", "--update-shipped"])
    assert dcdm_eval.card_target(shipped).parent.parent.name == "solvers"
    ignored = (ROOT / ".gitignore").read_text().split()
    for out in ("bench-out/", "sim-out/", "runs/"):
        assert out in ignored
    readme = (ROOT / "README.md").read_text()
    assert "source .venv/bin/activate" in readme
    assert "source" in (ROOT / "scripts" / "quickstart.sh").read_text()


def test_progress_bars_stay_out_of_logs(tmp_path, capsys):
    """stderr is not a terminal here (as in a log file): no carriage returns, no escapes."""
    out = tmp_path / "bench"
    assert main(["bench", "--scene", "box", "--shape", "12", "--solvers", "cg,dcdm",
                 "--out", str(out)]) == 0  # fmt: skip
    captured = capsys.readouterr()
    for text in (captured.err, captured.out):
        assert "\r" not in text and "\x1b[" not in text
    assert "relres" in captured.out  # the per-run log lines remain
