"""Where a DCDM solve spends its time on the CPU, per V-cycle component, against the bandwidth
floor of the fine level's passes.

Run:  .venv/bin/python benchmarks/cpu_profile.py [--shape 64 --shape 128 --shape 256]
      [--scene smoke-obstacles] [--seed 0] [--repeats 5] [--out benchmarks/cpu-profile]
Writes OUT/results.json and OUT/results.md. Run it alone on a quiet machine. The benchmark
runner's warm-up (`deepcd.bench.runner.warm_up`) runs first, as before every `deepcd bench`.

Each shipped-solver V-cycle is timed by wrapping the network's level operations (smoother,
residual, restriction and prolongation, on the grid level and on the coarse levels — "coarse"
counts every level below level 0, those run on the grid kernels (`grid_form`) too; on the
grid, the residual before the restriction and the correction and residual after the
prolongation are fused into them, `VCycleNet.fused_cycle`, and counted there; the graph
levels below the grid levels run as one plan, `deepcd.nn.graph_cycle`, timed as a whole); the
solve's own loop (matvec, A-orthogonalization, line search: everything that is not the
network) is the solve time minus the network's. Then the scene is solved again with its
hierarchy built anew, heap and kernels warm — a simulation's frame whose flags changed — and
its total reported (the first solve of a size also pays fresh pages, ~7 µs each on the
project's VM). The floor of a
fine-level component is the bytes its passes must move (float32, counted like STREAM, no
write-allocate) over the STREAM triad bandwidth measured in the same run
(`benchmarks/cg_kernels.py`'s triad) — one pass per Clenshaw step, so the wavefront smoother,
which reads the stencil once for all the steps of a smoothing, can run below it:
  smoother  (degree m, Clenshaw):  12 + 28 + 32·(m − 3) + 36 B per cell and application
  residual (smooth > 1 only):      28 B per cell
  residual + restriction (fused):  r, x, diag, d faces, d transfer faces, the coarse map:
                                   4·(4 + 2d) B per cell
  prolongation + correction + residual (fused): the same, and x and the residual written:
                                   4·(4 + 2d) + 8 B per cell
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
from cg_kernels import triad_bandwidth  # the same STREAM triad (benchmarks/ is on sys.path)

from deepcd.bench.runner import environment, warm_up
from deepcd.nn.direction import NetworkDirection
from deepcd.nn.graph_cycle import GraphCycle
from deepcd.nn.multigrid import StencilLevel
from deepcd.nn.networks import VCycleNet
from deepcd.nn.weights import default_solver, load_solver
from deepcd.problems import scene

_FINE = (
    "smoother (fine)",
    "residual (fine)",
    "residual + restriction (fine)",
    "prolongation + correction + residual (fine)",
)


def _fine(net, level) -> bool:
    """Whether `level` is level 0 on the grid (not a coarse level, nor a coarse level run on
    its grid: `deepcd.nn.multigrid.grid_form`)."""
    return isinstance(level, StencilLevel) and level is net._cache[2].grid


def instrument(times: dict) -> None:
    """Wrap VCycleNet's level operations to add their wall time to `times` by component."""

    def wrap(name: str, label):
        fn = getattr(VCycleNet, name)

        def timed(self, *args, **kwargs):
            t = time.perf_counter()
            out = fn(self, *args, **kwargs)
            times[label(self, *args)] += time.perf_counter() - t
            return out

        setattr(VCycleNet, name, timed)

    def by_level(kind):
        return lambda net, lv, *a: f"{kind} (fine)" if _fine(net, lv) else f"{kind} (coarse)"

    def by_offset(kind):
        return lambda net, h, *a: f"{kind} (fine)" if h.offset == 0 else f"{kind} (coarse)"

    wrap("_smoother", by_level("smoother"))
    wrap("_residual", by_level("residual"))
    wrap("_restrict_grid", by_offset("restriction"))
    wrap("_prolong_grid", by_offset("prolongation"))
    wrap("_restrict_fused", by_offset("residual + restriction"))
    wrap("_prolong_fused", by_offset("prolongation + correction + residual"))
    wrap("_restrict", lambda *a: "restriction (coarse)")
    wrap("_prolong", lambda *a: "prolongation (coarse)")
    # below the grid levels the graph levels run as one plan (`deepcd.nn.graph_cycle`)
    call = GraphCycle.__call__

    def planned(self, r):
        t = time.perf_counter()
        out = call(self, r)
        times["graph levels (one plan: smoothing, transfers, coarsest solve)"] += (
            time.perf_counter() - t
        )
        return out

    GraphCycle.__call__ = planned


