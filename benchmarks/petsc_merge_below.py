"""Iteration cost of the PETSc preconditioner's one difference from deepcd's serial V-cycle:
no merging of one-node block components across blocks (merge_below 0 instead of MERGE_BELOW).

    .venv/bin/python benchmarks/petsc_merge_below.py --out benchmarks/petsc/merge_below.json

deepcd's own dcdm (the shipped vcycle-3d, serial) with the hierarchy built both ways, on the
peers' scenes at 128³ and the hard-geometry scenes at 64³; iterations to rtol 1e-6.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import deepcd
from deepcd.nn import multigrid
from deepcd.nn.weights import load_solver
from deepcd.problems import scene

CASES = [(s, 128) for s in ("smoke-plume", "smoke-obstacles", "bunny", "pool")] + [
    (s, 64) for s in ("baffles", "maze", "porous")
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/petsc/merge_below.json")
    args = ap.parse_args()
    default = multigrid.MERGE_BELOW
    rows = []
    for name, n in CASES:
        p = scene(name, (n, n, n), seed=0)
        row = {"scene": name, "shape": [n] * 3}
        for merge in (default, 0):
            multigrid.MERGE_BELOW = merge
            model, _ = load_solver("vcycle-3d")  # a fresh model: no cached hierarchy
            res = deepcd.solve_result(p, rtol=1e-6, method="dcdm", maxiter=500, model=model)
            row[f"iterations_merge_below_{merge}"] = res.iterations
        multigrid.MERGE_BELOW = default
        rows.append(row)
        print(row, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
