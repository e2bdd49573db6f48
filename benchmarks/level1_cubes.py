"""Level 1's diagonal and links with and without the whole-cube shortcut, on the same inputs.

`deepcd.kernels.grid_aggregate` sums a component that is a whole 2×2×2 cube from its corner
(`_cube_at`, `_cube_sums`, `_cube_links`). This times its two passes, `_component_sums` and
`_coarse_links`, against the same two kernels from an earlier commit (`--before`: the module's
source at that revision, loaded from `git show`), on the arguments a real hierarchy build
passes them (captured, copied), interleaved, and checks that both give the same arrays, bit
for bit. One process; medians of `--rounds`.

    python benchmarks/level1_cubes.py --before 9a2db45 --case smoke-obstacles:128 \
        --case smoke-obstacles:256 --case maze:128 --case porous:128 --out benchmarks/level1-cubes
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import deepcd.kernels.grid_aggregate as ga
from deepcd import threads
from deepcd.bench.report import write_benchmark
from deepcd.nn.direction import NetworkDirection
from deepcd.nn.weights import default_solver, load_solver
from deepcd.problems import scene

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("_component_sums", "_coarse_links")


def module_at(rev: str):
    """deepcd/kernels/grid_aggregate.py as it was at `rev`, imported under another name."""
    src = subprocess.run(
        ["git", "show", f"{rev}:deepcd/kernels/grid_aggregate.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"grid_aggregate_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def captured_arguments(name: str, n: int) -> dict:
    """The two kernels' arguments in a hierarchy build of scene `name` at n³ (copies, taken
    at the call: `keep_components` renumbers agg in place afterwards)."""
    cap, real = {}, {k: getattr(ga, k) for k in KERNELS}

    def spy(key):
        def call(*args):
            cap[key] = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)
            return real[key](*args)

        return call

    try:
        for k in KERNELS:
            setattr(ga, k, spy(k))
        net, _ = load_solver(default_solver(3))
        NetworkDirection(net, scene(name, (n, n, n), seed=0)).prepare()
    finally:
        for k in KERNELS:
            setattr(ga, k, real[k])
    return cap


def run(fn, args):
    """One call; the coarse row starts (argument 8 of `_coarse_links`) are copied first, as
    `_drop_unfilled` may rewrite them."""
    args = list(args)
    if len(args) > 10:
        args[8] = args[8].copy()
    return fn(*args)


def markdown(rows: list[dict], command: str, before: str, rounds: int) -> str:
    lines = [
        f"`{command}` — medians of {rounds} interleaved rounds, one process; every output "
        f"array equal to {before}'s, bit for bit.",
        "",
        "| scene | grid | `_component_sums` before → now | `_coarse_links` before → now |",
        "|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            f"{r[k]['before_s'] * 1e3:.1f} → {r[k]['now_s'] * 1e3:.1f} ms "
            f"({r[k]['before_s'] / r[k]['now_s']:.2f}×)"
            for k in KERNELS
        ]
        grid = "×".join(map(str, r["shape"]))
        lines.append(f"| {r['scene']} | {grid} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="the revision to compare against")
    ap.add_argument("--case", action="append", required=True, help="scene:n (a 3D n³ grid)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", default="bench-out/level1-cubes")
    args = ap.parse_args()
    threads.ensure()
    old = module_at(args.before)
    rows = []
    for case in args.case:
        name, n = case.split(":")
        cap = captured_arguments(name, int(n))
        row = {"scene": name, "shape": [int(n)] * 3}
        for k in KERNELS:
            a, b = run(getattr(old, k), cap[k]), run(getattr(ga, k), cap[k])
            pairs = zip(a, b, strict=True)
            if not all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in pairs):
                raise SystemExit(f"{k} differs from {args.before}'s on {case}")
            before, now = [], []
            for _ in range(args.rounds):
                t = time.perf_counter()
                run(getattr(old, k), cap[k])
                before.append(time.perf_counter() - t)
                t = time.perf_counter()
                run(getattr(ga, k), cap[k])
                now.append(time.perf_counter() - t)
            row[k] = {"before_s": statistics.median(before), "now_s": statistics.median(now)}
        rows.append(row)
        print(case, {k: row[k] for k in KERNELS}, flush=True)
    command = "python " + " ".join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]])
    write_benchmark(
        Path(args.out), command, rows, markdown(rows, command, args.before, args.rounds)
    )


if __name__ == "__main__":
    main()
