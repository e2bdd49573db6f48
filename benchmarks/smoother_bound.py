"""What bounds the CPU V-cycle's kernels here: the wavefront smoother alone, and the scatter /
gather around the network, serial against parallel.

Run:  .venv/bin/python benchmarks/smoother_bound.py [--out benchmarks/smoother-bound]
Writes OUT/results.json and OUT/results.md. Run it alone on a quiet machine.

(1) `clenshaw_wavefront` (degree 7) on random float32 grids of 64³ and 128³, on 1 and 2
threads: median ms with warm caches and right after streaming a 32 MB array (the caches
evicted), as GB/s of the 7 arrays it reads and writes once; and the same kernel compiled with
`fastmath={"contract"}` (multiply-adds fused), warm. If the kernel were bound by memory, the
evicted runs would be slower and the GB/s near STREAM's; if by its arithmetic, contraction
would pay. (2) The same kernel on one thread on grids of 2^18 cells whose rows (the z axis,
the loop that vectorizes) are 16 to 256 cells long: time per cell and Clenshaw stage, and what
a row costs beyond its cells. (3) The shipped degree (6) at 96³, 128³ and 256³, untiled
against `clenshaw_wavefront_tiled` with tiles of 16, 32 and 64 rows, and what
`deepcd.nn.fastpath.wavefront_tile` picks. (4) `scatter` + `gather_checked`
(NetworkDirection.into's two copies) of n unknowns, the serial copy
(`deepcd.kernels.aggregate.small`) against the parallel kernel.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from pathlib import Path

import numba as nb
import numpy as np

from deepcd import threads
from deepcd.bench.runner import environment
from deepcd.kernels.aggregate import serial_twin, small
from deepcd.kernels.smoother import clenshaw_wavefront
from deepcd.kernels.vector import gather_checked, scatter
from deepcd.nn.fastpath import padded_z_faces

DEGREE = 7


def _median_ms(fn, repeats: int, before=None) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def _random_level(rng, shape: tuple[int, int, int]):
    """A random float32 grid level of `shape`: (y, s, e, [x-, y-, z-faces])."""
    y, s = (rng.random(shape, dtype=np.float32) for _ in range(2))
    e = 0.1 * rng.random(shape, dtype=np.float32)
    faces = [
        0.1 * rng.random(tuple(k - (a == b) for b, k in enumerate(shape)), dtype=np.float32)
        for a in range(3)
    ]
    return y, s, e, faces


def smoother_rows() -> list[dict]:
    contracted = nb.njit(parallel=True, fastmath={"contract"})(
        serial_twin(clenshaw_wavefront.py_func)  # a copy under its own name: no cache clash
    )
    big = np.ones(8 << 20, dtype=np.float32)  # 32 MB

    def evict():
        np.add(big, 1.0, out=big)

    rows = []
    rng = np.random.default_rng(0)
    for n in (64, 128):
        y, s, e, faces = _random_level(rng, (n,) * 3)
        beta = rng.random(DEGREE)
        for t in (1, 2):
            nb.set_num_threads(t)
            work = np.empty((t, DEGREE - 1, 3, n, n + 2), dtype=np.float32)
            out = np.empty_like(y)

            args = (
                y,
                s,
                e,
                faces[0],
                faces[1],
                padded_z_faces({}, faces[2]),
                beta,
                t,
                work,
                False,
                out,
            )
            reps = 30 if n == 64 else 10
            warm = _median_ms(partial(clenshaw_wavefront, *args), reps)
            cold = _median_ms(partial(clenshaw_wavefront, *args), reps, evict)
            fused = _median_ms(partial(contracted, *args), reps)
            gb = 7 * y.nbytes / 1e9
            rows.append(
                dict(grid=n, threads=t, warm_ms=warm, evicted_ms=cold, contract_ms=fused,
                     warm_gbs=gb / warm * 1e3, evicted_gbs=gb / cold * 1e3)
            )  # fmt: skip
    nb.set_num_threads(threads.decide())
    return rows


def row_length_rows() -> list[dict]:
    """(2): one thread, 2^18 cells, rows of 16-256 cells."""
    rows = []
    rng = np.random.default_rng(2)
    nb.set_num_threads(1)
    for shape in ((64, 256, 16), (64, 128, 32), (64, 64, 64), (64, 32, 128), (64, 16, 256)):
        y, s, e, faces = _random_level(rng, shape)
        nzp = padded_z_faces({}, faces[2])
        work = np.empty((1, DEGREE - 1, 3, shape[1], shape[2] + 2), dtype=np.float32)
        out = np.empty_like(y)
        args = (y, s, e, faces[0], faces[1], nzp, rng.random(DEGREE), 1, work, False, out)
        ms = _median_ms(partial(clenshaw_wavefront, *args), 30)
        stages = DEGREE - 1
        rows.append(
            dict(row=shape[2], ms=ms, ns_per_cell_stage=ms * 1e6 / (y.size * stages),
                 rows=shape[0] * shape[1])
        )  # fmt: skip
    nb.set_num_threads(threads.decide())
    return rows


def tile_rows() -> list[dict]:
    """(3): degree 6, 2 threads (1 thread at 96³ and 128³ too)."""
    from deepcd.kernels.smoother import clenshaw_wavefront_tiled
    from deepcd.nn.fastpath import wavefront_tile

    rows = []
    rng = np.random.default_rng(3)
    m = 6
    for n, thread_counts in ((96, (1, 2)), (128, (1, 2)), (256, (2,))):
        shape = (n, n, n)
        y, s, e, faces = _random_level(rng, shape)
        nzp = padded_z_faces({}, faces[2])
        beta = rng.random(m)
        out = np.empty_like(y)
        for t in thread_counts:
            nb.set_num_threads(t)
            reps = 3 if n == 256 else 10
            work = np.empty((t, m - 1, 3, n, n + 2), dtype=np.float32)
            args = (y, s, e, faces[0], faces[1], nzp, beta, t, work, False, out)
            row = dict(
                grid=n, threads=t, untiled_ms=_median_ms(partial(clenshaw_wavefront, *args), reps)
            )
            for tile in (16, 32, 64):
                work = np.empty((t, m - 1, 3, tile + 2 * (m - 1), n + 2), dtype=np.float32)
                args = (y, s, e, faces[0], faces[1], nzp, beta, t, tile, work, False, out)
                row[f"tile{tile}_ms"] = _median_ms(partial(clenshaw_wavefront_tiled, *args), reps)
            row["picked"] = wavefront_tile(shape, m, 4)
            rows.append(row)
        del y, s, e, faces, nzp, out
    nb.set_num_threads(threads.decide())
    return rows


def _copy_pair(sc, ga, r, index, grid, out) -> None:
    sc(r, index, grid, 1.0)
    ga(grid, index, out)


def copy_rows() -> list[dict]:
    rows = []
    rng = np.random.default_rng(1)
    for n, cells in ((2_000, 4_096), (15_000, 32_768), (60_000, 262_144), (120_000, 262_144),
                     (250_000, 262_144), (1_000_000, 2_097_152)):  # fmt: skip
        index = np.sort(rng.choice(cells, n, replace=False)).astype(np.int32)
        r, grid, out = rng.standard_normal(n), np.zeros(cells, dtype=np.float32), np.empty(n)
        ms = {}
        for tag, sc, ga in (
            ("parallel", scatter, gather_checked),
            ("serial", small(scatter, 0), small(gather_checked, 0)),
        ):
            ms[tag] = _median_ms(partial(_copy_pair, sc, ga, r, index, grid, out), 200)
        rows.append(
            dict(unknowns=n, parallel_us=ms["parallel"] * 1e3, serial_us=ms["serial"] * 1e3)
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/smoother-bound")
    args = ap.parse_args()
    threads.ensure()
    smooth, lengths, tiles = smoother_rows(), row_length_rows(), tile_rows()
    copies = copy_rows()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "smoother": smooth,
        "row_lengths": lengths,
        "tiles": tiles,
        "copies": copies,
        "environment": environment(),
    }
    (out / "results.json").write_text(json.dumps(record, indent=1, default=str))
    lines = [
        "# What bounds the CPU V-cycle's kernels",
        "",
        "`python benchmarks/smoother_bound.py --out benchmarks/smoother-bound` — medians, one "
        "process.",
        "",
        f"Wavefront smoother (degree {DEGREE}, float32), GB/s of the 7 arrays it streams once:",
        "",
        "| grid | threads | warm ms | evicted ms | warm GB/s | evicted GB/s "
        "| fused multiply-add ms | warm / fused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in smooth:
        lines.append(
            f"| {r['grid']}³ | {r['threads']} | {r['warm_ms']:.2f} | {r['evicted_ms']:.2f} | "
            f"{r['warm_gbs']:.1f} | {r['evicted_gbs']:.1f} | {r['contract_ms']:.2f} | "
            f"{r['warm_ms'] / r['contract_ms']:.2f} |"
        )
    longest = lengths[-1]["ns_per_cell_stage"]
    lines += [
        "",
        f"The same kernel, one thread, {lengths[0]['rows'] * lengths[0]['row']:,} cells in "
        "rows of different lengths (a row: the vectorized loop along z); the last column is "
        "what each row and stage costs beyond the longest rows' time per cell:",
        "",
        "| row length | ms | ns per cell and stage | ns per row and stage beyond the cells |",
        "|---|---|---|---|",
    ]
    for r in lengths:
        extra = (r["ns_per_cell_stage"] - longest) * r["row"]
        lines.append(f"| {r['row']} | {r['ms']:.2f} | {r['ns_per_cell_stage']:.2f} | {extra:.0f} |")
    lines += [
        "",
        "The shipped degree (6), ms per sweep: untiled against tiles of rows "
        "(`clenshaw_wavefront_tiled`), and the tile `wavefront_tile` picks (the grid's ny: "
        "untiled):",
        "",
        "| grid | threads | untiled | tiles of 16 | tiles of 32 | tiles of 64 | picked |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in tiles:
        lines.append(
            f"| {r['grid']}³ | {r['threads']} | {r['untiled_ms']:.2f} | {r['tile16_ms']:.2f} | "
            f"{r['tile32_ms']:.2f} | {r['tile64_ms']:.2f} | {r['picked']} |"
        )
    lines += [
        "",
        "Scatter + checked gather (NetworkDirection.into), µs per pair:",
        "",
        "| unknowns | parallel | serial | parallel / serial |",
        "|---|---|---|---|",
    ]
    for r in copies:
        lines.append(
            f"| {r['unknowns']:,} | {r['parallel_us']:.0f} | {r['serial_us']:.0f} | "
            f"{r['parallel_us'] / r['serial_us']:.2f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
