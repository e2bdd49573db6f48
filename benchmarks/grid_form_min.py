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
from pathlib import Path

import numpy as np
from bound_sweep import median_ms, write_results

import deepcd.nn.multigrid as multigrid
from deepcd import threads
from deepcd.bench.runner import environment, warm_up
from deepcd.nn.direction import NetworkDirection
from deepcd.nn.weights import load_solver
from deepcd.problems import scene

SIZES = (32, 64, 128)
SCENES = ("smoke-obstacles", "smoke-plume", "pool")
BOUNDS = (1 << 11, 1 << 13, 1 << 15)


def grid_levels(net) -> list[int]:
    """The unknowns of the coarse levels that ran on their grid in the last hierarchy."""
    found, h = [], net._cache[2]
    while h is not None:
        forms = [f for f in h._forms.values() if f is not None]
        found += [f.levels[0].n for f in forms]
        h = forms[0] if forms else None
    return found


def set_bound(bound: int) -> None:
    multigrid.GRID_FORM_MIN = bound


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
                ms = median_ms(directions, r, repeats, args.rounds, set_bound)
                rows.append({"scene": name, "shape": [n] * 3, "ms": ms, "grid_levels": on_grid})
                print(name, n, {b: round(v, 2) for b, v in ms.items()}, on_grid, flush=True)
    finally:
        multigrid.GRID_FORM_MIN = chosen
    record = {"bounds": list(BOUNDS), "chosen": chosen, "rows": rows, "environment": environment()}
    header = [
        "# Coarse levels that are grids: on the grid kernels from what size",
        "",
        "`python benchmarks/grid_form_min.py --out benchmarks/grid-form-min` — ms per "
        f"application of the shipped 3D solver (median of {args.rounds} alternating rounds' "
        f"medians), one process; `GRID_FORM_MIN` is {chosen:,} unknowns. In brackets: the "
        "coarse levels (unknowns) that ran on their grid.",
    ]

    def cell(row: dict, b: int) -> str:
        levels = ", ".join(f"{v:,}" for v in row["grid_levels"][b]) or "–"
        return f"{row['ms'][b]:.2f} ({levels})"

    label = f"bound {BOUNDS[-1]:,} / chosen"
    write_results(Path(args.out), record, header, BOUNDS, BOUNDS[-1], label, cell)


if __name__ == "__main__":
    main()
