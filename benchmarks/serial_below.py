"""Serial or parallel: one graph-level kernel call by level size (sets `SERIAL_BELOW`).

Run:  .venv/bin/python benchmarks/serial_below.py [--repeats 200] [--out benchmarks/serial-below]
Writes OUT/results.json and OUT/results.md. Run it alone on a quiet machine.

The levels are real ones: level 0 of maze scenes (3D, corridors 1-3 cells) as graphs, in
float32 and the fixed-width layout the CPU V-cycle uses (`deepcd.kernels.ell`). Per level it
times one Clenshaw step and one per-axis transfer smoothing, each as the serial copy
(`deepcd.kernels.aggregate.small`) and as the parallel kernel, alternating, median of the
repeats. A parallel call pays a thread-team launch, so the serial copy wins on small levels;
where the parallel one starts to win is the bound.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numba
import numpy as np

from deepcd.bench.runner import environment
from deepcd.kernels import aggregate as K
from deepcd.kernels import ell
from deepcd.nn.stencil import GridLaplacian
from deepcd.problems import scene

SIDES = (24, 32, 40, 48, 56, 64, 80, 96)


def level_zero(side: int):
    """Level 0 of a maze side³ as float32 kernel arguments: (n, Clenshaw step args, axis
    smoothing args)."""
    import torch  # after deepcd: its import sets the OpenMP wait policy the solves run with

    problem = scene("maze", (side,) * 3, seed=0)
    lap = GridLaplacian.from_problem(problem, dtype=torch.float64)
    diag = lap.diag.numpy()[0, 0]
    links = [w.numpy()[0, 0] for w in lap.links()]
    _, _, d, indptr, indices, weight, axis = K.grid_graph(diag, *links)
    n = len(d)
    s = (1.0 / np.sqrt(d)).astype(np.float32)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    nweight = (s[rows] * weight * s[indices]).astype(np.float32)
    laid_out = ell.layout(indptr, indices)
    nw, rest_nw = ell.weights(indptr, nweight, laid_out)
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    e = np.ones(n, dtype=np.float32)
    idx, spill, rest_ptr, rest_idx = laid_out
    step = (x, x, x, e, idx, nw, spill, rest_ptr, rest_idx, rest_nw, 0.5, 2.0, True, s, True)
    axis_args = ell.axis_layout(indptr, indices, nweight, axis, 3)[0]
    return n, step, (x, *axis_args, 0.25)


def time_call(kernel, args, out, repeats: int) -> list[float]:
    kernel(*args, out)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        kernel(*args, out)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/serial-below")
    args = ap.parse_args()
    rows = []
    for side in SIDES:
        n, step, smooth = level_zero(side)
        out = np.empty(n, dtype=np.float32)
        row = {"scene": "maze", "side": side, "unknowns": n}
        for name, kernel, kargs in (
            ("clenshaw_step", ell.clenshaw_step, step),
            ("axis_smooth", ell.axis_smooth, smooth),
        ):
            serial, parallel = [], []
            for _ in range(4):  # alternating blocks: drift on a noisy machine hits both
                serial += time_call(K.small(kernel, 0), kargs, out, args.repeats // 4)
                parallel += time_call(kernel, kargs, out, args.repeats // 4)
            row[f"{name}_serial_us"] = statistics.median(serial) * 1e6
            row[f"{name}_parallel_us"] = statistics.median(parallel) * 1e6
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = "python benchmarks/serial_below.py " + f"--repeats {args.repeats} --out {args.out}"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"command": command, "environment": environment(), "rows": rows}
    data["environment"]["numba_threading_layer"] = numba.threading_layer()
    (out_dir / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [
        "# Serial or parallel graph kernels by level size",
        "",
        f"`{command}` — median µs per call, one process, serial and parallel alternating; "
        f"`SERIAL_BELOW` is {K.SERIAL_BELOW:,} unknowns.",
        "",
        "| level 0 of | unknowns | Clenshaw serial | parallel | parallel / serial | "
        "axis smoothing serial | parallel | parallel / serial |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c_s, c_p = r["clenshaw_step_serial_us"], r["clenshaw_step_parallel_us"]
        a_s, a_p = r["axis_smooth_serial_us"], r["axis_smooth_parallel_us"]
        lines.append(
            f"| maze {r['side']}³ | {r['unknowns']:,} | {c_s:.0f} | {c_p:.0f} | {c_p / c_s:.2f} "
            f"| {a_s:.0f} | {a_p:.0f} | {a_p / a_s:.2f} |"
        )
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
