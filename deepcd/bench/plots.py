"""Residual-vs-iteration and residual-vs-time plots, one PNG per problem."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def plot_problem(runs: list[dict], path: Path, rtol: float | None = None) -> Path:
    """Plot the relative residual of every run of one problem against iteration and time.

    The time axis starts at 0 = start of setup, so setup cost shows as a late first point.
    """
    fig, (ax_it, ax_t) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    colors = plt.get_cmap("tab20").colors
    for i, run in enumerate(runs):
        res = np.asarray(run["residuals"])
        t = run["setup_s"] + np.asarray(run["times"])
        style = "-" if run["converged"] else ":"
        color = colors[(2 * i) % 20 + (i // 10) % 2]  # 20 distinct colours, dark ones first
        ax_it.semilogy(np.arange(res.size), res, style, color=color, label=run["solver"], lw=1.4)
        ax_t.semilogy(t, res, style, color=color, lw=1.4)
    converged = [r for r in runs if r["converged"]]
    if converged and len(converged) < len(runs):
        # an unconverged run would squash the others: show the converged ones in full
        ax_it.set_xlim(0, 1.15 * max(len(r["residuals"]) for r in converged))
        ax_t.set_xlim(0, 1.15 * max(r["setup_s"] + r["solve_s"] for r in converged))
    for ax in (ax_it, ax_t):
        if rtol:
            ax.axhline(rtol, color="0.5", lw=0.8, ls="--")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylabel("‖b − Ax‖ / ‖b‖")
    ax_it.set_xlabel("iteration")
    ax_t.set_xlabel("seconds (setup + solve)")
    first = runs[0]
    shape = "×".join(map(str, first["shape"]))
    fig.suptitle(f"{first['scene']} {shape} — {first['unknowns']:,} unknowns")
    ax_it.legend(fontsize=8, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(runs: list[dict], out: Path, rtol: float | None = None) -> list[Path]:
    """One `residuals_<scene>_<shape>.png` per problem in `out`."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["scene"], tuple(run["shape"])), []).append(run)
    paths = []
    for (name, shape), group in groups.items():
        stem = f"residuals_{name}_{'x'.join(map(str, shape))}.png"
        paths.append(plot_problem(group, out / stem, rtol))
    return paths
