"""One table from a family of `deepcd bench` runs: iterations / total seconds per solver and
case, e.g. the hard-geometry and variable-coefficient benchmarks.

    python benchmarks/summarize.py benchmarks/hard-geometry
    python benchmarks/summarize.py benchmarks/variable-coefficient

Reads every <dir>/*/results.json, writes <dir>/summary.md (the README table) and prints it.
Solvers appear in the order below (others after them); a case is (scene, scene parameters,
grid). A run that did not converge shows its iteration cap and final true relative residual.
"vs best classical" is the fastest converged classical solver's total time (MIC(0), pyamg,
CG) over DCDM's; "trained vs untrained" (where dcdm-untrained ran) is the untrained network's
iterations over the shipped one's, then its total time over the shipped one's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["dcdm", "dcdm-untrained", "mgpcg", "mic0", "amg-sa", "amg-rs", "cg"]
NOT_CLASSICAL = ("dcdm", "dcdm-untrained", "mgpcg")  # the network, or its V-cycle on torch


def cell(run: dict) -> str:
    if run["converged"]:
        return f"{run['iterations']} / {run['total_s']:.2f} s"
    return f"> {run['iterations']} ({run['final_relres']:.0e})"


def _params(run: dict) -> str:
    return ", ".join(
        f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in sorted(run.get("params", {}).items())
    )


def main(root: Path) -> str:
    cases: dict[tuple, dict] = {}
    for path in sorted(root.glob("*/results.json")):
        for run in json.loads(path.read_text())["runs"]:
            key = (run["scene"], _params(run), "×".join(str(n) for n in run["shape"]))
            cases.setdefault(key, {})[run["solver"]] = run
    seen = {s for runs in cases.values() for s in runs}
    order = [s for s in ORDER if s in seen] + sorted(seen - set(ORDER))
    with_params = any(key[1] for key in cases)
    trained = "dcdm-untrained" in seen
    rows = []
    for (scene, params, shape), runs in cases.items():
        line = [scene] + ([params or "—"] if with_params else []) + [shape]
        line += [cell(runs[s]) if s in runs else "—" for s in order]
        d = runs.get("dcdm")
        others = [
            r["total_s"] for s, r in runs.items() if s not in NOT_CLASSICAL and r["converged"]
        ]
        line.append(
            f"{min(others) / d['total_s']:.2f}×" if d and d["converged"] and others else "—"
        )
        if trained:
            u = runs.get("dcdm-untrained")
            ok = d and u and d["converged"] and u["converged"]
            line.append(
                f"{u['iterations'] / d['iterations']:.2f}× / {u['total_s'] / d['total_s']:.2f}×"
                if ok
                else "—"
            )
        rows.append(line)
    head = ["scene"] + (["parameters"] if with_params else []) + ["grid", *order]
    head.append("DCDM vs best classical")
    if trained:
        head.append("trained vs untrained (iterations / time)")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(out) + "\n"
    (root / "summary.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/hard-geometry")))
