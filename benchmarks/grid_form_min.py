"""Coarse levels that are grids on the grid kernels, from what size: one V-cycle by bound (sets
`deepcd.nn.multigrid.GRID_FORM_MIN`).

Run:  .venv/bin/python benchmarks/grid_form_min.py [--out benchmarks/grid-form-min]
Writes OUT/results.json and OUT/results.md. Run it alone on a quiet machine.

Per scene and size, one application of the shipped 3D solver (`NetworkDirection.into`:
scatter, V-cycle, gather) with each candidate bound: a graph level below level 0 that is
exactly a stencil on its block grid (`grid_form`) runs on the grid kernels (the wavefront
smoother, the fused transfers) when it has at least the bound's unknowns, else on its graph
(`deepcd.nn.graph_cycle`). Each bound has its own hierarchy (grid forms are cached per
hierarchy); the bounds alternate round by round in one process; each cell of the table is the
median over the rounds of each round's median. The 2D solver has local weights, whose levels
always run on their graphs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

import deepcd.nn.multigrid as multigrid
from deepcd import threads
from deepcd.bench.runner import environment, warm_up
from deepcd.nn.direction import NetworkDirection
from deepcd.nn.weights import load_solver
from deepcd.problems import scene

SIZES = (32, 64, 128)
SCENES = ("smoke-obstacles", "smoke-plume", "pool")
BOUNDS = (1 << 11, 1 << 13, 1 << 15)


def time_bounds(directions: dict, r: np.ndarray, repeats: int, rounds: int) -> dict[int, float]:
    """Median seconds of one application per bound (rounds alternate the bounds)."""
    out = np.empty_like(r)
    per: dict[int, list[float]] = {b: [] for b in directions}
    for _ in range(rounds):
        for bound, direction in directions.items():
            multigrid.GRID_FORM_MIN = bound
            for _ in range(3):
                direction.into(r, 1.0, out)
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                direction.into(r, 1.0, out)
                ts.append(time.perf_counter() - t)
            per[bound].append(statistics.median(ts))
    return {b: statistics.median(v) for b, v in per.items()}


def grid_levels(net) -> list[int]:
    """The unknowns of the coarse levels that ran on their grid in the last hierarchy."""
    found, h = [], net._cache[2]
    while h is not None:
        forms = [f for f in h._forms.values() if f is not None]
        found += [f.levels[0].n for f in forms]
        h = forms[0] if forms else None
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/grid-form-min")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    threads.ensure()
    warm_up(["dcdm"], 3)
    chosen = multigrid.GRID_FORM_MIN
    rows = []
    try:
        for n in SIZES:
            for name in SCENES:
                problem = scene(name, (n,) * 3, seed=0)
                r = np.random.default_rng(0).standard_normal(problem.n)
                directions, on_grid = {}, {}
                for bound in BOUNDS:
                    multigrid.GRID_FORM_MIN = bound
                    net, _ = load_solver("vcycle-3d")
                    directions[bound] = NetworkDirection(net, problem)
                    directions[bound].prepare()
                    directions[bound](r)
                    on_grid[bound] = grid_levels(net)
                repeats = 15 if n <= 64 else 7
                ms = {
                    b: s * 1e3 for b, s in time_bounds(directions, r, repeats, args.rounds).items()
                }
                rows.append({"scene": name, "shape": [n] * 3, "ms": ms, "grid_levels": on_grid})
                print(name, n, {b: round(v, 2) for b, v in ms.items()}, on_grid, flush=True)
    finally:
        multigrid.GRID_FORM_MIN = chosen
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"bounds": list(BOUNDS), "chosen": chosen, "rows": rows, "environment": environment()}
    (out / "results.json").write_text(json.dumps(record, indent=1, default=str))
    head = " | ".join(f"bound {b:,}" for b in BOUNDS)
    lines = [
        "# Coarse levels that are grids: on the grid kernels from what size",
        "",
        "`python benchmarks/grid_form_min.py --out benchmarks/grid-form-min` — ms per "
        f"application of the shipped 3D solver (median of {args.rounds} alternating rounds' "
        f"medians), one process; `GRID_FORM_MIN` is {chosen:,} unknowns. In brackets: the "
        "coarse levels (unknowns) that ran on their grid.",
        "",
        f"| scene | grid | {head} | bound {BOUNDS[-1]:,} / chosen |",
        "|---|---|" + "---|" * len(BOUNDS) + "---|",
    ]
    for row in rows:
        ms, levels = row["ms"], row["grid_levels"]
        cells = " | ".join(
            f"{ms[b]:.2f} ({', '.join(f'{v:,}' for v in levels[b]) or '–'})" for b in BOUNDS
        )
        grid = "×".join(map(str, row["shape"]))
        lines.append(f"| {row['scene']} | {grid} | {cells} | {ms[BOUNDS[-1]] / ms[chosen]:.2f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
