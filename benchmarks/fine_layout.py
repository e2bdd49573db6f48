"""Level 0 of the V-cycle on the grid against on its graph of unknowns, per scene: the CPU
V-cycle's time both ways, and the fluid share of the grid (`VCycleNet.fine_on_graph` picks
the graph below GRAPH_FINE_BELOW).

Run:  .venv/bin/python benchmarks/fine_layout.py [--repeats 9] [--out benchmarks/fine-layout]
Writes OUT/results.json and OUT/results.md. Run it alone on a quiet machine. The two layouts
compute the same V-cycle (checked here: their outputs' relative difference is printed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from deepcd.bench.report import write_benchmark
from deepcd.nn.direction import NetworkDirection
from deepcd.nn.networks.vcycle import GRAPH_FINE_BELOW
from deepcd.nn.weights import default_solver, load_solver
from deepcd.problems import scene

CASES = [  # (scene, n, dim)
    *[(s, n, 3) for n in (64, 128) for s in ("maze", "porous", "splash", "pockets", "baffles")],
    ("smoke-obstacles", 128, 3),
    *[(s, 1024, 2) for s in ("maze", "porous", "splash", "pockets", "baffles")],
    ("smoke-obstacles", 1024, 2),
]


def vcycle_times(name: str, n: int, dim: int, repeats: int) -> dict:
    problem = scene(name, (n,) * dim, seed=0)
    r = np.random.default_rng(0).standard_normal(problem.n)
    row = {"scene": name, "shape": [n] * dim, "unknowns": problem.n}
    row["fluid_share"] = problem.n / n**dim
    out = {}
    for layout in ("grid", "graph"):
        net, _ = load_solver(default_solver(dim))
        net.fine_layout = layout
        direction = NetworkDirection(net, problem)
        t = time.perf_counter()
        direction.prepare()
        row[f"{layout}_setup_s"] = time.perf_counter() - t
        out[layout] = direction(r)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            direction(r)
            times.append(time.perf_counter() - t)
        row[f"{layout}_vcycle_s"] = statistics.median(times)
    diff = np.linalg.norm(out["graph"] - out["grid"]) / np.linalg.norm(out["grid"])
    row["relative_difference"] = float(diff)
    row["auto"] = "graph" if row["fluid_share"] < GRAPH_FINE_BELOW else "grid"
    return row


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# Level 0 on the grid or on its graph (CPU V-cycle)",
        "",
        f"`{command}` — median of the repeats, one process; `auto` is what "
        f"`fine_layout='auto'` picks (the graph below a fluid share of {GRAPH_FINE_BELOW}).",
        "",
        "| scene | grid | fluid share | grid ms | graph ms | graph / grid | auto |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g, q = r["grid_vcycle_s"], r["graph_vcycle_s"]
        lines.append(
            f"| {r['scene']} | {'×'.join(map(str, r['shape']))} | {r['fluid_share']:.2f} | "
            f"{g * 1e3:.1f} | {q * 1e3:.1f} | {q / g:.2f} | {r['auto']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default="bench-out/fine-layout")
    args = ap.parse_args()
    from deepcd import threads

    threads.ensure()
    rows = []
    for name, n, dim in CASES:
        rows.append(vcycle_times(name, n, dim, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    command = "python benchmarks/fine_layout.py " + " ".join(sys.argv[1:])
    write_benchmark(Path(args.out), command, rows, markdown(rows, command))


if __name__ == "__main__":
    main()
