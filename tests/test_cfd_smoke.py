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


# -- the two-phase example: a drop falling into a pool -----------------------------------------


@pytest.mark.parametrize("shape", [(24, 24), (16, 16, 16)], ids=["2d", "3d"])
def test_drop_falls_and_every_projection_meets_rtol(shape):
    from deepcd.cfd.twophase import DropSimulation

    rtol = 1e-7
    sim = DropSimulation(shape, ratio=1000.0, gravity=0.05, method="dcdm", rtol=rtol)
    start = sim.drop_height()
    records = [sim.step() for _ in range(6)]
    assert all(r.converged for r in records)
    assert all(r.relative_divergence <= 1.01 * rtol for r in records)
    assert [r.step for r in records] == list(range(1, 7))
    assert all(r.iterations >= 1 for r in records)
    # free fall at ~g (the gas is 1000× lighter): ½·0.05·6² ≈ 0.9 cells, the RK2 trace a bit less
    assert start - sim.drop_height() > 0.5
    drop = (sim.phi < 0) & (np.indices(shape)[-1] + 0.5 > 0.5 * shape[-1])
    assert sim.velocity[-1][..., 1:][drop].mean() < -0.2  # the drop moves down


def test_equal_densities_keep_the_drop_in_place():
    """Ratio 1 is one fluid: the projection cancels gravity and nothing falls — the drop
    above falls only because of the variable-density projection."""
    from deepcd.cfd.twophase import DropSimulation

    sim = DropSimulation((24, 24), ratio=1.0, method="cg", rtol=1e-9)
    start = sim.drop_height()
    for _ in range(4):
        assert sim.step().converged
    assert abs(sim.drop_height() - start) < 1e-6
    assert max(np.abs(v).max() for v in sim.velocity) < 1e-6


def test_simulate_cli_runs_the_two_phase_drop(tmp_path):
    out = tmp_path / "drop"
    argv = ["simulate", "--scene", "drop-pool", "--shape", "24", "--dim", "2", "--steps", "3"]
    argv += ["--param", "ratio=100", "--compare", "cg", "--rtol", "1e-7", "--out", str(out)]
    assert main([*argv, "--frame-every", "3", "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out / "steps.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(float(r["relative_divergence"]) <= 1.01e-7 for r in rows)
    assert all(int(r["compare_iterations"]) > int(r["iterations"]) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all_converged"] and summary["relative_divergence_max"] <= 1.01e-7
    assert (out / "frames" / "frame_00003.png").exists()


def test_cut_cells_smoke_passes_its_fractions_to_the_projection():
    from deepcd.cfd.scenes import make_simulation

    # the smoke stores float32 velocities: their rounding alone leaves ~1e-7 relative
    sim = make_simulation("cut-cells", (24, 24), seed=0, method="cg", rtol=1e-5)
    assert sim.projector.fraction is not None
    assert any(((f > 0) & (f < 1)).any() for f in sim.projector.fraction)
    for _ in range(3):
        record = sim.step()
        assert record.converged and record.relative_divergence <= 1.01e-5


def test_bad_simulate_scene_or_param(tmp_path, capsys):
    out = str(tmp_path / "x")
    base = ["simulate", "--shape", "16", "--dim", "2", "--steps", "1", "--no-progress"]
    assert main([*base, "--scene", "two-phase", "--out", out]) == 2
    assert "drop-pool" in capsys.readouterr().err
    assert main([*base, "--scene", "drop-pool", "--param", "viscosity=1", "--out", out]) == 2
    assert "viscosity" in capsys.readouterr().err
    assert main([*base, "--scene", "nowhere", "--out", out]) == 2
    assert "unknown scene" in capsys.readouterr().err
    from deepcd.cfd.twophase import DropSimulation

    with pytest.raises(ValueError, match="ratio"):
        DropSimulation((16, 16), ratio=0.0)
    with pytest.raises(ValueError, match="above the pool"):
        DropSimulation((16, 16), drop_center=(0.5, 0.3))
