"""One table from the hard-geometry runs: iterations / total seconds per solver and case.

    python benchmarks/summarize_hard.py benchmarks/hard-geometry

Reads every <dir>/*/results.json written by `deepcd bench`, writes <dir>/summary.md (the
README table) and prints it. A run that did not converge shows its iteration cap and final
true relative residual; "vs best classical" is the fastest converged classical solver's total
time (MIC(0), pyamg, CG) over DCDM's (mgpcg is DCDM's own V-cycle on the torch path).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["dcdm", "mgpcg", "mic0", "amg-sa", "amg-rs", "cg"]


def cell(run: dict) -> str:
    if run["converged"]:
        return f"{run['iterations']} / {run['total_s']:.2f} s"
    return f"> {run['iterations']} ({run['final_relres']:.0e})"


def main(root: Path) -> str:
    rows = []
    for path in sorted(root.glob("*/results.json")):
        data = json.loads(path.read_text())
        cases: dict[tuple, dict] = {}
        for run in data["runs"]:
            key = (run["scene"], "×".join(str(n) for n in run["shape"]))
            cases.setdefault(key, {})[run["solver"]] = run
        for (scene, shape), runs in cases.items():
            line = [scene, shape] + [cell(runs[s]) if s in runs else "—" for s in ORDER]
            d = runs.get("dcdm")
            # the classical solvers only: mgpcg is the same V-cycle on the torch path
            others = [
                r["total_s"]
                for s, r in runs.items()
                if s not in ("dcdm", "mgpcg") and r["converged"]
            ]
            ratio = f"{min(others) / d['total_s']:.2f}×" if d and d["converged"] and others else "—"
            rows.append([*line, ratio])
    head = ["scene", "grid", *ORDER, "DCDM vs best classical"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(out) + "\n"
    (root / "summary.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/hard-geometry")))
