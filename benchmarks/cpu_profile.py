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
levels below the grid levels run as one plan, `deepcd.nn.graph_cycle`, timed as a whole), and
the direction's scatter of r into the grid and gather back; the solve's own loop (everything
that is not the network) is the solve time minus the network's, split into its matvec (with
the projection's dots), projection and step (`LOOP_PARTS`, against `LOOP_BYTES`); the setup is
split into the hierarchy's kernels (`SETUP_PARTS`). Then the scene is solved twice more with
its hierarchy built anew each time, kernels warm — a simulation's frames whose flags changed —
and their totals reported: the first of these may still grow the heap (minor page faults),
the second runs on the heap a frame needs (the first solve of a size also pays fresh pages:
what they cost is measured at the end of the run, `fresh_page_cost`). The floor of a
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
import mmap
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


# the setup's parts: (module, functions) whose wall time is summed per label; every one is
# called through its module's global name from Python, so wrapping that name times it
SETUP_PARTS = {
    "level 1 on the grid: components in blocks": (
        "deepcd.kernels.grid_aggregate",
        (
            "_number_grid",
            "_block_components",
            "_number_in_blocks",
            "_best_links",
            "_merge_components",
            "_merged_members",
            "_renumber",
        ),
    ),
    "level 1 on the grid: its diagonal and links": (
        "deepcd.kernels.grid_aggregate",
        ("_component_sums", "keep_components", "_coarse_links"),
    ),
    "coarser levels: aggregation on the graph": ("deepcd.kernels.aggregate", ("aggregate",)),
    "coarser levels: their grid stencils": ("deepcd.kernels.aggregate", ("grid_stencil",)),
    "level 0: the Laplacian's masks": ("deepcd.kernels.masks", ("laplacian_masks",)),
    "normalized stencils": ("deepcd.kernels.normalize", ("normalize_stencil",)),
    "transfers' thread splits": ("deepcd.kernels.cycle", ("plane_splits",)),
}
# the DCDM loop's parts (`deepcd.iterative.dcdm`'s kernels; the matvec is the operator's,
# with the projection's dots taken in its pass, `Operator.matvec_dots`)
LOOP_PARTS = {
    "projection + step (one pass)": ("deepcd.iterative.dcdm", ("project_step",)),
    "projection computed (dots2, subtract2)": (
        "deepcd.iterative.dcdm",
        ("dots2", "subtract2", "dot"),
    ),
    "step alone (step_along, dcdm_step)": ("deepcd.iterative.dcdm", ("step_along", "dcdm_step")),
    "true residual (start, convergence)": ("deepcd.iterative.dcdm", ("residual",)),
}
# bytes per unknown of the loop's vector passes (float64): the projection + step reads w, Aw,
# the two stored directions and their A-products, x, r and b and writes w, Aw, x and r;
# dots2 reads 3 vectors, subtract2 reads 7 and writes 2; a step alone reads 5 and writes 2.
# The matvec (`loop_floors`) reads x, the two stored directions, r and the uint8 diagonal
# and writes out per unknown, and the int32 index per cell.
LOOP_BYTES = {
    "projection + step (one pass)": 13 * 8,
    "projection computed (dots2, subtract2)": 3 * 8 + 9 * 8,
    "step alone (step_along, dcdm_step)": 7 * 8,
}


def loop_floors(unknowns: int, cells: int, bandwidth: float) -> dict:
    """Seconds per iteration the loop's passes take at `bandwidth` (bytes/s)."""
    floors = {k: b * unknowns / bandwidth for k, b in LOOP_BYTES.items()}
    floors[MATVEC] = (41 * unknowns + 4 * cells) / bandwidth
    return floors


MATVEC = "matvec (with the projection's dots)"


def wrap_globals(parts: dict, times: dict) -> None:
    """Wrap each of `parts`' module-level functions to add its wall time to times[label]."""
    import importlib

    for label, (module, names) in parts.items():
        mod = importlib.import_module(module)
        for name in names:
            fn = getattr(mod, name)

            def timed(*args, _fn=fn, _label=label, **kwargs):
                t = time.perf_counter()
                out = _fn(*args, **kwargs)
                times[_label] += time.perf_counter() - t
                return out

            setattr(mod, name, timed)


