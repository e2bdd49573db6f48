"""The `deepcd` command: bench, generate, solve, train, info."""

from __future__ import annotations

import argparse
import json
import os
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
    load_before = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
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
        params=_params(args.param),
        nprocs=args.np,
        repeats=args.repeats,
    )
    meta = {
        "command": command,
        "rtol": args.rtol,
        "repeats": args.repeats,
        "environment": {"loadavg_before": load_before, **environment()},
    }
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


def cmd_generate_dataset(args) -> int:
    from deepcd.nn.dataset import PoissonDataset, generate_dataset, load_recipe

    recipe = load_recipe(args.recipe)
    out = Path(args.out or recipe.out or "")
    if not str(out) or out == Path("."):
        raise ValueError(f"recipe {args.recipe} names no `out` file: pass --out")
    print(
        f"dataset {recipe.name!r}: {len(recipe.matrices)} matrices "
        f"({len(recipe.split('val'))} held out for validation), "
        f"{recipe.lanczos['steps']} Lanczos steps each -> {out}",
        file=sys.stderr,
    )
    t = time.perf_counter()
    path = generate_dataset(recipe, out, resume=not args.no_resume, progress=not args.no_progress)
    with PoissonDataset(path) as data:
        train = sum(m.samples for m in data.matrices.values() if m.split == "train")
        val = len(data) - train
    size = path.stat().st_size / 2**20
    print(
        f"wrote {path} ({size:.1f} MiB): {train} train / {val} val samples "
        f"in {time.perf_counter() - t:.1f} s"
    )
    return 0


def cmd_solve(args) -> int:
    import numpy as np

    from deepcd.api import solve_result
    from deepcd.problems import load_problem

    problem = load_problem(args.file)
    print(repr(problem))
    options = _params(args.option)
    if args.method == "dcdm":
        options.setdefault("device", args.device)
        if args.model:
            options.setdefault("model", args.model)
    elif args.model:
        raise ValueError(f"--model is for --method dcdm, not {args.method!r}")
    result = solve_result(
        problem, method=args.method, rtol=args.rtol, maxiter=args.maxiter, **options
    )
    print(result.summary())
    if args.method == "dcdm":
        st = result.settings
        print(
            f"dcdm: model {st['model']} on {st['device']} (asked: {st['device_requested']}); "
            f"{st['network_steps']} network steps, {st['safeguard_steps']} safeguard steps"
        )
    if args.save:
        np.save(args.save, problem.to_grid(result.x))
        print(f"wrote the pressure grid to {args.save}")
    return 0 if result.converged else 1


