import json
import subprocess
import sys

import numpy as np
import pytest

from deepcd.cli import main
from deepcd.problems import load_problem

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_writes_results_table_and_plots(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(
        [
            "bench",
            "--scene",
            "smoke-obstacles",
            "--shape",
            "12",
            "--shape",
            "16x12",
            "--solvers",
            "cg,ic0,amg-sa,newton-amg,scipy-cg",
            "--rtol",
            "1e-6",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    runs = data["runs"]
    assert len(runs) == 2 * 5
    required = {
        "solver",
        "scene",
        "shape",
        "unknowns",
        "iterations",
        "setup_s",
        "solve_s",
        "final_relres",
        "converged",
        "residuals",
    }
    for run in runs:
        assert required <= set(run)
        assert run["converged"] and run["final_relres"] <= 1e-6
        assert len(run["residuals"]) == run["iterations"] + 1
        assert run["residuals"][0] == pytest.approx(1.0)
    assert {tuple(r["shape"]) for r in runs} == {(12, 12, 12), (16, 12)}
    assert "deepcd bench" in data["meta"]["command"]
    pngs = sorted(out.glob("residuals_*.png"))
    assert len(pngs) == 2
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    table = (out / "results.md").read_text()
    assert "| smoke-obstacles |" in table and "amg-sa" in table
    assert "true relres" in capsys.readouterr().out


def test_a_benchmark_scripts_outputs_carry_its_command_and_machine(tmp_path, capsys):
    """`write_benchmark` (the benchmarks/*.py scripts' outputs): results.json holds the
    command, the machine and the rows; results.md the report, which is printed too."""
    from deepcd.bench.report import write_benchmark

    out = tmp_path / "nested" / "run"
    write_benchmark(out, "python benchmarks/x.py --n 3", [{"n": 3, "s": 0.5}], "# report\n")
    data = json.loads((out / "results.json").read_text())
    assert data["command"] == "python benchmarks/x.py --n 3"
    assert data["rows"] == [{"n": 3, "s": 0.5}]
    assert data["environment"]["numba_threads"] >= 1
    assert (out / "results.md").read_text() == "# report\n"
    assert "# report" in capsys.readouterr().out


def test_bench_isolated_reports_per_run_memory(tmp_path):
    out = tmp_path / "bench"
    code = main(
        [
            "bench",
            "--scene",
            "pool",
            "--shape",
            "10",
            "--solvers",
            "cg,amg-rs",
            "--out",
            str(out),
            "--isolate",
            "--no-progress",
        ]
    )
    assert code == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert all(r["isolated"] and r["peak_rss_mb"] > 10 for r in runs)


@pytest.mark.parametrize("isolate", [False, True])
def test_bench_scene_parameters_and_the_untrained_network(tmp_path, isolate):
    """--param reaches every scene (a two-phase density ratio) and is recorded; dcdm-untrained
    is the shipped architecture at its initialization; the summary table reads both."""
    out = tmp_path / "bench"
    args = ["bench", "--scene", "two-phase", "--shape", "16", "--dim", "2", "--param"]
    args += ["ratio=100", "--solvers", "dcdm,dcdm-untrained,amg-sa", "--out", str(out)]
    code = main([*args, "--no-progress"] + (["--isolate"] if isolate else []))
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert all(r["params"] == {"ratio": 100} for r in data["runs"])
    assert data["problems"][0]["params"] == {"ratio": 100}
    import importlib.util

    spec = importlib.util.spec_from_file_location("summarize", "benchmarks/summarize.py")
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)
    table = summarize.main(tmp_path)
    assert "ratio 100" in table and "trained vs untrained" in table


def test_generate_then_solve(tmp_path, capsys):
    path = tmp_path / "p.h5"
    assert (
        main(
            [
                "generate",
                "problem",
                "--scene",
                "bunny",
                "--shape",
                "16",
                "--dim",
                "2",
                "--seed",
                "3",
                "--out",
                str(path),
            ]
        )
        == 0
    )
    problem = load_problem(path)
    assert problem.shape == (16, 16) and problem.generator == "bunny" and problem.seed == 3
    save = tmp_path / "p.npy"
    assert main(["solve", str(path), "--method", "mic0", "--save", str(save)]) == 0
    assert "converged" in capsys.readouterr().out
    assert np.load(save).shape == (16, 16)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--scene", "nope", "--out", "x"], "unknown scene"),
        (["bench", "--solvers", "cg,nope", "--out", "x"], "unknown solver"),
        (["bench", "--shape", "12x", "--out", "x"], "shape"),
        (["solve", "missing.h5"], "no problem file"),
        (
            [
                "generate",
                "problem",
                "--scene",
                "box",
                "--shape",
                "12",
                "--param",
                "bogus=1",
                "--out",
                "x.h5",
            ],
            "bogus",
        ),
    ],
)
def test_cli_errors_are_clear(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "deepcd.cli", "info"], capture_output=True, text=True, check=True
    ).stdout
    assert "smoke-obstacles" in out and "amg-sa" in out
    waiting = next(line for line in out.splitlines() if line.startswith("waiting:"))
    assert "DEEPCD_WAIT" in waiting
    assert waiting.split()[1] in ("spin", "passive", "environment")


def test_bench_repeats_report_the_median_run_of_fresh_solves(tmp_path, monkeypatch, capsys):
    """--repeats N: every solver N times, round by round; each DCDM run builds its levels
    afresh (no round finds the one before's cached); the record is the median run's, with
    every run's times; results.md lists them."""
    import deepcd.bench.runner as runner

    seen = []
    real = runner.median_run
    monkeypatch.setattr(runner, "median_run", lambda recs: seen.append(recs) or real(recs))
    out = tmp_path / "bench"
    args = ["bench", "--scene", "maze", "--shape", "16", "--solvers", "dcdm,cg"]
    code = main([*args, "--repeats", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["solver"] for r in runs] == ["dcdm", "cg"]
    for recs, run in zip(seen, runs, strict=True):
        assert len(recs) == 3 and run["repeats"] == 3
        assert sorted(run["total_s_all"])[1] == run["total_s"]
        assert len(set(run["iterations_all"])) == 1
    assert [r["settings"]["hierarchy_cached"] for r in seen[0]] == [False] * 3
    table = (out / "results.md").read_text()
    assert "median total time of 3" in table and "| maze | 16×16×16 | dcdm |" in table
    capsys.readouterr()
    assert main([*args, "--repeats", "0", "--out", str(out), "--no-progress"]) == 2
    assert "repeats must be >= 1" in capsys.readouterr().err


def test_median_run_takes_the_middle_total():
    from deepcd.bench.runner import median_run

    recs = [
        {"total_s": t, "setup_s": 0.0, "solve_s": t, "iterations": 5, "tag": i}
        for i, t in enumerate([3.0, 1.0, 2.0, 4.0])
    ]
    rec = median_run(recs)
    assert rec["tag"] == 2 and rec["repeats"] == 4  # the lower middle of 1, 2, 3, 4
    assert rec["total_s_all"] == [3.0, 1.0, 2.0, 4.0]
    assert median_run(recs[:1])["tag"] == 0
