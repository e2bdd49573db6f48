"""The README's "DCDM against every solver" table from `deepcd bench` results.

    python benchmarks/dcdm_table.py benchmarks/dcdm-cpu [benchmarks/dcdm-cpu-2d ...] [--before REV]

One row per (scene, grid): iterations / total seconds (setup + solve) of DCDM, CG, MIC(0)-PCG,
pyamg SA and RS as CG preconditioners and Newton with an AMG Hessian, then DCDM's speed-up
over CG and over the fastest non-DCDM solver that converged (ratios within one run). With
--before REV, a first column "DCDM at REV" holds DCDM's result from the same folder's
results.json as committed at git revision REV (an earlier run, for the old-beside-new view),
with its speed-up over CG in that run: runs on different machines compare by that ratio only.
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


def _results_at(rev: str, path: Path) -> dict:
    text = subprocess.run(
        ["git", "show", f"{rev}:{path.as_posix()}"], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(text)


def _cpu(results: dict) -> str:
    return results["meta"].get("environment", {}).get("processor", "?")


def table(dirs: list[Path], before: str | None = None) -> str:
    labels = [label for _, label in COLUMNS]
    lines, cpus, old_cpus = [], set(), set()
    for d in dirs:
        new = json.loads((d / "results.json").read_text())
        cpus.add(_cpu(new))
        old = {}
        if before:
            was = _results_at(before, d / "results.json")
            old_cpus.add(_cpu(was))
            old = _cases(was["runs"])
        for (scene, grid), by in _cases(new["runs"]).items():
            cells = []
            if before:
                r, c = (old.get((scene, grid), {}).get(k) for k in ("dcdm", "cg"))
                ratio = f", {c['total_s'] / r['total_s']:.2f}× CG" if r and c else ""
                cells.append(f"{r['iterations']} / {r['total_s']:.2f} s{ratio}" if r else "—")
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
    head = ["scene", "grid", *labels, "DCDM vs CG", "vs best other"]
    if before:
        head.insert(2, f"DCDM at {before} ({', '.join(sorted(old_cpus))})")
        head[3] = f"DCDM ({', '.join(sorted(cpus))})"
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *lines])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="*", type=Path, default=[Path("benchmarks/dcdm-cpu")])
    ap.add_argument("--before", help="a git revision whose committed DCDM results to show")
    args = ap.parse_args()
    print(table(args.dirs, args.before))