def wrap_loop(times: dict) -> None:
    """Time the DCDM loop's kernels (`LOOP_PARTS`) and its operator's matvec into `times`;
    the matvec only between `dcdm`'s start and its result (the API's checks before it and
    the result's true residual after it are not the loop's)."""
    from deepcd import operators
    from deepcd.iterative import dcdm

    wrap_globals(LOOP_PARTS, times)
    inside = [False]
    start, finish = dcdm.start_iteration, dcdm.finish_result

    def started(*args, **kwargs):
        inside[0] = True
        return start(*args, **kwargs)

    def finished(*args, **kwargs):
        inside[0] = False
        return finish(*args, **kwargs)

    dcdm.start_iteration, dcdm.finish_result = started, finished
    for op_type in (operators.StencilOperator, operators.WeightedStencilOperator):
        for name in ("matvec", "matvec_dots"):
            fn = op_type.__dict__[name]

            def timed(self, *args, _fn=fn, **kwargs):
                t = time.perf_counter()
                out = _fn(self, *args, **kwargs)
                if inside[0]:
                    times[MATVEC] += time.perf_counter() - t
                return out

            setattr(op_type, name, timed)


def wrap_direction(direction, times: dict) -> None:
    """Time a `NetworkDirection`'s scatter of r into its grid and gather of the direction."""
    for attr, label in (("_scatter", "scatter (r into the grid)"), ("_gather", "gather (checked)")):
        fn = getattr(direction, attr)

        def timed(*args, _fn=fn, _label=label):
            t = time.perf_counter()
            out = _fn(*args)
            times[_label] += time.perf_counter() - t
            return out

        setattr(direction, attr, timed)


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


def fresh_page_cost(mib: int = 256) -> float:
    """Seconds per GiB to first-touch a new anonymous mapping of `mib` MiB (one write per
    4 KiB page): what the page faults of a first application or a grown heap cost here. On
    the project's VM, memory the host has not backed yet cost ~2.7 s per GiB and pages the
    guest had just freed ~0.4 (probe): far more than the kernel's zeroing alone."""
    size = mib << 20
    with mmap.mmap(-1, size) as block:
        view = np.frombuffer(block, dtype=np.uint8)
        t = time.perf_counter()
        view[::4096] = 1  # one write per 4 KiB page
        elapsed = time.perf_counter() - t
        del view
    return elapsed * (1 << 30) / size


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def profile(
    name: str,
    n: int,
    dim: int,
    repeats: int,
    times: dict,
    bandwidth: float,
    seed: int = 0,
    setup_times: dict | None = None,
    loop_times: dict | None = None,
) -> dict:
    """One size's row; setup_times and loop_times are the dicts `wrap_globals` (SETUP_PARTS)
    and `wrap_loop` fill (empty dicts: no breakdowns)."""
    import deepcd

    setup_times = {} if setup_times is None else setup_times
    loop_times = {} if loop_times is None else loop_times
    problem = scene(name, (n,) * dim, seed=seed)
    net, card = load_solver(default_solver(dim))
    direction = NetworkDirection(net, problem)
    wrap_direction(direction, times)
    setup_times.clear()
    f, t = minor_faults(), time.perf_counter()
    direction.prepare()
    setup_s, setup_faults = time.perf_counter() - t, minor_faults() - f
    setup_parts = dict(setup_times)
    setup_parts["other (numpy, torch, Python)"] = setup_s - sum(setup_parts.values())
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
    per["other (conversions, Python)"] = cycle_s - sum(per.values())
    deepcd.solve_result(problem, rtol=1e-6, model=net)  # loads the loop's kernels: not timed
    loop_times.clear()
    res = deepcd.solve_result(problem, rtol=1e-6, model=net)
    loop_s = res.solve_s - res.settings["direction_s"]
    its = max(res.iterations, 1)
    loop_parts = {k: v / its for k, v in loop_times.items()}
    if loop_parts:
        loop_parts["other (Python, history, the safeguard's bookkeeping)"] = loop_s / its - sum(
            loop_parts.values()
        )
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
        "setup_components_s": setup_parts,
        "loop_components_s": loop_parts,
        "loop_floor_s": loop_floors(problem.n, n**dim, bandwidth),
        "dcdm_iterations": res.iterations,
        "dcdm_solve_s": res.solve_s,
        "dcdm_network_s": res.settings["direction_s"],
        "dcdm_loop_s": loop_s,
        "loop_per_iteration_s": loop_s / max(res.iterations, 1),
    }
    del direction, res
    frames = []  # the first frame after the first solve, then the next one
    for _ in range(2):
        net._cache = None
        gc.collect()
        f = minor_faults()
        again = deepcd.solve_result(problem, rtol=1e-6, model=net)
        frames.append(
            {
                "iterations": again.iterations,
                "setup_s": again.setup_s,
                "solve_s": again.solve_s,
                "total_s": again.total_s,
                "minor_faults": minor_faults() - f,
            }
        )
        del again
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
        "rebuilt": frames[0],
        "rebuilt_again": frames[1],
    }


