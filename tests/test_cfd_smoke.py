"""The smoke simulator and `deepcd simulate`: a few real steps on small grids."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from deepcd.cfd.smoke import SmokeSimulation
from deepcd.cli import main
from deepcd.problems import FLUID, scene


@pytest.mark.parametrize("shape", [(32, 40), (16, 16, 20)], ids=["2d", "3d"])
def test_smoke_rises_and_stays_divergence_free(shape):
    problem = scene("smoke-obstacles", shape, seed=0)
    sim = SmokeSimulation(
        problem.flags,
        boundary=problem.boundary,
        source_center=problem.params["source_center"],
        method="dcdm",
        compare="cg",
        rtol=1e-7,
    )
    records = [sim.step() for _ in range(6)]
    assert all(r.converged for r in records)
    assert all(r.compare_iterations > r.iterations for r in records[1:])
    up = np.arange(shape[-1])
    height = (sim.density.sum(axis=tuple(range(len(shape) - 1))) * up).sum() / sim.density.sum()
    assert height > 1.0  # the smoke has left the floor source
    div = sim.projector.divergence(sim.velocity)[problem.flags == FLUID]
    assert np.abs(div).max() == pytest.approx(records[-1].max_divergence)
    assert records[-1].max_divergence < 1e-4
    img = sim.density_image()
    assert img.ndim == 2 and np.isnan(img).any()  # solids drawn as NaN


def test_simulate_cli_writes_frames_gif_csv_and_summary(tmp_path, capsys):
    out = tmp_path / "sim"
    code = main(
        [
            "simulate",
            "--scene",
            "smoke-plume",
            "--shape",
            "24x24x28",
            "--steps",
            "4",
            "--frame-every",
            "2",
            "--compare",
            "cg",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in (out / "frames").iterdir()) == [
        "frame_00002.png",
        "frame_00004.png",
    ]
    assert (out / "smoke.gif").stat().st_size > 0 and (out / "solver.png").exists()
    rows = list(csv.DictReader(open(out / "steps.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["compare"] == "cg"
    assert summary["command"].startswith("deepcd simulate")


def test_bad_simulation_input(tmp_path, capsys):
    flags = np.zeros((16, 16), np.int8)
    flags[:, :4] = 1  # the floor is solid: no room for a source
    with pytest.raises(ValueError, match="source"):
        SmokeSimulation(flags)
    with pytest.raises(ValueError, match="dt"):
        SmokeSimulation(np.zeros((16, 16), np.int8), dt=-1.0)
    out = str(tmp_path / "x")
    assert main(["simulate", "--shape", "16", "--steps", "0", "--no-progress", "--out", out]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
