"""Iterations to rtol 1e-6 of DCDM with a trained solver against CG and the safeguard's PCG.

Run:  .venv/bin/python benchmarks/dcdm_eval.py SOLVER --shape 64 --shape 128 --hard-shape 64
      [--coef-shape 64] [--out DIR] [--card]
Held-out scenes (seeds the training recipes do not use): bunny 7, smoke-obstacles 11, pool 13
at every --shape; the hard families (baffles 17, maze 19, porous 23, splash 29, pockets 31)
at every --hard-shape (CG and MIC(0) need 10^4+ iterations on mazes: capped by --maxiter);
the variable-coefficient families (two-phase at ratios 10, 1000, 10^4: seeds 37, 41, 43;
ghost-splash 47; cut-cells 53) at every --coef-shape.
Columns: plain CG; MIC(0)-PCG; DCDM whose safeguard direction is the residual itself (alone,
that direction is CG); DCDM whose safeguard direction is MIC(0) (alone: MIC(0)-PCG). So each
DCDM column has its "classical direction used alone" to its left. --card writes the solver's
card with the table under "evaluation" to OUT/card.json (default bench-out/dcdm-eval/SOLVER/);
--card --update-shipped writes it into the shipped solver's own card.json instead (the weights
and their hash are never touched). The
last column runs the same architecture at its initialization, so training's own effect shows.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from deepcd.hardware import cpu_name
from deepcd.iterative.dcdm import dcdm
from deepcd.iterative.krylov import cg
from deepcd.iterative.preconditioners import make_preconditioner
from deepcd.nn.direction import NetworkDirection
from deepcd.nn.networks import build_network
from deepcd.nn.weights import CARD, load_solver, resolve_solver
from deepcd.problems import scene

HELD_OUT = (("bunny", 7), ("smoke-obstacles", 11), ("pool", 13))
HARD = (("baffles", 17), ("maze", 19), ("porous", 23), ("splash", 29), ("pockets", 31))
COEF = (
    ("two-phase", 37, {"ratio": 10.0}),
    ("two-phase", 41, {"ratio": 1000.0}),
    ("two-phase", 43, {"ratio": 10000.0}),
    ("ghost-splash", 47, {}),
    ("cut-cells", 53, {}),
)
KEYS = ("cg", "mic0-pcg", "dcdm", "dcdm+mic0", "dcdm-untrained")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("solver")
    ap.add_argument("--shape", type=int, action="append", default=[])
    ap.add_argument("--hard-shape", type=int, action="append", default=[])
    ap.add_argument("--coef-shape", type=int, action="append", default=[])
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--maxiter", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--card",
        action="store_true",
        help="write the solver's card with the table under 'evaluation' to "
        "OUT/card.json (default OUT: bench-out/dcdm-eval/SOLVER; the shipped card is untouched)",
    )
    ap.add_argument(
        "--update-shipped",
        action="store_true",
        help="with --card: write the table into the solver's own card.json (a tracked file; "
        "benchmarks/run_cpu_suite.sh does this)",
    )
    return ap


def card_target(args: argparse.Namespace) -> Path:
    """Where --card writes: a copy under OUT, or the solver's own card with --update-shipped."""
    if args.update_shipped:
        return resolve_solver(args.solver) / CARD
    out = Path(args.out) if args.out else Path("bench-out") / "dcdm-eval" / Path(args.solver).name
    return out / CARD


def main() -> None:
    args = parser().parse_args()
    if args.update_shipped and not args.card:
        raise SystemExit("--update-shipped needs --card")
    model, card = load_solver(args.solver)
    torch.manual_seed(0)
    untrained = build_network(card["arch"], **card["config"]).eval()  # the same net at init
    rows = []
    cases = [(size, (*c, {})) for size in args.shape or [64] for c in HELD_OUT]
    cases += [(size, (*c, {})) for size in args.hard_shape for c in HARD]
    cases += [(size, c) for size in args.coef_shape for c in COEF]
    for size, (name, seed, params) in cases:
        p = scene(name, (size,) * model.dim, seed=seed, **params)
        torch.set_num_threads(args.threads)
        op = p.stencil
        mic0 = make_preconditioner("mic0", op)
        row = {"scene": name, "seed": seed, "shape": size, "unknowns": p.n, "params": params}
        for key in KEYS:
            torch.set_num_threads(args.threads)  # numba resets it
            t = time.perf_counter()
            common = dict(rtol=args.rtol, maxiter=args.maxiter)
            if key == "cg":
                res = cg(op, p.b, **common)
            elif key == "mic0-pcg":
                res = cg(op, p.b, M=mic0, **common)
            else:
                M = mic0 if key == "dcdm+mic0" else None
                net = untrained if key == "dcdm-untrained" else model
                res = dcdm(op, p.b, direction=NetworkDirection(net, p), M=M, **common)
            row[key] = {
                "iterations": res.iterations,
                "converged": res.converged,
                "seconds": time.perf_counter() - t,
                "final_relres": res.final_relres,
            }
            if key.startswith("dcdm"):
                row[key]["safeguard_steps"] = res.settings["safeguard_steps"]
        rows.append(row)
        print(
            json.dumps({k: (row[k]["iterations"] if k in KEYS else v) for k, v in row.items()}),
            flush=True,
        )
    command = "python benchmarks/dcdm_eval.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        f"`{command}` (rtol {args.rtol}; iterations, seconds in brackets)",
        "",
        "| scene | seed | shape | CG | MIC(0)-PCG | DCDM (no safeguard M) | DCDM + MIC(0) "
        "| DCDM, same net untrained |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            f"{r[k]['iterations']}{'' if r[k]['converged'] else ' (no)'} ({r[k]['seconds']:.1f} s)"
            for k in KEYS
        ]
        grid = "×".join([str(r["shape"])] * model.dim)
        name = r["scene"] + "".join(f" ({k} {v:g})" for k, v in r["params"].items())
        lines.append(f"| {name} | {r['seed']} | {grid} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "dcdm_eval.json").write_text(
            json.dumps({"command": command, "solver": card.get("arch"), "rows": rows}, indent=1)
        )
        (out / "dcdm_eval.md").write_text("\n".join(lines) + "\n")
    if args.card:
        full = json.loads((resolve_solver(args.solver) / CARD).read_text())
        path = card_target(args)
        path.parent.mkdir(parents=True, exist_ok=True)
        full["evaluation"] = {
            "command": command,
            "rtol": args.rtol,
            "threads": args.threads,
            "cpu": cpu_name(),
            "held_out": [f"{n}:{s}" for n, s in HELD_OUT + HARD]
            + [f"{n}:{s}" + "".join(f":{k}={v:g}" for k, v in q.items()) for n, s, q in COEF],
            "table_markdown": lines,
            "rows": rows,
        }
        path.write_text(json.dumps(full, indent=1) + "\n")
        print(f"wrote the table into {path}")


if __name__ == "__main__":
    main()
