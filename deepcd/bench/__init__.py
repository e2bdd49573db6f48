"""Benchmarks: run solvers on scenes, record every residual, write tables and plots."""

from deepcd.bench.runner import run_benchmark, run_one
from deepcd.bench.solvers import SOLVERS, run_solver, solver_names

__all__ = ["SOLVERS", "run_benchmark", "run_one", "run_solver", "solver_names"]