def fine_bytes(degree: int, smooth: int, dim: int) -> dict:
    """Bytes per cell of one V-cycle's fine-level passes, by component (see the docstring)."""
    per_smooth = 12 + 28 + 32 * max(degree - 3, 0) + 36 if degree >= 3 else 12 + 36
    transfer = 4 * (4 + 2 * dim)
    return {
        "smoother (fine)": 2 * smooth * per_smooth,
        "residual (fine)": 2 * (smooth - 1) * 28,
        "residual + restriction (fine)": transfer,
        "prolongation + correction + residual (fine)": transfer + 8,
    }


def grid_levels(net) -> list[int]:
    """The levels of the network's cached hierarchy that run on the grid kernels: level 0
    and those in grid form (`VCycleNet._grid_form`: a stencil on their blocks, with at most a
    few links off it)."""
    h = net._cache[2]
    return [0] + [k for k in range(1, len(h.levels)) if net._grid_form(h, k) is not None]


def off_grid_links(net) -> dict:
    """Level 1's links that are no face of its block grid (a component spanning two blocks
    makes them; `grid_form` then refuses the level): how many, and at how many unknowns."""
    host = net._cache[2].levels[1].host
    if "coords" not in host:
        return {"links": 0, "unknowns": 0}
    indptr, coords = host["indptr"], host["coords"].astype(np.int64)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    off = np.abs(coords[host["indices"]] - coords[rows]).sum(axis=1) != 1
    return {"links": int(off.sum()), "unknowns": len(np.unique(rows[off]))}


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def profile(
    name: str, n: int, dim: int, repeats: int, times: dict, bandwidth: float, seed: int = 0
) -> dict:
    import deepcd

    problem = scene(name, (n,) * dim, seed=seed)
    net, card = load_solver(default_solver(dim))
    direction = NetworkDirection(net, problem)
    f, t = minor_faults(), time.perf_counter()
    direction.prepare()
    setup_s, setup_faults = time.perf_counter() - t, minor_faults() - f
    r = np.random.default_rng(0).standard_normal(problem.n)
    f, t = minor_faults(), time.perf_counter()
    direction(r)
    first_s, first_faults = time.perf_counter() - t, minor_faults() - f
    times.clear()
    cycle = []
    for _ in range(repeats):
        t = time.perf_counter()
        direction(r)
        cycle.append(time.perf_counter() - t)
    per = {k: v / repeats for k, v in times.items()}
    cycle_s = statistics.median(cycle)
    per["other (scatter/gather, conversions, Python)"] = cycle_s - sum(per.values())
    deepcd.solve_result(problem, rtol=1e-6, model=net)  # loads the loop's kernels: not timed
    res = deepcd.solve_result(problem, rtol=1e-6, model=net)
    loop_s = res.solve_s - res.settings["direction_s"]
    cells = n**dim
    floor = {
        k: b * cells / bandwidth
        for k, b in fine_bytes(card["config"]["degree"], card["config"]["smooth"], dim).items()
    }
    levels = {
        "levels": len(net._cache[2].levels),
        "grid_levels": grid_levels(net),
        "level1_off_grid": off_grid_links(net),
    }
    # the scene again with its hierarchy built anew, as a simulation's frame whose flags have
    # changed: heap and kernels warm (this solve's arrays are released first, as the previous
    # frame's would be), so its total is a steady frame's, not the first solve's of this size
    solved = {
        "dcdm_iterations": res.iterations,
        "dcdm_solve_s": res.solve_s,
        "dcdm_network_s": res.settings["direction_s"],
        "dcdm_loop_s": loop_s,
        "loop_per_iteration_s": loop_s / max(res.iterations, 1),
    }
    del direction, res
    net._cache = None
    gc.collect()
    f = minor_faults()
    again = deepcd.solve_result(problem, rtol=1e-6, model=net)
    again_faults = minor_faults() - f
    return {
        "scene": name,
        "seed": seed,
        "shape": [n] * dim,
        **levels,
        "setup_faults": setup_faults,
        "first_application_faults": first_faults,
        "unknowns": problem.n,
        "hierarchy_s": setup_s,
        "first_application_s": first_s,
        "vcycle_s": cycle_s,
        "components_s": per,
        "floor_s": floor,
        **solved,
        "rebuilt": {
            "iterations": again.iterations,
            "setup_s": again.setup_s,
            "solve_s": again.solve_s,
            "total_s": again.total_s,
            "minor_faults": again_faults,
        },
    }


