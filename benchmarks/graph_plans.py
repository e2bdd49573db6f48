"""The graph levels' V-cycle from a plan resolved once (`VCycleNet.graph_plans`,
`deepcd.nn.graph_cycle`) against the same kernels looked up on every call: one application of
the shipped solver each way.

Run:  .venv/bin/python benchmarks/graph_plans.py [--out benchmarks/graph-plans] [--rounds 5]
Writes OUT/results.json and OUT/results.md. Run it alone on a quiet machine.

Per scene and size, one network and one hierarchy; the two settings alternate round by round
in one process (`bound_sweep.median_ms`), each cell the median over the rounds of each round's
median. The two compute the same V-cycle, bit for bit (tests/test_nn_vcycle.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bound_sweep import median_ms, write_results

from deepcd import threads
from deepcd.bench.runner import environment, warm_up
from deepcd.nn.direction import NetworkDirection
from deepcd.nn.weights import default_solver, load_solver
from deepcd.problems import scene

CASES = [(3, n, s) for n in (64, 128) for s in ("smoke-obstacles", "splash", "maze")]
CASES += [(2, 512, s) for s in ("splash", "maze")]
SETTINGS = (0, 1)  # graph_plans off, on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/graph-plans")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    threads.ensure()
    warm_up(["dcdm"], 3)
    warm_up(["dcdm"], 2)
    rows = []
    for dim, n, name in CASES:
        net, _ = load_solver(default_solver(dim))
        problem = scene(name, (n,) * dim, seed=0)
        direction = NetworkDirection(net, problem)
        direction.prepare()
        r = np.random.default_rng(0).standard_normal(problem.n)

        def set_plans(on: int, net=net) -> None:
            net.graph_plans = bool(on)

        repeats = 15 if n**dim <= 64**3 else 7
        ms = median_ms(dict.fromkeys(SETTINGS, direction), r, repeats, args.rounds, set_plans)
        rows.append({"scene": name, "shape": [n] * dim, "ms": ms})
        print(name, n, dim, {k: round(v, 2) for k, v in ms.items()}, flush=True)
    record = {"bounds": list(SETTINGS), "chosen": 1, "rows": rows, "environment": environment()}
    header = [
        "# Graph levels from a plan against looked up on every call",
        "",
        "`python benchmarks/graph_plans.py --out benchmarks/graph-plans` — ms per application "
        f"of the shipped solver (median of {args.rounds} alternating rounds' medians), one "
        "process; bound 0: `graph_plans = False`, bound 1: the plan (the default).",
    ]
    cell = lambda row, b: f"{row['ms'][b]:.2f}"  # noqa: E731
    write_results(Path(args.out), record, header, SETTINGS, 0, "looked up / plan", cell)


if __name__ == "__main__":
    main()
