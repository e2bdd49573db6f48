"""deepcd.memory's malloc settings against glibc's defaults (or, with --thp, numpy's huge-page
advice off against numpy's default, DEEPCD_THP): one DCDM problem solved twice in a fresh
process per setting, after a 24³ solve that loads the numba kernels (the first timed
solve pays the hierarchy and the first touches of its memory; the second reuses the cached
hierarchy).

Run:  .venv/bin/python benchmarks/malloc_ab.py [--thp] [--shape 128 --shape 256] [--rounds 2]
      [--scene smoke-obstacles] [--out benchmarks/malloc]
The settings alternate (keep, system, keep, system, …; with --thp off, numpy, …) so that a
drift of the machine shows.
Writes OUT/results.json and OUT/results.md. Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys
import deepcd
from deepcd import threads
from deepcd.nn.weights import default_solver, load_solver
from deepcd.problems import scene
threads.ensure()
name, n = sys.argv[1], int(sys.argv[2])
problem = scene(name, (n,) * 3, seed=0)
net, _ = load_solver(default_solver(3))
deepcd.solve_result(scene(name, (24,) * 3, seed=1), rtol=1e-6, model=net)  # loads the kernels
solves = []
for _ in range(2):
    r = deepcd.solve_result(problem, rtol=1e-6, model=net)
    solves.append(dict(iterations=r.iterations, setup_s=r.setup_s, solve_s=r.solve_s))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
st = threads.settings()
print(json.dumps(dict(malloc=st["malloc"], thp=st["numpy_hugepage"], solves=solves, peak_mib=peak)))
"""


def run(variable: str, setting: str, scene: str, n: int) -> dict:
    env = {**os.environ, variable: setting}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, scene, str(n)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return {"setting": setting, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, action="append", default=[])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scene", default="smoke-obstacles")
    ap.add_argument("--out", default="bench-out/malloc")
    ap.add_argument("--thp", action="store_true", help="vary DEEPCD_THP, not DEEPCD_MALLOC")
    args = ap.parse_args()
    shapes = args.shape or [128, 256]
    variable, settings = ("DEEPCD_MALLOC", ("keep", "system"))
    if args.thp:
        variable, settings = ("DEEPCD_THP", ("off", "numpy"))
    rows = [
        {"shape": n, "round": k, **run(variable, s, args.scene, n)}
        for n in shapes
        for k in range(args.rounds)
        for s in settings
    ]
    command = "python benchmarks/malloc_ab.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    lines = [
        f"# {'numpy huge-page advice' if args.thp else 'malloc settings'}, {args.scene}",
        "",
        f"`{command}` — one fresh process per setting, two solves each (rtol 1e-6).",
        "",
        f"| grid | round | {variable} | in effect | 1st setup s | 1st solve s | 2nd solve s "
        "| iterations | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["solves"]
        held = r["thp"] if args.thp else r["malloc"]
        lines.append(
            f"| {r['shape']}³ | {r['round'] + 1} | {r['setting']} | {held} "
            f"| {a['setup_s']:.2f} | {a['solve_s']:.2f} | {b['solve_s']:.2f} "
            f"| {a['iterations']} | {r['peak_mib']:,.0f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
