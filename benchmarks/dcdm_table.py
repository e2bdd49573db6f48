"""The README's "DCDM against every solver" table from `deepcd bench` results.

    python benchmarks/dcdm_table.py benchmarks/dcdm-cpu [benchmarks/dcdm-cpu-2d ...]

One row per (scene, grid): iterations / total seconds (setup + solve) of DCDM, CG, MIC(0)-PCG,
pyamg SA and RS as CG preconditioners and Newton with an AMG Hessian, then DCDM's speed-up
over CG and over the fastest non-DCDM solver that converged (ratios within one run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [
    ("dcdm", "DCDM"),
    ("cg", "CG"),
    ("mic0", "MIC(0)-PCG"),
    ("amg-sa", "AMG-SA+CG"),
    ("amg-rs", "AMG-RS+CG"),
    ("newton-amg", "Newton (H=AMG)"),
]


def table(dirs: list[Path]) -> str:
    head = ["scene", "grid", *(label for _, label in COLUMNS), "DCDM vs CG", "vs best other"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in dirs:
        runs = json.loads((d / "results.json").read_text())["runs"]
        cases: dict[tuple, dict] = {}
        for run in runs:
            key = (run["scene"], "×".join(str(n) for n in run["shape"]))
            cases.setdefault(key, {})[run["solver"]] = run
        for (scene, grid), by in cases.items():
            cells = []
            for name, _ in COLUMNS:
                r = by.get(name)
                if r is None:
                    cells.append("—")
                else:
                    mark = "" if r["converged"] else " (not converged)"
                    cells.append(f"{r['iterations']} / {r['total_s']:.2f} s{mark}")
            dcdm = by["dcdm"]["total_s"]
            others = [
                r["total_s"] for n, r in by.items() if not n.startswith("dcdm") and r["converged"]
            ]
            vs_cg = by["cg"]["total_s"] / dcdm if "cg" in by else float("nan")
            best = min(others) / dcdm if others else float("nan")
            lines.append(
                f"| {scene} | {grid} | " + " | ".join(cells) + f" | {vs_cg:.2f}× | {best:.2f}× |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table([Path(a) for a in sys.argv[1:]] or [Path("benchmarks/dcdm-cpu")]))
