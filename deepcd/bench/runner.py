"""Benchmark runner: scenes × shapes × solvers -> run records (plain dicts, JSON-ready)."""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path

import numpy as np

from deepcd._version import __version__
from deepcd.bench.solvers import is_peer, needs_csr, run_solver, runs_vcycle
from deepcd.hardware import cpu_name
from deepcd.kernels.vector import norm
from deepcd.problems import load_problem, save_problem, scene
from deepcd.problems.problem import Problem
from deepcd.progress import bars_enabled


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _progress_monitor(bar, r0: float, rtol: float):
    """Map the residual to percent of the way (in log scale) from r0 to rtol·r0."""
    span = -math.log10(rtol) if rtol > 0 else 16.0

    def monitor(k: int, rnorm: float) -> None:
        if k % 8:
            return
        done = 0.0 if rnorm <= 0 else math.log10(r0 / rnorm) / span if r0 > 0 else 1.0
        bar.n = int(100 * min(max(done, 0.0), 1.0))
        bar.set_postfix_str(f"it={k} rel={rnorm / r0:.1e}", refresh=False)
        bar.refresh()

    return monitor


def run_one(
    name: str,
    problem: Problem,
    *,
    rtol: float,
    maxiter: int | None,
    progress: bool = False,
    assembly_s: float = 0.0,
    nprocs: int = 1,
) -> dict:
    """Run one solver on one problem and return its record (peak_rss_mb: of this process,
    or of the largest rank for a PETSc peer)."""
    monitor = bar = None
    if bars_enabled(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=100, desc=f"  {name}", unit="%", leave=False)
        monitor = _progress_monitor(bar, norm(problem.b), rtol)
    try:
        res = run_solver(name, problem, rtol=rtol, maxiter=maxiter, monitor=monitor, nprocs=nprocs)
    finally:
        if bar is not None:
            bar.close()
    bnorm = norm(problem.b) or 1.0
    return {
        "solver": name,
        "scene": problem.generator,
        "shape": list(problem.shape),
        "seed": problem.seed,
        "unknowns": problem.n,
        "iterations": res.iterations,
        "setup_s": res.setup_s,
        "solve_s": res.solve_s,
        "total_s": res.total_s,
        "s_per_iteration": res.solve_s / res.iterations if res.iterations else None,
        "final_relres": res.final_relres,
        "converged": bool(res.converged),
        "info": int(res.info),
        "residuals": (res.residuals / bnorm).tolist(),
        "times": res.times.tolist(),
        "settings": _jsonable(res.settings),
        "message": res.message,
        "csr_assembly_s": assembly_s if needs_csr(name) else 0.0,
        "peak_rss_mb": max(res.settings.get("peak_rss_mb_per_rank") or [peak_rss_mb()]),
        "np": int(res.settings.get("np", 1)),
    }


def warm_up(solvers: list[str], ndim: int) -> None:
    """Run every solver once on a tiny problem so JIT compilation and cache loading (numba,
    pyamg's first calls) are not timed as part of the first real run."""
    tiny = scene("poisson-box", (8,) * ndim, seed=0)
    for name in solvers:
        if is_peer(name):  # they warm up in their own processes
            continue
        run_solver(name, tiny, rtol=1e-6, maxiter=None)
    # the V-cycle's levels run serial kernel copies below SERIAL_BELOW unknowns and parallel
    # ones above: a grid with walls, solved once with every level parallel and once as the
    # timed runs are, and a small one with coefficients (checked on its CSR) compile, or
    # load, every kernel; an open grid whose level 1 is big enough to run on the grid
    # kernels (`grid_form`) loads theirs; a maze runs level 0 on its graph (`fine_on_graph`)
    networks = [n for n in solvers if runs_vcycle(n)]
    if networks:
        from deepcd.kernels import aggregate
        from deepcd.nn.multigrid import GRID_FORM_MIN

        side = 40 if ndim == 3 else 200
        walls = scene("smoke-obstacles", (side,) * ndim, seed=0)
        jumps = scene("two-phase", (16,) * ndim, seed=0)
        # (+2: no benchmark grid has this shape, so no timed run finds these levels cached)
        open_side = 2 * math.ceil(GRID_FORM_MIN ** (1 / ndim)) + 2
        plume = scene("smoke-plume", (open_side,) * ndim, seed=0)
        maze = scene("maze", (side,) * ndim, seed=0)
        below = aggregate.SERIAL_BELOW
        try:
            aggregate.SERIAL_BELOW = 0
            for name in networks:
                run_solver(name, walls, rtol=1e-6, maxiter=None)
        finally:
            aggregate.SERIAL_BELOW = below
        for name in networks:
            for problem in (walls, jumps, plume, maze):
                run_solver(name, problem, rtol=1e-6, maxiter=None)
            _warm_grid_kernels(name, ndim)