def _json_params(items: list[str], flag: str) -> dict:
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE (VALUE in JSON), got {item!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value  # a bare word: activation=relu
    return params


def cmd_train(args) -> int:
    from deepcd.nn.train import TrainConfig, train

    val_scenes = None
    if args.val_scene:
        val_scenes = [] if args.val_scene == ["none"] else list(args.val_scene)
    config = TrainConfig(
        dataset=args.dataset,
        arch=args.arch,
        out=args.out,
        config=_json_params(args.config, "--config"),
        use_flags=args.use_flags,
        device=args.device,
        batch_size=args.batch_size,
        steps=args.steps,
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        schedule=args.schedule,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        bf16=args.bf16,
        tf32=args.tf32,
        seed=args.seed,
        threads=args.threads,
        eval_every=args.eval_every,
        val_scenes=val_scenes,
        val_samples=args.val_samples,
        val_maxiter=args.val_maxiter,
        safeguard=args.safeguard,
        loss=args.loss,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        stop_at=args.stop_at,
        progress=not args.no_progress,
        command="deepcd " + " ".join(shlex.quote(a) for a in args.argv),
    )
    result = train(config)
    if result.model is None:  # a rank other than 0 of a distributed run
        return 0
    state = "finished" if result.finished else "stopped"
    print(
        f"{state} at step {result.steps}/{result.total_steps} in {result.wall_s:.1f} s "
        f"({result.samples_per_s or 0.0:.2f} samples/s)"
        + (f"; train loss {result.train_loss:.4g}" if result.train_loss is not None else "")
        + (f", val loss {result.val_loss:.4g}" if result.val_loss is not None else "")
    )
    if result.best:
        rows = result.best.get("scenes", [])
        its = ", ".join(
            f"{r['scene']}:{'x'.join(map(str, r['shape']))} DCDM {r['dcdm_iterations']} "
            f"(CG {r['cg_iterations']})"
            for r in rows
        )
        print(f"best model: step {result.best['step']}" + (f" — {its}" if its else ""))
    if result.best_dir:
        print(f"wrote {result.best_dir}" + (f" and {result.last_dir}" if result.last_dir else ""))
    print(f"log: {result.out / 'log.csv'}, {result.out / 'log.json'}")
    return 0


def cmd_simulate(args) -> int:
    from deepcd.cfd.record import run_simulation
    from deepcd.cfd.scenes import make_simulation

    (shape,) = _shapes(args)
    options = _params(args.option)
    if args.method == "dcdm":
        options.setdefault("device", args.device)
    sim = make_simulation(
        args.scene,
        shape,
        seed=args.seed,
        dt=args.dt,
        method=args.method,
        compare=args.compare,
        rtol=args.rtol,
        params=_params(args.param),
        **options,
    )
    command = "deepcd " + " ".join(shlex.quote(a) for a in args.argv)
    summary = run_simulation(
        sim,
        args.steps,
        args.out,
        frame_every=args.frame_every,
        method=args.method,
        compare=args.compare,
        command=command,
        progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}/: frames/, smoke.gif, steps.csv, solver.png, summary.json")
    return 0 if summary["all_converged"] else 1


def cmd_info(args) -> int:
    import numba

    from deepcd import METHODS, __version__
    from deepcd.bench import solver_names
    from deepcd.nn.weights import read_card, shipped_solvers
    from deepcd.problems import scenes

    print(f"deepcd {__version__}")
    print(f"methods:  {', '.join(METHODS)}")
    print(f"bench solvers: {', '.join(solver_names())}")
    print(f"scenes:   {', '.join(scenes())}")
    for directory in shipped_solvers():
        card = read_card(directory)
        print(f"solver:   {directory.name} ({card['arch']}, {card['parameters']} parameters)")
    from deepcd import threads

    st = threads.settings()
    print(
        f"threads:  {numba.get_num_threads()} numba ({st['threads_source']}; "
        f"{st['cores_available']} cores available; set ${threads.ENV} to change)"
    )
    print(
        f"waiting:  {st['wait']} (OMP_WAIT_POLICY={st['omp_wait_policy'] or 'unset'}, "
        f"GOMP_SPINCOUNT={st['gomp_spincount'] or 'unset'}; ${threads.WAIT_ENV}=passive where "
        "other jobs share the cores)"
    )
    from deepcd import memory

    asked = memory.requested()
    print(
        f"malloc:   {asked['malloc']} at the first solve (deepcd.memory; ${memory.ENV}=system "
        "to opt out)"
    )
    print(
        f"numpy huge pages: {asked['numpy_hugepage']} at the first solve (${memory.THP_ENV}=numpy "
        "keeps numpy's madvise)"
    )
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
        "--param",
        action="append",
        default=[],
        help="scene parameter KEY=VALUE given to every scene (e.g. ratio=1000); repeatable",
    )
    b.add_argument(
        "--solvers",
        default="dcdm,cg,ic0,mic0,amg-sa,amg-rs,newton-amg",
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
    b.add_argument(
        "--np",
        type=int,
        default=1,
        help="MPI processes of the PETSc peers petsc-hypre, petsc-gamg, petsc-mg, petsc-deepcd "
        "(run under mpiexec; needs ./scripts/bootstrap.sh --petsc)",
    )
    b.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of every solver on each problem, round by round, each a fresh one; the "
        "tables show the run with the median total time (default 1)",
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
    gd = gsub.add_parser("dataset", help="DCDM training data from a recipe (datasets/*.toml)")
    gd.add_argument("--recipe", required=True, help="recipe file, e.g. datasets/smoke-64.toml")
    gd.add_argument("--out", help="output .h5 file (default: the recipe's `out`)")
    gd.add_argument(
        "--no-resume",
        action="store_true",
        help="start over instead of continuing OUT.partial from an interrupted run",
    )
    gd.add_argument("--no-progress", action="store_true")
    gd.set_defaults(func=cmd_generate_dataset)

    s = sub.add_parser("solve", help="solve a problem file and report")
    s.add_argument("file")
    s.add_argument("--method", default="dcdm", help="see `deepcd info` (default dcdm)")
    s.add_argument("--model", help="dcdm: a shipped solver's name or a solver folder")
    s.add_argument("--device", default="auto", help="dcdm: auto, cpu or cuda")
    s.add_argument("--rtol", type=float, default=1e-6)
    s.add_argument("--maxiter", type=int, default=None)
    s.add_argument("--option", action="append", default=[], help="method option KEY=VALUE")
    s.add_argument("--save", help="write the pressure grid to this .npy file")
    s.set_defaults(func=cmd_solve)

    t = sub.add_parser(
        "train",
        help="train a DCDM direction network on a dataset",
        description="Train a DCDM network; select the model by DCDM iterations on held-out "
        "scenes; write DIR/best, DIR/last, DIR/log.csv, DIR/log.json and DIR/checkpoint/.",
    )
    t.add_argument(
        "--dataset", required=True, metavar="FILE", help="HDF5 dataset (deepcd generate dataset)"
    )
    t.add_argument(
        "--arch",
        required=True,
        metavar="NAME",
        help="network architecture (paper-64, multilevel, ...)",
    )
    t.add_argument("--out", required=True, metavar="DIR", help="run folder")
    t.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="network setting, VALUE in JSON; repeatable",
    )
    t.add_argument("--use-flags", action="store_true", help="feed the cell flags to the network")
    t.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    t.add_argument("--batch-size", type=int, default=4, help="global batch (default 4)")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000)")
    length.add_argument("--epochs", type=float, default=None, help="passes over the train split")
    t.add_argument(
        "--lr", type=float, default=None, help="learning rate (adam/diffgrad 1e-4, lion 3e-5)"
    )
    t.add_argument("--optimizer", default="adam", choices=("adam", "lion", "diffgrad"))
    t.add_argument("--schedule", default="constant", choices=("constant", "linear", "cosine"))
    t.add_argument("--warmup", type=int, default=0, help="linear warmup steps")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--bf16", action="store_true", help="bf16 autocast for the network (GPU)")
    t.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions (GPU)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None, help="torch threads on CPU")
    t.add_argument("--eval-every", type=int, default=500, help="validate every N steps")
    t.add_argument(
        "--val-scene",
        action="append",
        default=[],
        metavar="NAME:SHAPE:SEED",
        help="validation scene, e.g. bunny:32:1001; repeatable; 'none' for none",
    )
    t.add_argument("--val-samples", type=int, default=256, help="val-split samples per eval")
    t.add_argument("--val-maxiter", type=int, default=2000, help="DCDM iteration cap in eval")
    t.add_argument("--safeguard", default="none", choices=("none", "jacobi", "mic0"))
    t.add_argument(
        "--loss",
        default="dcdm",
        choices=("dcdm", "residual", "pcg"),
        help="dcdm: exact line search per sample (the paper); residual: unit step, "
        "‖b − A f(b)‖²; pcg: log10 residual reduction per step of 4 unrolled PCG steps with "
        "the network as M (for SPD networks such as vcycle)",
    )
    t.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="checkpoint every N steps (default: a tenth of the run, at most 100; the last "
        "step always); 0: only at the end",
    )
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint")
    t.add_argument(
        "--stop-at", type=int, default=None, help="stop after this step (checkpointed), resumable"
    )
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser(
        "simulate",
        help="run the smoke simulator with a deepcd projection",
        description="Smoke from a floor source around a scene's obstacles, or a two-phase drop "
        "falling into a pool (--scene drop-pool); every step's pressure projection solved by "
        "--method. Writes DIR/frames/*.png, DIR/smoke.gif, DIR/steps.csv (iterations, solve "
        "time, divergence left per step), DIR/solver.png and DIR/summary.json.",
    )
    m.add_argument(
        "--scene",
        default=DEFAULT_SCENE,
        help="drop-pool (two-phase) or a problem scene with obstacles (smoke)",
    )
    m.add_argument(
        "--param",
        action="append",
        default=[],
        help="scene parameter KEY=VALUE (drop-pool: ratio, gravity, pool_height, ...)",
    )
    shape_args(m, many=False)
    m.add_argument("--steps", type=int, default=100)
    m.add_argument("--dt", type=float, default=1.0, help="time step (cells per unit speed)")
    m.add_argument("--method", default="dcdm")
    m.add_argument("--compare", help="also solve each projection with this method, to compare")
    m.add_argument("--rtol", type=float, default=1e-6)
    m.add_argument("--device", default="auto", help="dcdm: auto, cpu or cuda")
    m.add_argument("--option", action="append", default=[], help="method option KEY=VALUE")
    m.add_argument("--frame-every", type=int, default=5)
    m.add_argument("--out", default="sim-out")
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=cmd_simulate)

    i = sub.add_parser("info", help="version, methods, scenes")
    i.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    from deepcd import threads

    threads.ensure()  # numba and torch share the cores ($DEEPCD_THREADS; deepcd.threads)
    if getattr(args, "command", None) == "bench":
        args.scene = args.scene or [DEFAULT_SCENE]
        args.shape = args.shape or ["64"]
    from deepcd.api import DeviceUnavailableError

    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, DeviceUnavailableError) as err:
        print(f"deepcd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepcd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