def markdown(rows: list[dict], bandwidth: float, command: str) -> str:
    lines = [
        "# CPU profile of a DCDM solve",
        "",
        f"`{command}` — STREAM triad {bandwidth / 1e9:.1f} GB/s in the same run; fine-level "
        "floors from the bytes of benchmarks/cpu_profile.py's docstring.",
        "",
    ]
    for r in rows:
        grid = "×".join(map(str, r["shape"]))
        lines += [
            f"## {r['scene']} {grid} ({r['unknowns']:,} unknowns)",
            "",
            f"seed {r['seed']}; levels on the grid kernels: "
            f"{', '.join(map(str, r['grid_levels']))} of {r['levels']} (the others run on the "
            f"graph kernels); level 1 has {r['level1_off_grid']['links']:,} links that are no "
            f"face of its block grid, at {r['level1_off_grid']['unknowns']:,} unknowns; minor "
            f"page faults: setup {r['setup_faults']:,}, first application "
            f"{r['first_application_faults']:,}.",
            "",
            f"hierarchy (setup) {r['hierarchy_s']:.3f} s; first application "
            f"{r['first_application_s'] * 1e3:.1f} ms; one V-cycle (median) "
            f"{r['vcycle_s'] * 1e3:.1f} ms; DCDM {r['dcdm_iterations']} iterations, solve "
            f"{r['dcdm_solve_s']:.3f} s of which the network {r['dcdm_network_s']:.3f} s and "
            f"the loop (matvec, orthogonalization, updates) {r['dcdm_loop_s']:.3f} s "
            f"({r['loop_per_iteration_s'] * 1e3:.1f} ms per iteration).",
            "",
        ]
        again = r.get("rebuilt")
        if again:
            lines += [
                "The same scene again with its hierarchy built anew (as a frame whose flags "
                "changed; heap and kernels warm, the first solve's arrays released): DCDM "
                f"{again['iterations']} iterations, setup {again['setup_s']:.3f} s + solve "
                f"{again['solve_s']:.3f} s = **{again['total_s']:.3f} s**, minor page faults "
                f"{again['minor_faults']:,}.",
                "",
            ]
        lines += [
            "| component | ms per V-cycle | floor ms | × floor |",
            "|---|---|---|---|",
        ]
        for k, v in sorted(r["components_s"].items(), key=lambda kv: -kv[1]):
            f = r["floor_s"].get(k)
            ratio = f"{v / f:.1f}" if f else "—"
            lines.append(
                f"| {k} | {v * 1e3:.1f} | {f * 1e3:.2f} | {ratio} |"
                if f
                else f"| {k} | {v * 1e3:.1f} | — | — |"
            )
        fine_floor = sum(r["floor_s"].values())
        lines += ["", f"Fine-level floor in all: {fine_floor * 1e3:.1f} ms.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, action="append", default=[])
    ap.add_argument("--dim", type=int, default=3)
    ap.add_argument("--scene", default="smoke-obstacles")
    ap.add_argument("--seed", type=int, default=0, help="the scene's seed")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="bench-out/cpu-profile")
    args = ap.parse_args()
    from deepcd import threads

    threads.ensure()  # what a solve applies first (thread counts, deepcd.memory's malloc)
    # the benchmark runner's warm-up: numba loads the setup's and the V-cycle's kernels from
    # its disk cache before the first profiled size, whose setup would otherwise include that
    warm_up(["dcdm"], args.dim)
    times: dict = collections.defaultdict(float)
    instrument(times)
    bandwidth = triad_bandwidth()
    rows = []
    for n in args.shape or [64, 128]:
        rows.append(profile(args.scene, n, args.dim, args.repeats, times, bandwidth, args.seed))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "components_s"}), flush=True)
    import sys

    command = "python benchmarks/cpu_profile.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"command": command, "bandwidth_Bps": bandwidth, "environment": environment()}
    (out / "results.json").write_text(json.dumps({**data, "rows": rows}, indent=1) + "\n")
    text = markdown(rows, bandwidth, command)
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
