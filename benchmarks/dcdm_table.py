"""The README's "DCDM against every solver" table from `deepcd bench` results.

    python benchmarks/dcdm_table.py benchmarks/dcdm-cpu [benchmarks/dcdm-cpu-2d ...] [--before REV]

One row per (scene, grid): iterations / total seconds (setup + solve) of DCDM, CG, MIC(0)-PCG,
pyamg SA and RS as CG preconditioners and Newton with an AMG Hessian, then DCDM's speed-up
over CG and over the fastest non-DCDM solver that converged (ratios within one run). With
--before REV, a first column "DCDM at REV" holds DCDM's result from the same folder's
results.json as committed at git revision REV (an earlier run, for the old-beside-new view).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

COLUMNS = [
    ("dcdm", "DCDM"),
    ("cg", "CG"),
    ("mic0", "MIC(0)-PCG"),
    ("amg-sa", "AMG-SA+CG"),
    ("amg-rs", "AMG-RS+CG"),
    ("newton-amg", "Newton (H=AMG)"),
]


def _cases(runs: list[dict]) -> dict[tuple, dict]:
    cases: dict[tuple, dict] = {}
    for run in runs:
        key = (run["scene"], "×".join(str(n) for n in run["shape"]))
        cases.setdefault(key, {})[run["solver"]] = run
    return cases


def _runs_at(rev: str, path: Path) -> list[dict]:
    text = subprocess.run(
        ["git", "show", f"{rev}:{path.as_posix()}"], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(text)["runs"]


def table(dirs: list[Path], before: str | None = None) -> str:
    head = ["scene", "grid", *(label for _, label in COLUMNS), "DCDM vs CG", "vs best other"]
    if before:
        head.insert(2, f"DCDM at {before}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in dirs:
        cases = _cases(json.loads((d / "results.json").read_text())["runs"])
        old = _cases(_runs_at(before, d / "results.json")) if before else {}
        for (scene, grid), by in cases.items():
            cells = []
            if before:
                r = old.get((scene, grid), {}).get("dcdm")
                cells.append(f"{r['iterations']} / {r['total_s']:.2f} s" if r else "—")
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="*", type=Path, default=[Path("benchmarks/dcdm-cpu")])
    ap.add_argument("--before", help="a git revision whose committed DCDM results to show")
    args = ap.parse_args()
    print(table(args.dirs, args.before))
