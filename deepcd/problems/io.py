"""HDF5 storage of problems: one file per problem, written atomically.

Layout: datasets `flags` (int8 grid) and `rhs` (float64 over the fluid cells), chunked and
gzip-compressed; attributes `format`, `deepcd_version`, `generator`, `params` (JSON),
`seed`, `boundary`. A variable-coefficient problem adds the face arrays `beta_0`, `beta_1`
[, `beta_2`] and, with ghost-fluid fractions, `theta_0`, ... (float64, MAC face shapes),
and a per-cell diagonal term `extra` where there is one.
A file is written under a temporary name and renamed when complete, so an interrupted write
never leaves a file that looks whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from deepcd._version import __version__
from deepcd.problems.coefficients import Coefficients
from deepcd.problems.problem import Problem

FORMAT = "deepcd-problem-v1"


def _chunks(shape: tuple[int, ...], target: int = 1 << 20) -> tuple[int, ...]:
    """About `target` elements per chunk, whole trailing axes where possible."""
    chunks = list(shape)
    i = 0
    while np.prod(chunks) > target and i < len(chunks):
        chunks[i] = max(1, min(chunks[i], int(target // max(np.prod(chunks[i + 1 :]), 1))))
        i += 1
    return tuple(max(1, c) for c in chunks)


def atomic_h5(path: str | os.PathLike):
    """Context manager: an h5py.File open for writing under a temporary name, renamed at exit."""
    return _AtomicH5(Path(path))


class _AtomicH5:
    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")

    def __enter__(self) -> h5py.File:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(self.tmp, "w")
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def save_problem(path: str | os.PathLike, problem: Problem) -> Path:
    """Write `problem` to an HDF5 file at `path` (atomically). Returns the path."""
    path = Path(path)
    with atomic_h5(path) as f:
        f.create_dataset(
            "flags", data=problem.flags, chunks=_chunks(problem.shape), compression="gzip"
        )
        f.create_dataset("rhs", data=problem.b, chunks=_chunks(problem.b.shape), compression="gzip")
        f.attrs["format"] = FORMAT
        f.attrs["deepcd_version"] = __version__
        f.attrs["generator"] = problem.generator
        f.attrs["params"] = json.dumps(problem.params)
        f.attrs["seed"] = -1 if problem.seed is None else int(problem.seed)
        f.attrs["boundary"] = np.asarray(problem.boundary, dtype=np.int8)
        write_coefficients(f, problem.coefficients)
    return path


def write_coefficients(group: h5py.Group, c: Coefficients | None) -> None:
    """Store a problem's coefficients (nothing for None) as the datasets of the layout above
    in an HDF5 file or group."""
    if c is None:
        return
    for name, arrays in (("beta", c.beta), ("theta", c.theta)):
        for a, arr in enumerate(arrays or ()):
            group.create_dataset(
                f"{name}_{a}", data=arr, chunks=_chunks(arr.shape), compression="gzip"
            )
    if c.extra is not None:
        group.create_dataset(
            "extra", data=c.extra, chunks=_chunks(c.extra.shape), compression="gzip"
        )


def read_coefficients(f: h5py.Group, path, shape: tuple[int, ...]) -> Coefficients | None:
    """The coefficients `write_coefficients` stored in a file or group (None when it has
    none); a ValueError naming `path` for a partial or invalid set."""
    names = [f"beta_{a}" for a in range(len(shape))]
    present = [n in f for n in names]
    if not any(present):
        return None
    if not all(present):
        raise ValueError(f"{path} is incomplete: it has some of the face arrays {names}, not all")
    theta_names = [f"theta_{a}" for a in range(len(shape))]
    theta = [f[n][...] for n in theta_names if n in f]
    if theta and len(theta) != len(shape):
        raise ValueError(f"{path} is incomplete: it has some of {theta_names}, not all")
    try:
        extra = f["extra"][...] if "extra" in f else None
        return Coefficients.validated(shape, [f[n][...] for n in names], theta or None, extra)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} holds invalid coefficients: {err}") from err


def load_problem(path: str | os.PathLike) -> Problem:
    """Read a problem written by `save_problem`; a clear ValueError for anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no problem file at {path}")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise ValueError(
                    f"{path} is not a deepcd problem file (format attribute "
                    f"{f.attrs.get('format')!r}, expected {FORMAT!r})"
                )
            missing = [k for k in ("flags", "rhs") if k not in f]
            if missing:
                raise ValueError(f"{path} is incomplete: missing dataset(s) {missing}")
            absent = [k for k in ("boundary", "generator", "params", "seed") if k not in f.attrs]
            if absent:
                raise ValueError(
                    f"{path} is incomplete: missing attribute(s) {absent} (a deepcd problem "
                    "file stores the boundary flag of each grid face, the generator, its "
                    "parameters and seed; rewrite it with deepcd.problems.save_problem)"
                )
            flags = f["flags"][...]
            rhs = f["rhs"][...]
            seed = int(f.attrs["seed"])
            return Problem(
                flags,
                rhs,
                tuple(int(v) for v in f.attrs["boundary"]),
                generator=str(f.attrs["generator"]),
                params=json.loads(f.attrs["params"]),
                seed=None if seed < 0 else seed,
                coefficients=read_coefficients(f, path, flags.shape),
            )
    except OSError as err:
        raise ValueError(f"{path} cannot be read as HDF5 (corrupt or truncated?): {err}") from err
