"""Benchmark reports: the results table (console and markdown) and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = (
    ("scene", "scene"),
    ("shape", "shape"),
    ("solver", "solver"),
    ("unknowns", "unknowns"),
    ("iterations", "iters"),
    ("setup_s", "setup s"),
    ("solve_s", "solve s"),
    ("total_s", "total s"),
    ("ms_per_iteration", "ms/iter"),
    ("final_relres", "true relres"),
    ("converged", "conv"),
    ("peak_rss_mb", "peak MiB"),
)


def _cell(key: str, run: dict) -> str:
    if key == "shape":
        return "×".join(map(str, run["shape"]))
    if key == "ms_per_iteration":
        v = run.get("s_per_iteration")
        return "—" if v is None else f"{1e3 * v:.2f}"
    v = run.get(key)
    if v is None:
        return "—"
    if key == "unknowns":
        return f"{v:,}"
    if key in ("setup_s", "solve_s", "total_s"):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if key == "final_relres":
        return f"{v:.1e}"
    if key == "converged":
        return "yes" if v else "**no**"
    if key == "peak_rss_mb":
        return f"{v:,.0f}"
    return str(v)


def rows(runs: list[dict]) -> list[list[str]]:
    return [[_cell(key, run) for key, _ in COLUMNS] for run in runs]


def markdown_table(runs: list[dict]) -> str:
    head = [title for _, title in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(runs)]
    return "\n".join(lines)


def text_table(runs: list[dict]) -> str:
    head = [title for _, title in COLUMNS]
    body = rows(runs)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body]
    )


def write_results(out: Path, runs: list[dict], problems: list[dict], meta: dict) -> Path:
    """DIR/results.json: {"meta": ..., "problems": [...], "runs": [...]}."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps({"meta": meta, "problems": problems, "runs": runs}, indent=1))
    tmp.replace(path)
    return path


def write_benchmark(out: Path, command: str, rows: list[dict], text: str) -> None:
    """A benchmark script's outputs (`benchmarks/*.py`): out/results.json with the command,
    the machine (`deepcd.bench.runner.environment`) and the rows, and out/results.md = text,
    which is printed too."""
    from deepcd.bench.runner import environment

    out.mkdir(parents=True, exist_ok=True)
    data = {"command": command, "environment": environment(), "rows": rows}
    (out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "results.md").write_text(text)
    print(text)


def _repeats_table(runs: list[dict]) -> list[str]:
    """With `--repeats`: every run's total seconds (and iterations where they varied) beside
    the median run the table above shows."""
    if not any(r.get("repeats", 1) > 1 for r in runs):
        return []
    n = max(r.get("repeats", 1) for r in runs)
    lines = [
        f"Each row above is the run with the median total time of {n}, round by round. "
        "Every run's total seconds:",
        "",
        "| scene | shape | solver | total s, every run | spread (max / min) |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        totals = r.get("total_s_all", [r["total_s"]])
        iters = r.get("iterations_all", [r["iterations"]])
        cell = ", ".join(f"{t:.3g}" for t in totals)
        if len(set(iters)) > 1:
            cell += " (iterations " + ", ".join(map(str, iters)) + ")"
        spread = max(totals) / min(totals) if min(totals) > 0 else float("nan")
        shape = "×".join(map(str, r["shape"]))
        lines.append(f"| {r['scene']} | {shape} | {r['solver']} | {cell} | {spread:.2f} |")
    return [*lines, ""]


def write_markdown(out: Path, runs: list[dict], meta: dict, plots: list[Path]) -> Path:
    """DIR/results.md: the command, the environment, the table and the plots."""
    env = meta.get("environment", {})
    lines = [
        "# Benchmark results",
        "",
        "Made by:",
        "",
        "```",
        meta.get("command", ""),
        "```",
        "",
        ", ".join(f"{k} {v}" for k, v in env.items()),
        "",
        markdown_table(runs),
        "",
    ]
    lines += _repeats_table(runs)
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path
