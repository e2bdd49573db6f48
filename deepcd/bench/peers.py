"""PETSc peers of the benchmark: CG + hypre BoomerAMG, CG + GAMG and CG + deepcd's V-cycle
as a PETSc preconditioner, each run under `mpiexec -n NP` in a subprocess
(`python -m deepcd.petsc.run`), with the true residual recomputed here by deepcd.

The subprocess runs in a Python that has petsc4py: $DEEPCD_PETSC_PYTHON, else this
interpreter when it imports petsc4py, else the repository's .venv-petsc
(`./scripts/bootstrap.sh --petsc`). So the benchmark can run from the default venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from deepcd.iterative.result import SolveResult
from deepcd.kernels.vector import norm
from deepcd.problems.problem import Problem

ROOT = Path(__file__).resolve().parents[2]


def petsc_python() -> str:
    """The interpreter that runs the PETSc subprocess (see the module docstring)."""
    env = os.environ.get("DEEPCD_PETSC_PYTHON")
    if env:
        return env
    from deepcd.petsc import available

    if available():
        return sys.executable
    venv = ROOT / ".venv-petsc" / "bin" / "python"
    if venv.exists():
        return str(venv)
    from deepcd.petsc.env import HINT

    raise RuntimeError(f"no Python with petsc4py for the PETSc peers: {HINT}")


def mpiexec_command(nprocs: int) -> list[str]:
    """mpiexec -n NP (with --oversubscribe when NP exceeds the cores)."""
    exe = shutil.which("mpiexec") or shutil.which("mpirun")
    if exe is None:
        from deepcd.petsc.env import HINT

        raise RuntimeError(f"mpiexec not found: {HINT}")
    cmd = [exe, "-n", str(int(nprocs))]
    if int(nprocs) > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")
    return cmd


def mpi_env(nprocs: int) -> dict:
    """The subprocess environment: Open MPI allowed as root, one thread per rank for deepcd's
    numba kernels (DEEPCD_THREADS unless set: one core per MPI process, as hypre and GAMG
    use), OMP_NUM_THREADS=1."""
    env = dict(os.environ)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("DEEPCD_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_peer(
    name: str,
    problem: Problem,
    *,
    pc: str,
    rtol: float,
    maxiter: int | None,
    nprocs: int = 1,
    solver: str | None = None,
    timeout: float | None = None,
) -> SolveResult:
    """Run peer `name` (CG with the PETSc preconditioner `pc`, one of
    `deepcd.petsc.run.PCS`) on `problem` from x0 = 0 with `nprocs` MPI processes."""
    from deepcd.petsc.run import pc_options, write_grid_problem

    if problem.ndim != 3:
        raise ValueError(f"the PETSc peers solve 3D problems, got a {problem.ndim}D one")
    if problem.is_singular:
        raise ValueError("the PETSc peers need a nonsingular problem (a region touching AIR)")
    with tempfile.TemporaryDirectory(prefix="deepcd-petsc-") as tmp:
        tmp = Path(tmp)
        stencil = problem.grid_stencil if problem.has_coefficients else None
        b_grid = problem.to_grid(problem.b)
        write_grid_problem(tmp / "p.h5", problem.flags, b_grid, problem.boundary, stencil)
        cmd = [
            *mpiexec_command(nprocs),
            petsc_python(),
            "-m",
            "deepcd.petsc.run",
            "--problem",
            str(tmp / "p.h5"),
            "--pc",
            pc,
            "--rtol",
            repr(float(rtol)),
            "--out",
            str(tmp / "r.json"),
            "--x-out",
            str(tmp / "x.npy"),
        ]
        if maxiter:
            cmd += ["--maxiter", str(int(maxiter))]
        if solver:
            cmd += ["--solver", str(solver)]
        proc = subprocess.run(
            cmd, env=mpi_env(nprocs), capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0 or not (tmp / "r.json").exists():
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{tail}")
        rec = json.loads((tmp / "r.json").read_text())
        xg = np.load(tmp / "x.npy", allow_pickle=False)
    x = problem.from_grid(xg)
    bnorm = norm(problem.b) or 1.0
    final = norm(problem.b - problem.A @ x) / bnorm
    residuals = np.asarray(rec["residuals"], dtype=np.float64)
    converged = rec["reason"] > 0
    settings = {
        "np": rec["np"],
        "ksp": "cg",
        "norm": "unpreconditioned",
        "rtol": rtol,
        "options": " ".join(f"-{k} {v}" for k, v in pc_options(pc).items()),
        "petsc_assembly_s": max(rec["assembly_s"], 0.0),
        "peak_rss_mb_per_rank": rec["peak_rss_mb_per_rank"],
        "cells_per_rank": rec["cells_per_rank"],
        "threads_per_rank": rec["threads_per_rank"],
        **{f"version_{k}": v for k, v in rec["versions"].items()},
    }
    if "deepcd" in rec:
        settings["deepcd_levels"] = rec["deepcd"]
    if "mg_levels" in rec:
        settings["mg_levels"] = rec["mg_levels"]
        settings["options"] += f" -pc_mg_levels {rec['mg_levels']}"
    return SolveResult(
        x=x,
        converged=bool(converged and final <= 10 * rtol),
        info=0 if converged else int(rec["iterations"]),
        iterations=int(rec["iterations"]),
        residuals=residuals,
        times=np.asarray(rec["times"], dtype=np.float64),
        setup_s=float(rec["setup_s"]),
        solve_s=float(rec["solve_s"]),
        final_relres=final,
        method=name,
        settings=settings,
        message="" if converged else f"KSP reason {rec['reason']}",
    )
