"""Serial or parallel grid kernels on small grid levels: one V-cycle by grid size (sets
`deepcd.nn.fastpath.GRID_SERIAL_BELOW`).

Run:  .venv/bin/python benchmarks/grid_serial_below.py [--out benchmarks/grid-serial-below]
Writes OUT/results.json and OUT/results.md. Run it alone on a quiet machine.

Per scene and size, one application of the shipped solver (`NetworkDirection.into`: scatter,
V-cycle, gather) with each candidate bound — grid levels with fewer cells than the bound run
the grid kernels' serial copies (the wavefront smoother on one chunk, the transfer smoothing,
the residual, the grid transfers), the others the parallel kernels; a bound of 1 is "always
parallel". The bounds alternate round by round in one process; each cell of the table is the
median over the rounds of each round's median.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bound_sweep import median_ms, write_results

import deepcd.nn.fastpath as fastpath
from deepcd import threads
from deepcd.bench.runner import environment
from deepcd.nn.direction import NetworkDirection
from deepcd.nn.weights import load_solver
from deepcd.problems import scene

CASES = [(3, n) for n in (16, 32, 64, 128)] + [(2, n) for n in (128, 256, 512, 1024)]
SCENES = ("smoke-obstacles", "splash")
BOUNDS = (1, 1 << 15, 1 << 17, 1 << 19)


def set_bound(bound: int) -> None:
    fastpath.GRID_SERIAL_BELOW = bound


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/grid-serial-below")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    threads.ensure()
    chosen = fastpath.GRID_SERIAL_BELOW
    rows = []
    try:
        for dim, n in CASES:
            net, _ = load_solver(f"vcycle-{dim}d")
            for name in SCENES:
                problem = scene(name, (n,) * dim, seed=0)
                direction = NetworkDirection(net, problem)
                direction.prepare()
                r = np.random.default_rng(0).standard_normal(problem.n)
                repeats = 15 if n**dim <= 64**3 else 5
                directions = dict.fromkeys(BOUNDS, direction)
                ms = median_ms(directions, r, repeats, args.rounds, set_bound)
                rows.append({"scene": name, "shape": [n] * dim, "ms": ms})
                print(name, f"{n}^{dim}", {b: round(v, 2) for b, v in ms.items()}, flush=True)
    finally:
        fastpath.GRID_SERIAL_BELOW = chosen
    record = {"bounds": list(BOUNDS), "chosen": chosen, "rows": rows, "environment": environment()}
    header = [
        "# Serial or parallel grid kernels on small grid levels",
        "",
        "`python benchmarks/grid_serial_below.py --out benchmarks/grid-serial-below` — ms per "
        f"application of the shipped solver (median of {args.rounds} alternating rounds' "
        f"medians), one process; `GRID_SERIAL_BELOW` is {chosen:,} cells; bound 1: always "
        "parallel.",
    ]
    write_results(
        Path(args.out),
        record,
        header,
        BOUNDS,
        1,
        "always parallel / chosen",
        lambda row, b: f"{row['ms'][b]:.2f}",
    )


if __name__ == "__main__":
    main()
