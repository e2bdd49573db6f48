"""DCDM's PCG step with an SPD network: its passes over memory besides the network, four as
they were (the matvec, `dots2`, `subtract2`, `step_along`) against the two they are
(`Operator.matvec_dots`, `project_step`), on the same vectors of a smoke-obstacles scene; and
the solve with each (`PROJECTED_CANCEL` = inf computes the projection as the four passes did,
after the fused matvec).

Run:  .venv/bin/python benchmarks/loop_passes.py [--shape 128 --shape 256] [--rounds 15]
      [--out benchmarks/loop-passes]
Writes OUT/results.json and OUT/results.md: per size the median and fastest of `rounds`
interleaved rounds of each form, and per form the solve's iterations and its loop's time per
iteration (the solve less the network). Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import deepcd
from deepcd.bench.report import write_benchmark
from deepcd.bench.runner import warm_up
from deepcd.iterative import dcdm as loop
from deepcd.kernels.vector import dots2, project_step, step_along, subtract2
from deepcd.problems import scene


def forms(op, n: int) -> dict:
    """The two forms of one step on random vectors (n,): two stored directions, small
    coefficients (the vectors stay finite over the rounds)."""
    rng = np.random.default_rng(0)
    v, av, p0, ap0, p1, ap1, r, x, b = (rng.standard_normal(n) for _ in range(9))
    c0 = c1 = c = 1e-9

    def four():
        op.matvec(v, av)
        dots2(av, p0, p1, True)
        subtract2(v, av, c0, p0, ap0, c1, p1, ap1, True, r)
        step_along(x, r, v, av, c, b)

    def two():
        op.matvec_dots(v, av, p0, p1, True, r)
        project_step(v, av, c0, p0, ap0, c1, p1, ap1, True, c, x, r, b)

    return {"four passes": four, "two passes": two}


def solve(problem, cancel: float) -> dict:
    loop.PROJECTED_CANCEL = cancel
    try:
        res = deepcd.solve_result(problem, rtol=1e-6)
    finally:
        loop.PROJECTED_CANCEL = 1e-8
    return {
        "iterations": res.iterations,
        "loop_per_iteration_s": (res.solve_s - res.settings["direction_s"]) / res.iterations,
    }


def run(n: int, rounds: int) -> dict:
    problem = scene("smoke-obstacles", (n, n, n), seed=0)
    step = forms(problem.stencil, problem.n)
    for f in step.values():
        f()
    times = {k: [] for k in step}
    for _ in range(rounds):
        for k, f in step.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    for cancel in (1e-8, np.inf):  # the network's levels and both loops' kernels: not timed
        solve(problem, cancel)
    solves = {"two passes": solve(problem, 1e-8), "computed projection": solve(problem, np.inf)}
    return {
        "shape": [n, n, n],
        "unknowns": problem.n,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "fastest_s": {k: min(v) for k, v in times.items()},
        "solves": solves,
    }


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# DCDM's PCG step: four passes against two",
        "",
        f"`{command}` — smoke-obstacles, seed 0; ms per step, interleaved rounds.",
        "",
        "| grid | four passes (median / fastest) | two passes (median / fastest) | four / two |",
        "|---|---|---|---|",
    ]
    for r in rows:
        m, f = r["median_s"], r["fastest_s"]
        lines.append(
            f"| {'×'.join(map(str, r['shape']))} | {m['four passes'] * 1e3:.2f} / "
            f"{f['four passes'] * 1e3:.2f} | {m['two passes'] * 1e3:.2f} / "
            f"{f['two passes'] * 1e3:.2f} | {m['four passes'] / m['two passes']:.2f} |"
        )
    lines += [
        "",
        "The solve (rtol 1e-6) with the projection by algebra (two passes) and computed "
        "(PROJECTED_CANCEL = inf): iterations, the loop's ms per iteration (one solve each).",
        "",
        "| grid | two passes | computed projection |",
        "|---|---|---|",
    ]
    for r in rows:
        a, b = r["solves"]["two passes"], r["solves"]["computed projection"]
        lines.append(
            f"| {'×'.join(map(str, r['shape']))} | {a['iterations']} / "
            f"{a['loop_per_iteration_s'] * 1e3:.1f} ms | {b['iterations']} / "
            f"{b['loop_per_iteration_s'] * 1e3:.1f} ms |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, action="append", default=[])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default="bench-out/loop-passes")
    args = ap.parse_args()
    from deepcd import threads

    threads.ensure()
    warm_up(["dcdm"], 3)
    rows = [run(n, args.rounds) for n in args.shape or [128, 256]]
    command = "python benchmarks/loop_passes.py " + " ".join(sys.argv[1:])
    write_benchmark(Path(args.out), command, rows, markdown(rows, command))


if __name__ == "__main__":
    main()
