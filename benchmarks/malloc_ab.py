"""deepcd.memory's malloc settings against glibc's defaults: one DCDM problem solved twice in a
fresh process per setting, after a 24³ solve that loads the numba kernels (the first timed
solve pays the hierarchy and the first touches of its memory; the second reuses the cached
hierarchy).

Run:  .venv/bin/python benchmarks/malloc_ab.py [--shape 128 --shape 256] [--rounds 2]
      [--scene smoke-obstacles] [--out benchmarks/malloc]
The settings alternate (keep, system, keep, system, …) so that a drift of the machine shows.
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
print(json.dumps(dict(malloc=threads.settings()["malloc"], solves=solves, peak_mib=peak)))
"""


def run(setting: str, scene: str, n: int) -> dict:
    env = {**os.environ, "DEEPCD_MALLOC": setting}
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
    args = ap.parse_args()
    shapes = args.shape or [128, 256]
    rows = [
        {"shape": n, "round": k, **run(s, args.scene, n)}
        for n in shapes
        for k in range(args.rounds)
        for s in ("keep", "system")
    ]
    command = "python benchmarks/malloc_ab.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    lines = [
        f"# malloc settings, {args.scene}",
        "",
        f"`{command}` — one fresh process per setting, two solves each (rtol 1e-6).",
        "",
        "| grid | round | DEEPCD_MALLOC | in effect | 1st setup s | 1st solve s | 2nd solve s "
        "| iterations | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["solves"]
        lines.append(
            f"| {r['shape']}³ | {r['round'] + 1} | {r['setting']} | {r['malloc']} "
            f"| {a['setup_s']:.2f} | {a['solve_s']:.2f} | {b['solve_s']:.2f} "
            f"| {a['iterations']} | {r['peak_mib']:,.0f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