def markdown(rows: list[dict], bandwidth: float, command: str, fresh: list | None = None) -> str:
    lines = [
        "# CPU profile of a DCDM solve",
        "",
        f"`{command}` — STREAM triad {bandwidth / 1e9:.1f} GB/s in the same run; fine-level "
        "floors from the bytes of benchmarks/cpu_profile.py's docstring.",
        "",
    ]
    if fresh:
        lines += [
            "Fresh memory — a first write to each 4 KiB page of a new 256 MiB mapping, at the "
            f"end of the run — cost {fresh[0]:.2f} s per GiB, and {fresh[1]:.2f} s per GiB "
            "mapped again right after: the price of the minor page faults counted below (a "
            "virtual machine backs its memory lazily; pages the guest has just freed come "
            "back cheaper).",
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
                "changed; kernels warm, the first solve's arrays released): DCDM "
                f"{again['iterations']} iterations, setup {again['setup_s']:.3f} s + solve "
                f"{again['solve_s']:.3f} s = **{again['total_s']:.3f} s**, minor page faults "
                f"{again['minor_faults']:,}.",
                "",
            ]
        steady = r.get("rebuilt_again")
        if steady:
            lines += [
                "And the next such frame (the heap grown to what a frame needs): "
                f"{steady['iterations']} iterations, setup {steady['setup_s']:.3f} s + solve "
                f"{steady['solve_s']:.3f} s = **{steady['total_s']:.3f} s**, minor page faults "
                f"{steady['minor_faults']:,}.",
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
        loop = r.get("loop_components_s")
        if loop:
            lines += [
                "The loop, per iteration (the same solve; floors at the triad's bandwidth):",
                "",
                "| loop component | ms per iteration | floor ms | × floor |",
                "|---|---|---|---|",
            ]
            for k, v in sorted(loop.items(), key=lambda kv: -kv[1]):
                f = r["loop_floor_s"].get(k)
                lines.append(
                    f"| {k} | {v * 1e3:.2f} | {f * 1e3:.2f} | {v / f:.1f} |"
                    if f
                    else f"| {k} | {v * 1e3:.2f} | — | — |"
                )
            lines.append("")
        setup = r.get("setup_components_s")
        if setup:
            lines += [
                f"The setup ({r['hierarchy_s']:.3f} s above), by part:",
                "",
                "| setup component | ms |",
                "|---|---|",
            ]
            for k, v in sorted(setup.items(), key=lambda kv: -kv[1]):
                lines.append(f"| {k} | {v * 1e3:.1f} |")
            lines.append("")
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
    setup_times: dict = collections.defaultdict(float)
    loop_times: dict = collections.defaultdict(float)
    instrument(times)
    wrap_globals(SETUP_PARTS, setup_times)
    wrap_loop(loop_times)
    bandwidth = triad_bandwidth()
    rows = []
    for n in args.shape or [64, 128]:
        parts = {"setup_times": setup_times, "loop_times": loop_times}
        row = profile(args.scene, n, args.dim, args.repeats, times, bandwidth, args.seed, **parts)
        rows.append(row)
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "components_s"}), flush=True)
    import sys

    command = "python benchmarks/cpu_profile.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fresh = [fresh_page_cost(), fresh_page_cost()]  # the second maps the pages just freed
    data = {
        "command": command,
        "bandwidth_Bps": bandwidth,
        "fresh_page_s_per_gib": fresh,  # two mappings, one after the other
        "environment": environment(),
    }
    (out / "results.json").write_text(json.dumps({**data, "rows": rows}, indent=1) + "\n")
    text = markdown(rows, bandwidth, command, fresh)
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
