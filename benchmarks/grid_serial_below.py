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
import json
import statistics
import time
from pathlib import Path

import numpy as np

import deepcd.nn.fastpath as fastpath
from deepcd import threads
from deepcd.bench.runner import environment
from deepcd.nn.direction import NetworkDirection
from deepcd.nn.weights import load_solver
from deepcd.problems import scene

CASES = [(3, n) for n in (16, 32, 64, 128)] + [(2, n) for n in (128, 256, 512, 1024)]
SCENES = ("smoke-obstacles", "splash")
BOUNDS = (1, 1 << 15, 1 << 17, 1 << 19)


def time_bounds(direction, r: np.ndarray, repeats: int, rounds: int) -> dict[int, float]:
    """Median seconds of one application per bound (rounds alternate the bounds)."""
    out = np.empty_like(r)
    per: dict[int, list[float]] = {b: [] for b in BOUNDS}
    for _ in range(rounds):
        for bound in BOUNDS:
            fastpath.GRID_SERIAL_BELOW = bound
            for _ in range(3):
                direction.into(r, 1.0, out)
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                direction.into(r, 1.0, out)
                ts.append(time.perf_counter() - t)
            per[bound].append(statistics.median(ts))
    return {b: statistics.median(v) for b, v in per.items()}


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
                seconds = time_bounds(direction, r, repeats, args.rounds)
                ms = {b: s * 1e3 for b, s in seconds.items()}
                rows.append({"scene": name, "shape": [n] * dim, "ms": ms})
                print(name, f"{n}^{dim}", {b: round(v, 2) for b, v in ms.items()}, flush=True)
    finally:
        fastpath.GRID_SERIAL_BELOW = chosen
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"bounds": list(BOUNDS), "chosen": chosen, "rows": rows, "environment": environment()}
    (out / "results.json").write_text(json.dumps(record, indent=1, default=str))
    head = " | ".join(f"bound {b:,}" for b in BOUNDS)
    lines = [
        "# Serial or parallel grid kernels on small grid levels",
        "",
        "`python benchmarks/grid_serial_below.py --out benchmarks/grid-serial-below` — ms per "
        f"application of the shipped solver (median of {args.rounds} alternating rounds' "
        f"medians), one process; `GRID_SERIAL_BELOW` is {chosen:,} cells; bound 1: always "
        "parallel.",
        "",
        f"| scene | grid | {head} | always parallel / chosen |",
        "|---|---|" + "---|" * len(BOUNDS) + "---|",
    ]
    for row in rows:
        ms = row["ms"]
        cells = " | ".join(f"{ms[b]:.2f}" for b in BOUNDS)
        grid = "×".join(map(str, row["shape"]))
        lines.append(f"| {row['scene']} | {grid} | {cells} | {ms[1] / ms[chosen]:.2f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
