"""How deepcd's idle threads should wait: a short spin (`DEEPCD_WAIT=spin`, the default) against
sleeping at once (`DEEPCD_WAIT=passive`), on a quiet machine and beside one busy loop.

Run:  .venv/bin/python benchmarks/wait_policy.py [--out benchmarks/wait-policy] [--rounds 2]
Writes OUT/results.json and OUT/results.md. Run it alone on a quiet machine (it starts its own
busy loop for the loaded half).

The wait policy is read when OpenMP starts, so every (policy, load) pair runs in a fresh
process: it imports deepcd with DEEPCD_WAIT set, runs the benchmark runner's warm-up, then per
case (scene, solver) one untimed solve and `--repeats` timed ones (rtol 1e-6), and reports the
median total (setup + solve) — repeated solves of one system, as a simulation's frames with
unchanged flags are: DCDM's hierarchy is built by the untimed solve and reused. "Busy": one
more process spins in a pure-Python loop for the whole child run, as another job sharing the
2 cores would. The pairs alternate round by round; each cell is the median over the rounds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# (scene, solver) at the benchmark's size; not CG or MIC(0) on the maze: CG needs ~61,000
# iterations there (58 s at 64³ beside a busy loop)
CASES = (("splash", "dcdm"), ("splash", "mic0"), ("splash", "cg"), ("maze", "dcdm"))
POLICIES = ("spin", "passive")
LOADS = ("quiet", "busy")

CHILD = r"""
import json, statistics, sys
import deepcd
from deepcd import threads
from deepcd.bench.runner import environment, warm_up
from deepcd.problems import scene
threads.ensure()
shape, repeats = int(sys.argv[1]), int(sys.argv[2])
cases = [c.split("/") for c in sys.argv[3].split(",")]
warm_up(sorted({m for _, m in cases}), 3)
out = {"environment": environment(), "seconds": {}}
for name, method in cases:
    problem = scene(name, (shape,) * 3, seed=0)
    deepcd.solve_result(problem, rtol=1e-6, method=method)
    totals = []
    for _ in range(repeats):
        res = deepcd.solve_result(problem, rtol=1e-6, method=method)
        totals.append(res.setup_s + res.solve_s)
    out["seconds"][f"{name}/{method}"] = statistics.median(totals)
print(json.dumps(out, default=str))
"""


def run_child(policy: str, load: str, shape: int, repeats: int) -> dict:
    """One fresh process with DEEPCD_WAIT=policy, beside a busy loop when load is "busy"."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["DEEPCD_WAIT"] = policy
    busy = None
    if load == "busy":
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        args = [str(shape), str(repeats), ",".join(f"{s}/{m}" for s, m in CASES)]
        done = subprocess.run(
            [sys.executable, "-c", CHILD, *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/wait-policy")
    ap.add_argument("--shape", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for load, policy in itertools.product(LOADS, POLICIES):
            child = run_child(policy, load, args.shape, args.repeats)
            runs.setdefault((policy, load), []).append(child)
            print(policy, load, {k: round(v, 3) for k, v in child["seconds"].items()}, flush=True)
    cases = [f"{s}/{m}" for s, m in CASES]
    table = {
        f"{policy}/{load}": {c: statistics.median(r["seconds"][c] for r in rs) for c in cases}
        for (policy, load), rs in runs.items()
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "python benchmarks/wait_policy.py " + " ".join(sys.argv[1:]),
        "shape": [args.shape] * 3,
        "seconds": table,
        "environments": {
            f"{p}/{lo}": [r["environment"] for r in rs] for (p, lo), rs in runs.items()
        },
    }
    (out / "results.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    n = args.shape
    lines = [
        "# How idle threads wait: short spin against passive",
        "",
        f"`python benchmarks/wait_policy.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"Total seconds (setup + solve, rtol 1e-6) at {n}×{n}×{n}, median of {args.repeats} "
        f"solves of one system (DCDM's hierarchy built by an untimed first solve) in a fresh "
        f"process per policy and load, median over {args.rounds} alternating rounds. Busy: one "
        "pure-Python busy loop beside the solves.",
        "",
        "| scene | solver | quiet: spin | quiet: passive | passive / spin | busy: spin "
        "| busy: passive | spin / passive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        qs, qp = table["spin/quiet"][c], table["passive/quiet"][c]
        bs, bp = table["spin/busy"][c], table["passive/busy"][c]
        scene_name, method = c.split("/")
        lines.append(
            f"| {scene_name} | {method} | {qs:.3f} | {qp:.3f} | {qp / qs:.2f} | {bs:.3f} "
            f"| {bp:.3f} | {bs / bp:.2f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