# A grid whose level 1 runs on the grid kernels with links off its grid (`ExtraLinks`):
# smoke-obstacles seed 1 at these sizes (tests/test_bench.py checks that it still is one)
EXTRA_LINKS_SIDE = {2: 202, 3: 44}


def extra_links_scene(ndim: int):
    return scene("smoke-obstacles", (EXTRA_LINKS_SIDE[ndim],) * ndim, seed=1)


def _warm_grid_kernels(name: str, ndim: int) -> None:
    """Load the grid kernels a timed run may meet first: the wavefront with links off the
    grid, and the tiled wavefronts (large planes), each as the parallel kernel and, untiled,
    its serial copy (small grid levels) — by solving a grid with such links with those
    choices forced (`deepcd.nn.fastpath`'s bounds; chunks of a single plane per step, so
    that this small grid's level splits into every thread, as `VCycleNet._grid_form` asks)."""
    from deepcd.nn import fastpath

    problem = extra_links_scene(ndim)
    saved = fastpath.GRID_SERIAL_BELOW, fastpath.RING_UNTILED_MAX, fastpath.WAVEFRONT_PLANES
    try:
        fastpath.WAVEFRONT_PLANES = 1
        for serial_below, untiled_max in ((0, 0), (0, saved[1]), saved[:2]):
            fastpath.GRID_SERIAL_BELOW, fastpath.RING_UNTILED_MAX = serial_below, untiled_max
            run_solver(name, problem, rtol=1e-6, maxiter=None)
    finally:
        fastpath.GRID_SERIAL_BELOW, fastpath.RING_UNTILED_MAX, fastpath.WAVEFRONT_PLANES = saved


