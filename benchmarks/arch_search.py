"""Choose the V-cycle network's shape by iterations × cost: DCDM solves with each candidate.

Run:  .venv/bin/python benchmarks/arch_search.py --out benchmarks/arch-search
Each candidate is the `vcycle` architecture at its initialization (training changes its
iteration counts by 0–2, see the solvers' cards), on held-out scenes at 64³ and 128³, rtol
1e-6, 2 threads: iterations, the median wall seconds of 3 whole solves, and multiply-adds per
unknown of one application. The shipped solvers use the candidate with the lowest total time.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepcd.hardware import cpu_name
from deepcd.iterative.dcdm import dcdm
from deepcd.nn import build_network, flops_per_unknown
from deepcd.nn.direction import NetworkDirection
from deepcd.problems import scene

CANDIDATES = [
    {"smooth": 1, "degree": 2},
    {"smooth": 1, "degree": 3},
    {"smooth": 1, "degree": 4},
    {"smooth": 1, "degree": 6},
    {"smooth": 2, "degree": 2},
    {"smooth": 2, "degree": 3},
    {"smooth": 2, "degree": 4},
]
SCENES = (("smoke-obstacles", 11), ("bunny", 7))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="solves per case; the median counts")
    ap.add_argument("--out", default="benchmarks/arch-search")
    args = ap.parse_args()
    shapes = args.shape or [64, 128]
    problems = {(n, s, sz): scene(n, (sz,) * 3, seed=s) for n, s in SCENES for sz in shapes}
    warm = scene("bunny", (16, 16, 16), seed=0)  # JIT and first-call costs, untimed
    dcdm(warm.stencil, warm.b, direction=NetworkDirection(build_network("vcycle", 3), warm))
    rows = []
    for cfg in CANDIDATES:
        net = build_network("vcycle", 3, **cfg).eval()
        row = {"config": cfg, "macs_per_unknown": round(flops_per_unknown(net, (64,) * 3), 1)}
        for (name, _seed, size), p in problems.items():
            times = []
            for _ in range(args.repeats):
                torch.set_num_threads(args.threads)
                direction = NetworkDirection(net, p)
                t = time.perf_counter()
                res = dcdm(p.stencil, p.b, direction=direction, rtol=1e-6)
                times.append(time.perf_counter() - t)
            seconds = float(np.median(times))
            row[f"{name}-{size}"] = {"iterations": res.iterations, "seconds": round(seconds, 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [f"{n}-{sz}" for n, _ in SCENES for sz in shapes]
    for row in rows:
        row["total_seconds"] = round(sum(row[k]["seconds"] for k in keys), 3)
    best = min(rows, key=lambda r: r["total_seconds"])
    command = "python benchmarks/arch_search.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        f"`{command}` — {cpu_name()}, {args.threads} threads, rtol 1e-6; "
        "iterations / median seconds of the whole DCDM solve",
        "",
        "| smooth | degree | MACs/unknown | " + " | ".join(keys) + " | total s |",
        "|---|---|---|" + "---|" * (len(keys) + 1),
    ]
    for r in rows:
        cells = [f"{r[k]['iterations']} / {r[k]['seconds']:.2f}" for k in keys]
        mark = " **(chosen)**" if r is best else ""
        lines.append(
            f"| {r['config']['smooth']} | {r['config']['degree']} | {r['macs_per_unknown']} | "
            + " | ".join(cells)
            + f" | {r['total_seconds']:.2f}{mark} |"
        )
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"command": command, "cpu": cpu_name(), "rows": rows}, indent=1) + "\n"
    )
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
