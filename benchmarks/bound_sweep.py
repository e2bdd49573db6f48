"""What the benchmarks that choose a size bound share (`grid_serial_below.py`,
`grid_form_min.py`): one application of the shipped solver timed per candidate bound, the
bounds alternating round by round in one process, and the table of the results."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def median_ms(
    directions: dict, r: np.ndarray, repeats: int, rounds: int, set_bound: Callable[[int], None]
) -> dict[int, float]:
    """Median ms of one application (`NetworkDirection.into`) per bound: directions[bound]
    applied with set_bound(bound) in effect, 3 untimed then `repeats` timed per round; the
    median over the rounds of each round's median."""
    out = np.empty_like(r)
    per: dict[int, list[float]] = {b: [] for b in directions}
    for _ in range(rounds):
        for bound, direction in directions.items():
            set_bound(bound)
            for _ in range(3):
                direction.into(r, 1.0, out)
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                direction.into(r, 1.0, out)
                ts.append(time.perf_counter() - t)
            per[bound].append(statistics.median(ts))
    return {b: statistics.median(v) * 1e3 for b, v in per.items()}


def write_results(
    out: Path,
    record: dict,
    header: list[str],
    bounds: tuple[int, ...],
    reference: int,
    label: str,
    cell: Callable[[dict, int], str],
) -> None:
    """OUT/results.json (record, whose "rows" have scene, shape and ms per bound) and
    OUT/results.md: the header lines, then a row per scene and grid with `cell(row, bound)`
    per bound and the reference bound's time over the chosen one's (`label`)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=1, default=str))
    heads = " | ".join(f"bound {b:,}" for b in bounds)
    lines = [*header, "", f"| scene | grid | {heads} | {label} |"]
    lines.append("|---|---|" + "---|" * len(bounds) + "---|")
    chosen = record["chosen"]
    for row in record["rows"]:
        cells = " | ".join(cell(row, b) for b in bounds)
        grid = "×".join(map(str, row["shape"]))
        ratio = row["ms"][reference] / row["ms"][chosen]
        lines.append(f"| {row['scene']} | {grid} | {cells} | {ratio:.2f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
