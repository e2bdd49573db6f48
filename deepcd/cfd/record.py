"""Running a smoke simulation to disk: frames (PNG), an animated GIF, a per-step CSV, a plot of
the solver's cost per step (against the comparison method, when one ran) and a summary JSON."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from deepcd.cfd.smoke import SmokeSimulation, StepRecord
from deepcd.cfd.twophase import DropSimulation
from deepcd.progress import bars_enabled

Simulation = SmokeSimulation | DropSimulation

CSV_COLUMNS = (
    "step",
    "iterations",
    "solve_s",
    "step_s",
    "max_divergence",
    "relative_divergence",
    "converged",
    "compare_iterations",
    "compare_solve_s",
)


def _frame(sim: Simulation, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = sim.density_image()
    cmap = plt.get_cmap("inferno").with_extremes(bad="#4a6fa5")  # solids in blue
    fig, ax = plt.subplots(figsize=(4, 4 * img.shape[0] / img.shape[1]), dpi=100)
    ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="bilinear")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _gif(frames: list[Path], path: Path, ms_per_frame: int = 120) -> None:
    from PIL import Image

    images = [Image.open(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)


def _cost_plot(records: list[StepRecord], method: str, compare: str | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r.step for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    ax1.plot(steps, [r.iterations for r in records], label=method)
    ax2.plot(steps, [r.solve_s for r in records], label=method)
    if compare:
        ax1.plot(steps, [r.compare_iterations for r in records], label=compare)
        ax2.plot(steps, [r.compare_solve_s for r in records], label=compare)
    ax1.set(xlabel="time step", ylabel="iterations to rtol", yscale="log")
    ax2.set(xlabel="time step", ylabel="projection solve [s]", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_simulation(
    sim: Simulation,
    steps: int,
    out: str | Path,
    *,
    frame_every: int = 5,
    method: str = "dcdm",
    compare: str | None = None,
    command: str = "",
    progress: bool = True,
) -> dict:
    """Advance `sim` by `steps`, writing OUT/frames/*.png, OUT/smoke.gif, OUT/steps.csv,
    OUT/solver.png and OUT/summary.json. Returns the summary."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if frame_every < 1:
        raise ValueError(f"frame_every must be >= 1, got {frame_every}")
    out = Path(out)
    frames_dir = out / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    records: list[StepRecord] = []
    frames: list[Path] = []
    t0 = time.perf_counter()
    bar = None
    if bars_enabled(progress):
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="simulate", unit="step")
    with open(out / "steps.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for _ in range(steps):
            rec = sim.step()
            records.append(rec)
            writer.writerow(asdict(rec))
            f.flush()
            if rec.step % frame_every == 0 or rec.step == steps:
                path = frames_dir / f"frame_{rec.step:05d}.png"
                _frame(sim, path, f"step {rec.step}: {method} {rec.iterations} it")
                frames.append(path)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(it=rec.iterations, div=f"{rec.max_divergence:.1e}")
    if bar is not None:
        bar.close()
    total = time.perf_counter() - t0
    _gif(frames, out / "smoke.gif")
    _cost_plot(records, method, compare, out / "solver.png")
    its = np.array([r.iterations for r in records])
    solve = np.array([r.solve_s for r in records])
    summary = {
        "command": command,
        "shape": list(sim.shape),
        "unknowns": int(sim.fluid.sum()),
        "steps": steps,
        "method": method,
        "total_s": round(total, 3),
        "step_s_median": round(float(np.median([r.step_s for r in records])), 4),
        "solve_s_median": round(float(np.median(solve)), 4),
        "iterations_median": float(np.median(its)),
        "iterations_max": int(its.max()),
        "all_converged": all(r.converged for r in records),
        "max_divergence_max": max(r.max_divergence for r in records),
        "relative_divergence_max": max(r.relative_divergence for r in records),
    }
    if compare:
        cmp_its = np.array([r.compare_iterations for r in records])
        cmp_s = np.array([r.compare_solve_s for r in records])
        summary.update(
            {
                "compare": compare,
                "compare_iterations_median": float(np.median(cmp_its)),
                "compare_solve_s_median": round(float(np.median(cmp_s)), 4),
                "solve_time_ratio_median": round(float(np.median(cmp_s / solve)), 3),
            }
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
