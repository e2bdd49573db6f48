"""CG per-iteration cost at 128³ against scipy and the machine's memory-bandwidth floor.

Run:  .venv/bin/python benchmarks/cg_kernels.py [--n 128] [--repeats 3]
Writes bench-out/cg_kernels/results.{json,md} (--out benchmarks/cg_kernels: the committed ones).

The floor: a fused CG iteration on the stencil form moves, per unknown, 93 bytes (matvec+dot:
read p 8, index 4, diagonal 1, write Ap 8; x += αp, r -= αAp, r·r: 48; p = r + βp: 24),
counted like STREAM (no write-allocate traffic). Floor = 93 B × n / (STREAM triad bandwidth).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numba
import numpy as np
import scipy.sparse.linalg as spla

from deepcd.bench.runner import environment
from deepcd.iterative.krylov import cg
from deepcd.kernels.vector import stream_triad
from deepcd.operators import CSROperator
from deepcd.problems import scene

BYTES_PER_UNKNOWN = 8 + 4 + 1 + 8 + 48 + 24


def triad_bandwidth(n: int = 1 << 26, repeats: int = 10) -> float:
    """STREAM triad a = b + s·c on float64 arrays of n elements; bytes/s (24 B/element)."""
    a, b, c = np.zeros(n), np.ones(n), np.ones(n)
    stream_triad(a, b, c, 2.0)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        stream_triad(a, b, c, 2.0)
        times.append(time.perf_counter() - t)
    return 24 * n / statistics.median(times)


def time_solver(run, repeats: int) -> tuple[int, float]:
    """(iterations, median seconds per iteration) over `repeats` full solves."""
    per_iter, iters = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        iters = run()
        per_iter.append((time.perf_counter() - t) / iters)
    return iters, statistics.median(per_iter)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--out",
        default=str(Path("bench-out") / "cg_kernels"),
        help="results folder (default bench-out/cg_kernels; the committed one is "
        "benchmarks/cg_kernels: pass --out benchmarks/cg_kernels to refresh it)",
    )
    return ap


def main() -> None:
    args = parser().parse_args()

    problem = scene("poisson-box", (args.n,) * 3, seed=0)
    A, b, rtol = problem.A, problem.b, 1e-6
    stencil, csr = problem.stencil, CSROperator(A)
    cg(stencil, b, maxiter=2)  # compile
    cg(csr, b, maxiter=2)

    def scipy_cg() -> int:
        count = [0]
        spla.cg(A, b, rtol=rtol, callback=lambda xk: count.__setitem__(0, count[0] + 1))
        return count[0]

    bandwidth = triad_bandwidth()
    floor_s = BYTES_PER_UNKNOWN * problem.n / bandwidth
    rows = {}
    for name, run in [
        ("deepcd cg (stencil, numba)", lambda: cg(stencil, b, rtol=rtol).iterations),
        ("deepcd cg (CSR, numba)", lambda: cg(csr, b, rtol=rtol).iterations),
        ("scipy.sparse.linalg.cg", scipy_cg),
    ]:
        iters, s = time_solver(run, args.repeats)
        rows[name] = {"iterations": iters, "ms_per_iteration": 1e3 * s}
        print(f"{name:>28}: {iters} iterations, {1e3 * s:.2f} ms/iteration")
    scipy_ms = rows["scipy.sparse.linalg.cg"]["ms_per_iteration"]
    for row in rows.values():
        row["speedup_vs_scipy"] = scipy_ms / row["ms_per_iteration"]
        row["ratio_to_floor"] = row["ms_per_iteration"] / (1e3 * floor_s)
    result = {
        "command": f"python benchmarks/cg_kernels.py --n {args.n} --repeats {args.repeats}",
        "problem": f"poisson-box {args.n}³ (Dirichlet box, white-noise rhs), rtol {rtol}",
        "unknowns": problem.n,
        "triad_GBps": bandwidth / 1e9,
        "bytes_per_unknown": BYTES_PER_UNKNOWN,
        "floor_ms_per_iteration": 1e3 * floor_s,
        "numba_threads": numba.get_num_threads(),
        "environment": environment(),
        "solvers": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# CG per iteration",
        "",
        f"`{result['command']}` — {result['problem']}, {problem.n:,} unknowns, "
        f"{result['numba_threads']} numba threads.",
        "",
        f"Measured STREAM triad bandwidth: **{bandwidth / 1e9:.1f} GB/s**; the floor for a fused "
        f"CG iteration ({BYTES_PER_UNKNOWN} B/unknown) is **{1e3 * floor_s:.2f} ms**.",
        "",
        "| solver | iterations | ms/iteration | × faster than scipy | × the floor |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['iterations']} | {row['ms_per_iteration']:.2f} | "
            f"{row['speedup_vs_scipy']:.2f} | {row['ratio_to_floor']:.2f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