def median_run(records: list[dict]) -> dict:
    """The record with the median total time (the lower middle one of an even count), with
    every run's setup, solve and total times and iterations added (`repeats` of them)."""
    order = sorted(range(len(records)), key=lambda i: records[i]["total_s"])
    rec = dict(records[order[(len(order) - 1) // 2]])
    rec["repeats"] = len(records)
    for key in ("setup_s", "solve_s", "total_s", "iterations"):
        rec[f"{key}_all"] = [r[key] for r in records]
    return rec


def _jsonable(d: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}


def _run_isolated(path: str, name: str, rtol: float, maxiter: int | None, nprocs: int = 1) -> dict:
    """Child-process entry: load the problem file, assemble if needed, run, report."""
    problem = load_problem(path)
    warm_up([name], problem.ndim)
    assembly_s = 0.0
    if needs_csr(name):
        t = time.perf_counter()
        problem.A  # noqa: B018 - assemble now so the time is measured separately
        assembly_s = time.perf_counter() - t
    return run_one(name, problem, rtol=rtol, maxiter=maxiter, assembly_s=assembly_s, nprocs=nprocs)


def environment() -> dict:
    """What the numbers were measured on, with the thread settings and the machine's load
    (os.getloadavg: other work on the cores slows every solver)."""
    import numba
    import pyamg
    import scipy

    from deepcd import threads

    return {
        "deepcd": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pyamg": pyamg.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "machine": platform.machine(),
        "processor": cpu_name(),
        "cpu_count": mp.cpu_count(),
        **threads.settings(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def run_benchmark(
    scene_names: list[str],
    shapes: list[tuple[int, ...]],
    solvers: list[str],
    *,
    rtol: float = 1e-6,
    maxiter: int | None = None,
    seed: int = 0,
    isolate: bool = False,
    scratch: Path | None = None,
    progress: bool = True,
    log=print,
    params: dict | None = None,
    nprocs: int = 1,
    repeats: int = 1,
) -> tuple[list[dict], list[dict]]:
    """Run every solver on every (scene, shape). Returns (runs, problems).

    repeats: rounds of every solver on each problem (round by round, so a drift of the
    machine reaches every solver alike); each run is a fresh one — its own process with
    `isolate`, else with deepcd's loaded solvers dropped before each round, so no round
    finds the network's levels of the one before. A solver's record is its run with the
    median total time, with every run's times in setup_s_all, solve_s_all, total_s_all and
    iterations_all.

    params: scene parameters given to every scene (e.g. {"ratio": 1000.0} for two-phase),
    recorded in each problem and run.

    nprocs: MPI processes of the PETSc peers (`deepcd.bench.peers`).

    isolate: each solver runs in a fresh process that loads the problem from an HDF5 file in
    `scratch`, so `peak_rss_mb` is that run's own peak (problem + solver), not the suite's.
    """
    from tqdm.auto import tqdm

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    runs: list[dict] = []
    problems: list[dict] = []
    combos = [(s, sh) for s in scene_names for sh in shapes]
    if not isolate:
        for ndim in sorted({len(sh) for sh in shapes}):
            warm_up(solvers, ndim)
    total = len(combos) * len(solvers) * repeats
    with tqdm(
        total=total, desc="benchmark", unit="run", disable=not bars_enabled(progress)
    ) as outer:
        for name, shape in combos:
            t = time.perf_counter()
            problem = scene(name, shape, seed=seed, **(params or {}))
            gen_s = time.perf_counter() - t
            info = {
                "scene": name,
                "shape": list(shape),
                "seed": seed,
                "params": dict(params or {}),
                "unknowns": problem.n,
                "generate_s": gen_s,
                "singular": problem.is_singular,
            }
            log(
                f"{name} {'x'.join(map(str, shape))}: {problem.n:,} unknowns, "
                f"generated in {gen_s:.1f} s"
            )
            path = None
            if isolate:
                scratch = Path(scratch or "benchmarks/scratch")
                tag = "".join(f"_{k}{v}" for k, v in sorted((params or {}).items()))
                path = scratch / f"{name}_{'x'.join(map(str, shape))}_s{seed}{tag}.h5"
                save_problem(path, problem)
            elif any(needs_csr(s) for s in solvers):
                t = time.perf_counter()
                problem.A  # noqa: B018
                info["csr_assembly_s"] = time.perf_counter() - t
            problems.append(info)
            done: dict[str, list[dict]] = {solver: [] for solver in solvers}
            for round_ in range(repeats):
                if round_ and not isolate:
                    from deepcd.api import forget_loaded_solvers

                    forget_loaded_solvers()
                for solver in solvers:
                    outer.set_postfix_str(f"{name} {shape} {solver}")
                    if isolate:
                        ctx = mp.get_context("spawn")
                        with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                            rec = pool.submit(
                                _run_isolated, str(path), solver, rtol, maxiter, nprocs
                            ).result()
                        rec["isolated"] = True
                    else:
                        rec = run_one(
                            solver,
                            problem,
                            rtol=rtol,
                            maxiter=maxiter,
                            progress=progress,
                            assembly_s=info.get("csr_assembly_s", 0.0),
                            nprocs=nprocs,
                        )
                        rec["isolated"] = False
                    rec["params"] = dict(params or {})
                    done[solver].append(rec)
                    log(
                        f"  {solver:>14}: {rec['iterations']:>6} it  setup {rec['setup_s']:7.2f} s"
                        f"  solve {rec['solve_s']:8.2f} s  relres {rec['final_relres']:.1e}"
                        + (f"  (round {round_ + 1}/{repeats})" if repeats > 1 else "")
                        + ("" if rec["converged"] else f"  NOT CONVERGED ({rec['message']})")
                    )
                    outer.update(1)
            runs.extend(median_run(done[solver]) for solver in solvers)
    return runs, problems
