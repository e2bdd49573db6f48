"""Scaling of deepcd's PETSc preconditioner at 1–2 processes, and a projection to 1024³.

    .venv/bin/python benchmarks/petsc_scaling.py --out benchmarks/petsc

Strong scaling: smoke-obstacles at 64³ and 128³ on 1 and 2 processes. Weak scaling: a
64×128×128 block per process (64×128×128 on 1, 128³ on 2). Each run: CG + the deepcd PC
(`petsc-deepcd`, one thread per rank) — iterations, setup and solve seconds, peak memory of
every rank, and per level the unknowns, the ghost values a rank receives per exchange and the
gathered coarse level. Also summarizes the peer benchmarks in OUT/np1 and OUT/np2 (written by
`deepcd bench`, see benchmarks/petsc.sh) into OUT/results.md. Writes OUT/scaling.json and
OUT/scaling.md (tables and the projection, whose model and assumptions the file states).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from deepcd.bench.peers import run_peer
from deepcd.problems import scene

EXCHANGES_PER_LEVEL = 18  # per V-cycle and distributed level: 2×5 Clenshaw steps, 2 residuals,
# 3 + 3 prolongation-smoothing passes (vcycle-3d: degree 6, smooth 1); checked against the
# measured level-0 count below

# projection assumptions (stated in the report)
ALPHA_S = 2e-6  # latency per message
BETA_BPS = 1.0e9  # bandwidth per rank (a 100 Gb/s node link shared by ~12 ranks)
TARGET = 1024
BLOCK = 128  # cells per axis of a rank's block: (1024/128)³ = 512 ranks


def measure(scene_name: str, shape, nprocs: int) -> dict:
    problem = scene(scene_name, shape, seed=0)
    t = time.perf_counter()
    res = run_peer("petsc-deepcd", problem, pc="deepcd", rtol=1e-6, maxiter=200, nprocs=nprocs)
    s = res.settings
    lv = s["deepcd_levels"]
    apps = lv.get("applications") or res.iterations + 1
    return {
        "scene": scene_name,
        "shape": list(shape),
        "np": nprocs,
        "unknowns": problem.n,
        "iterations": res.iterations,
        "final_relres": res.final_relres,
        "setup_s": res.setup_s,
        "solve_s": res.solve_s,
        "total_s": res.total_s,
        "s_per_iteration": res.solve_s / max(res.iterations, 1),
        "peak_rss_mb_per_rank": s["peak_rss_mb_per_rank"],
        "cells_per_rank": s["cells_per_rank"],
        "levels": lv["levels"],
        "gathered_level": lv["gathered_level"],
        "gathered_unknowns": lv["gathered_unknowns"],
        "tail_unknowns": lv["tail_unknowns"],
        "level0_exchanges_per_vcycle": (lv["halo_calls"] - 3) / apps,
        "wall_s": time.perf_counter() - t,
    }


def projection(base: dict) -> dict:
    """1024³ on 512 ranks of 128³ cells from the measured one-rank 128³ run `base`."""
    ranks = (TARGET // BLOCK) ** 3
    levels, n, unknowns = [], BLOCK, TARGET**3
    while unknowns > 4096:  # the distributed levels: each rank's block halves per level
        face = n * n
        halo_bytes = 6 * face * 8
        t = EXCHANGES_PER_LEVEL * (6 * ALPHA_S + halo_bytes / BETA_BPS)
        levels.append(
            dict(
                block=n, halo_bytes_per_exchange=halo_bytes, halo_s_per_vcycle=t, level=len(levels)
            )
        )
        n, unknowns = max(n // 2, 1), unknowns // 8
    gather_bytes = unknowns * 8
    gather_s = math.log2(ranks) * ALPHA_S + gather_bytes / BETA_BPS
    cg_s = 2 * math.log2(ranks) * ALPHA_S + 6 * ALPHA_S + 6 * BLOCK * BLOCK * 8 / BETA_BPS
    t_iter = base["s_per_iteration"]
    comm_iter = sum(lv["halo_s_per_vcycle"] for lv in levels) + gather_s + cg_s
    its = base["iterations"] + 1  # a margin of one iteration over the measured count
    return dict(
        grid=[TARGET] * 3,
        ranks=ranks,
        block=[BLOCK] * 3,
        distributed_levels=levels,
        gathered_unknowns=unknowns,
        gather_bytes=gather_bytes,
        gather_s_per_vcycle=gather_s,
        cg_comm_s_per_iteration=cg_s,
        compute_s_per_iteration=t_iter,
        comm_s_per_iteration=comm_iter,
        efficiency=t_iter / (t_iter + comm_iter),
        iterations=its,
        setup_s=base["setup_s"],
        solve_s=its * (t_iter + comm_iter),
        peak_rss_mb_per_rank=max(base["peak_rss_mb_per_rank"]),
        assumptions=dict(
            alpha_s=ALPHA_S,
            beta_bytes_per_s=BETA_BPS,
            exchanges_per_level_per_vcycle=EXCHANGES_PER_LEVEL,
            messages_per_exchange=6,
            iterations="measured at 128³ plus one",
            compute="the measured one-rank 128³ seconds per iteration (CG + V-cycle), as every "
            "rank holds a 128³ block; the gathered tail is the same size (≤ 4096 unknowns)",
        ),
    )


def peers_table(out: Path, prefix: str = "np") -> str:
    rows = []
    for np_ in (1, 2):
        path = out / f"{prefix}{np_}" / "results.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        for r in data["runs"]:
            rows.append((r["scene"], np_ if r["solver"].startswith("petsc") else "-", r))
    if not rows:
        return ""
    lines = [
        "| scene | np | solver | iters | setup s | solve s | total s | true relres "
        "| peak MiB/rank |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sc, np_, r in sorted(rows, key=lambda t: (t[0], str(t[1]), t[2]["solver"])):
        lines.append(
            f"| {sc} | {np_} | {r['solver']} | {r['iterations']} | {r['setup_s']:.2f} | "
            f"{r['solve_s']:.2f} | {r['total_s']:.2f} | {r['final_relres']:.1e} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def pivot_table(out: Path, prefix: str = "np") -> str:
    """scene × np: iterations / total seconds of each peer (and deepcd's own, in-process)."""
    cells: dict = {}
    for np_ in (1, 2):
        path = out / f"{prefix}{np_}" / "results.json"
        if not path.exists():
            continue
        for r in json.loads(path.read_text())["runs"]:
            cells[(f"{r['scene']} {'×'.join(map(str, r['shape']))}", np_, r["solver"])] = r
    if not cells:
        return ""
    peers = ("petsc-deepcd", "petsc-hypre", "petsc-gamg")
    lines = [
        "| scene | np | petsc-deepcd | petsc-hypre | petsc-gamg | deepcd vs best peer "
        "| deepcd dcdm (in-process) | mgpcg (in-process) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(r):
        return "–" if r is None else f"{r['iterations']} / {r['total_s']:.2f} s"

    for sc in sorted({k[0] for k in cells}):
        for np_ in (1, 2):
            row = [cells.get((sc, np_, name)) for name in peers]
            if not any(row):
                continue
            others = [r["total_s"] for r in row[1:] if r is not None]
            ratio = f"{min(others) / row[0]['total_s']:.2f}×" if row[0] and others else "–"
            own = [cells.get((sc, 1, n)) if np_ == 1 else None for n in ("dcdm", "mgpcg")]
            lines.append(
                f"| {sc} | {np_} | "
                + " | ".join(fmt(r) for r in row)
                + f" | {ratio} | "
                + " | ".join(fmt(r) for r in own)
                + " |"
            )
    return "\n".join(lines)


def markdown(runs: list[dict], proj: dict, command: str) -> str:
    out = ["# deepcd's PETSc preconditioner: scaling at 1–2 processes, projection to 1024³", ""]
    out += ["Made by:", "", "```", command, "```", ""]
    out += [
        "| kind | scene | shape | np | cells/rank | iters | setup s | solve s | s/iter | "
        "peak MiB/rank | gathered at (unknowns) | relres |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        out.append(
            f"| {r['kind']} | {r['scene']} | {'×'.join(map(str, r['shape']))} | {r['np']} | "
            f"{max(r['cells_per_rank']):,} | {r['iterations']} | {r['setup_s']:.2f} | "
            f"{r['solve_s']:.2f} | {r['s_per_iteration']:.3f} | "
            f"{max(r['peak_rss_mb_per_rank']):.0f} | level {r['gathered_level']} "
            f"({r['gathered_unknowns']:,}) | {r['final_relres']:.1e} |"
        )
    out += [
        "",
        "Per level (2 processes, the largest strong-scaling grid): unknowns, the values a "
        "rank receives per exchange",
        "",
    ]
    two = [r for r in runs if r["np"] == 2 and r["kind"] == "strong"][-1:]
    if two:
        out += ["| level | unknowns | most per rank | ghost values/rank | halo bytes/exchange |"]
        out += ["|---|---|---|---|---|"]
        for lv in two[0]["levels"]:
            out.append(
                f"| {lv['level']} | {lv['unknowns']:,} | {lv['own_max']:,} | "
                f"{lv['ghosts_max']:,} | {8 * lv['ghosts_max']:,} |"
            )
        out.append(
            f"\nMeasured level-0 halo exchanges per V-cycle: "
            f"{two[0]['level0_exchanges_per_vcycle']:.1f} (model: {EXCHANGES_PER_LEVEL})."
        )
    p = proj
    out += [
        "",
        f"## Projection: {p['grid'][0]}³ on {p['ranks']} ranks of {p['block'][0]}³ cells",
        "",
        "Model: each rank keeps the measured one-process 128³ cost per CG iteration "
        f"({p['compute_s_per_iteration']:.3f} s, one thread); per V-cycle every distributed "
        f"level does {EXCHANGES_PER_LEVEL} halo exchanges of 6 face messages (latency "
        f"{ALPHA_S * 1e6:.0f} µs, {BETA_BPS / 1e9:.0f} GB/s per rank), the gathered level "
        "(all ranks hold it) costs one allgather, CG two allreduces and one matvec halo per "
        "iteration. Iterations: the measured count plus one (the V-cycle's count is flat in the "
        "grid size: 6 at 32³–64³, 7 at 128³ here).",
        "",
        "| level | block/rank | halo bytes/exchange | halo s/V-cycle |",
        "|---|---|---|---|",
    ]
    for lv in p["distributed_levels"]:
        out.append(
            f"| {lv['level']} | {lv['block']}³ | {lv['halo_bytes_per_exchange']:,} | "
            f"{lv['halo_s_per_vcycle'] * 1e3:.2f} ms |"
        )
    out += [
        "",
        f"- gathered coarse level: {p['gathered_unknowns']:,} unknowns, "
        f"{p['gather_bytes']:,} bytes per allgather, {p['gather_s_per_vcycle'] * 1e6:.0f} µs",
        f"- communication per iteration {p['comm_s_per_iteration'] * 1e3:.1f} ms against "
        f"{p['compute_s_per_iteration'] * 1e3:.0f} ms of compute: parallel efficiency "
        f"{100 * p['efficiency']:.0f}%",
        f"- projected: {p['iterations']} iterations, setup {p['setup_s']:.1f} s, solve "
        f"{p['solve_s']:.1f} s, {p['peak_rss_mb_per_rank']:.0f} MiB per rank "
        f"({p['ranks'] * p['peak_rss_mb_per_rank'] / 1024:.0f} GiB in all)",
        "",
        "Not modelled: network contention beyond the per-rank bandwidth, the ranks on one node "
        "sharing memory bandwidth (the measured 1→2 process speedup on this 2-core machine "
        "shows that cost), and the redundant tail solve being the same on every rank.",
    ]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/petsc")
    ap.add_argument("--scene", default="smoke-obstacles")
    ap.add_argument("--quick", action="store_true", help="small grids (a check of the script)")
    ap.add_argument(
        "--summary-only", action="store_true", help="only rewrite OUT/results.md (no runs)"
    )
    args = ap.parse_args()
    f = 4 if args.quick else 1
    out = Path(args.out)
    if args.summary_only:
        write_summary(out)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for kind, shape, nprocs in (
        ("strong", (64, 64, 64), 1),
        ("strong", (64, 64, 64), 2),
        ("strong", (128, 128, 128), 1),
        ("strong", (128, 128, 128), 2),
        ("weak", (64, 128, 128), 1),
        ("weak", (128, 128, 128), 2),
    ):
        shape = tuple(n // f for n in shape)
        rec = measure(args.scene, shape, nprocs)
        rec["kind"] = kind
        runs.append(rec)
        print(
            f"{kind} {shape} np={nprocs}: {rec['iterations']} it, setup {rec['setup_s']:.2f} s, "
            f"solve {rec['solve_s']:.2f} s, {max(rec['peak_rss_mb_per_rank']):.0f} MiB/rank",
            flush=True,
        )
    base = next(r for r in runs if r["np"] == 1 and r["shape"] == [128 // f] * 3)
    proj = projection(base)
    command = f"benchmarks/petsc_scaling.py --out {args.out} --scene {args.scene}"
    command += " --quick" if args.quick else ""
    (out / "scaling.json").write_text(json.dumps({"runs": runs, "projection": proj}, indent=1))
    (out / "scaling.md").write_text(markdown(runs, proj, command))
    write_summary(out)
    print(f"wrote {out / 'scaling.json'}, {out / 'scaling.md'}")
    return 0


def write_summary(out: Path) -> None:
    """OUT/results.md from the peer benchmarks in OUT/np1, np2, two-phase-np1, two-phase-np2."""
    table = peers_table(out)
    if table:
        (out / "results.md").write_text(
            "# PETSc peers at 128³, 1 and 2 processes\n\nMade by `./benchmarks/petsc.sh` "
            "(the `deepcd bench` commands are in np1/results.md and np2/results.md). "
            "Iterations / total seconds (setup + solve; PETSc's matrix assembly, the same for "
            "all three peers, is in each run's settings).\n\n"
            + pivot_table(out)
            + "\n\nA variable-coefficient scene (two-phase, density ratio 1000; "
            "two-phase-np1/, two-phase-np2/):\n\n"
            + pivot_table(out, "two-phase-np")
            + "\n\nEvery run:\n\n"
            + table
            + "\n\n"
            + peers_table(out, "two-phase-np")
            + "\n"
        )


if __name__ == "__main__":
    raise SystemExit(main())
