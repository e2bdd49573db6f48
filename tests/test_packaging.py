"""The wheel ships the trained solvers where load_solver finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["vcycle-2d", "vcycle-3d"])
def test_shipped_solver_is_in_the_repository(name):
    from deepcd.nn import load_solver

    model, card = load_solver(name)
    assert card["arch"] == model.arch == "vcycle"
    assert "evaluation" in card and card["evaluation"]["command"].startswith("python benchmarks")


def test_wheel_ships_the_solvers(tmp_path):
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation"]
    subprocess.run([*cmd, "-q", "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("deepcd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for solver in sorted(p.name for p in (ROOT / "solvers").iterdir() if p.is_dir()):
        assert f"deepcd/solvers/{solver}/card.json" in names
        assert f"deepcd/solvers/{solver}/weights.safetensors" in names
