"""The `deepcd` command: bench, generate, solve, info."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

DEFAULT_SCENE = "smoke-obstacles"


def _shapes(args) -> list[tuple[int, ...]]:
    from deepcd.problems import parse_shape

    shapes = [args.shape] if isinstance(args.shape, str) else args.shape
    return [parse_shape(s, args.dim) for s in shapes]


def _params(items: list[str]) -> dict:
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--param takes KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def cmd_bench(args) -> int:
    from deepcd.bench import solver_names
    from deepcd.bench.plots import plot_all
    from deepcd.bench.report import text_table, write_markdown, write_results
    from deepcd.bench.runner import environment, run_benchmark
    from deepcd.problems import scenes

    solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    unknown = [s for s in solvers if s not in solver_names()]
    if unknown:
        raise ValueError(f"unknown solver(s) {unknown}; choose from {', '.join(solver_names())}")
    bad = [s for s in args.scene if s not in scenes()]
    if bad:
        raise ValueError(f"unknown scene(s) {bad}; choose from {', '.join(scenes())}")
    out = Path(args.out)
    command = "deepcd " + " ".join(shlex.quote(a) for a in args.argv)
    runs, problems = run_benchmark(
        args.scene,
        _shapes(args),
        solvers,
        rtol=args.rtol,
        maxiter=args.maxiter,
        seed=args.seed,
        isolate=args.isolate,
        scratch=out / "scratch",
        progress=not args.no_progress,
    )
    meta = {"command": command, "rtol": args.rtol, "environment": environment()}
    write_results(out, runs, problems, meta)
    plots = plot_all(runs, out, args.rtol)
    write_markdown(out, runs, meta, plots)
    print()
    print(text_table(runs))
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'} and {len(plots)} plot(s)")
    return 0 if all(r["converged"] for r in runs) else 1


def cmd_generate_problem(args) -> int:
    from deepcd.problems import save_problem, scene

    shape = _shapes(args)[0]
    t = time.perf_counter()
    problem = scene(args.scene, shape, seed=args.seed, **_params(args.param))
    gen_s = time.perf_counter() - t
    path = save_problem(args.out, problem)
    print(f"{problem!r}\ngenerated in {gen_s:.1f} s, wrote {path}")
    return 0


def cmd_solve(args) -> int:
    import numpy as np

    from deepcd.api import solve_result
    from deepcd.problems import load_problem

    problem = load_problem(args.file)
    print(repr(problem))
    options = _params(args.option)
    result = solve_result(
        problem, method=args.method, rtol=args.rtol, maxiter=args.maxiter, **options
    )
    print(result.summary())
    if args.save:
        np.save(args.save, problem.to_grid(result.x))
        print(f"wrote the pressure grid to {args.save}")
    return 0 if result.converged else 1


def cmd_info(args) -> int:
    import numba

    from deepcd import METHODS, __version__
    from deepcd.bench import solver_names
    from deepcd.problems import scenes

    print(f"deepcd {__version__}")
    print(f"methods:  {', '.join(METHODS)}")
    print(f"bench solvers: {', '.join(solver_names())}")
    print(f"scenes:   {', '.join(scenes())}")
    print(f"numba threads: {numba.get_num_threads()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from deepcd._version import __version__

    parser = argparse.ArgumentParser(
        prog="deepcd", description="Poisson pressure solvers: learned and classical, measured."
    )
    parser.add_argument("--version", action="version", version=f"deepcd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def shape_args(p, many: bool):
        p.add_argument(
            "--shape",
            action="append" if many else "store",
            default=[] if many else "64",
            help="grid size: N (N^dim) or NxM[xK]" + ("; repeatable" if many else ""),
        )
        p.add_argument(
            "--dim", type=int, default=3, choices=(2, 3), help="dimension for a bare N (default 3)"
        )
        p.add_argument("--seed", type=int, default=0)

    b = sub.add_parser("bench", help="run solvers on scenes; write results.json, table, plots")
    b.add_argument(
        "--scene", action="append", default=[], help=f"repeatable (default {DEFAULT_SCENE})"
    )
    shape_args(b, many=True)
    b.add_argument(
        "--solvers",
        default="cg,ic0,mic0,amg-sa,amg-rs,newton-amg",
        help="comma-separated (see `deepcd info`)",
    )
    b.add_argument("--rtol", type=float, default=1e-6)
    b.add_argument("--maxiter", type=int, default=None)
    b.add_argument("--out", default="bench-out")
    b.add_argument(
        "--isolate",
        action="store_true",
        help="run each solver in a fresh process (per-run peak memory)",
    )
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=cmd_bench)

    g = sub.add_parser("generate", help="generate problems (HDF5)")
    gsub = g.add_subparsers(dest="what", required=True)
    gp = gsub.add_parser("problem", help="one scene as an HDF5 problem file")
    gp.add_argument("--scene", default=DEFAULT_SCENE)
    shape_args(gp, many=False)
    gp.add_argument("--param", action="append", default=[], help="scene parameter KEY=VALUE")
    gp.add_argument("--out", required=True, help="output .h5 file")
    gp.set_defaults(func=cmd_generate_problem)

    s = sub.add_parser("solve", help="solve a problem file and report")
    s.add_argument("file")
    s.add_argument("--method", default="cg")
    s.add_argument("--rtol", type=float, default=1e-6)
    s.add_argument("--maxiter", type=int, default=None)
    s.add_argument("--option", action="append", default=[], help="method option KEY=VALUE")
    s.add_argument("--save", help="write the pressure grid to this .npy file")
    s.set_defaults(func=cmd_solve)

    i = sub.add_parser("info", help="version, methods, scenes")
    i.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if getattr(args, "command", None) == "bench":
        args.scene = args.scene or [DEFAULT_SCENE]
        args.shape = args.shape or ["64"]
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"deepcd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepcd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
