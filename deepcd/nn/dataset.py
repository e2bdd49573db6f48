"""Training data for DCDM: right-hand sides from the low end of each training matrix's spectrum.

A *recipe* (TOML, see datasets/*.toml) names the training matrices — scenes × shapes × seeds,
some held out for validation, whole matrices at a time — and how to make right-hand sides for
each: Lanczos steps, how many Ritz vectors, samples per matrix, the spectral weighting.
`generate_dataset` writes one HDF5 file, resumably; `PoissonDataset` reads it (numpy only).

Right-hand sides (DESIGN §4, `ritz_rhs`): b = Σ_i c_i y_i over the lowest K kept Ritz vectors
y_i, c_i ~ N(0, 1), the coefficients of the lowest `low_fraction` of them multiplied by
`low_boost`; a fraction `white_fraction` of the samples are instead random vectors in range(A)
("range": Gaussian with the null space removed; "A": A times a Gaussian) so that the whole
spectrum is seen. Every b is normalized to ‖b‖₂ = 1 over the fluid cells.

File layout (format "deepcd-dataset-v1"):
  /                 attrs: format, deepcd_version, recipe (the TOML text), recipe_key (its
                    content as canonical JSON), name, seed, ndim, n_matrices, layout ("grid"),
                    complete
  /matrices/0003    one group per matrix id (4 digits, recipe order); attrs: complete, id, name,
                    scene, shape, seed, params (JSON of every scene parameter used), split
                    ("train"/"val"), boundary, n, samples, Lanczos and rhs statistics;
    flags           int8 grid
    rhs             float32 (samples, *grid): the grid layout the networks take, 0 off FLUID
                    cells, chunked one sample per chunk
    kind            uint8 (samples,): 0 Ritz-combination sample, 1 white (range) sample
    ritz_values     float64: the kept Ritz values, ascending (the first `ritz_used` were used)
Writes go to FILE.partial; a matrix group gets complete=True only after all its data is written
and flushed; a restart keeps complete groups and redoes the others; when every group is done the
file is marked complete and renamed to FILE. (`deepcd.problems.io.atomic_h5` writes under a
per-process name and deletes it on error, which is right for one-shot files but would throw away
finished matrices here, so this module keeps a fixed partial name instead.)

Every random draw comes from a seed derived from the recipe seed and the matrix's own
(scene, shape, seed, params), so a matrix's data does not depend on which other matrices the
recipe lists, on the order, or on whether the run was interrupted: a resumed run gives the same
arrays bit for bit as an uninterrupted one on the same machine.
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser under its PyPI name
    import tomli as tomllib

from deepcd._version import __version__
from deepcd.nn.lanczos import (
    DEFAULT_STEPS,
    DEFAULT_ZERO_RTOL,
    LanczosResult,
    _operator,
    _remove_null,
    lanczos,
)
from deepcd.problems.coefficients import Coefficients
from deepcd.problems.io import read_coefficients, write_coefficients

FORMAT = "deepcd-dataset-v1"
SPLITS = ("train", "val")
KIND_RITZ, KIND_WHITE = 0, 1


# ---------------------------------------------------------------------------------------------
# right-hand sides


def iter_ritz_rhs(
    result: LanczosResult,
    samples: int,
    *,
    A=None,
    seed: int | np.random.SeedSequence = 0,
    ritz_vectors: int | None = None,
    low_fraction: float = 0.55,
    low_boost: float = 9.0,
    white_fraction: float = 0.0,
    white_kind: str = "range",
    batch: int = 64,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (b, kind) batches: b float64 (B, n) unit-norm right-hand sides, kind uint8 (B,).

    result: a Lanczos run on A. ritz_vectors: use the lowest K kept Ritz vectors (None or 0:
    all kept). low_fraction/low_boost: the coefficients of the lowest round(low_fraction · K)
    of them are multiplied by low_boost. white_fraction: that share of the samples (rounded)
    are random vectors in range(A) instead, of `white_kind` "range" (Gaussian, null space
    removed) or "A" (A times a Gaussian); they need A (the operator given to `lanczos`).
    seed: an int or a SeedSequence; the samples do not depend on `batch`.
    """
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 0:
        raise ValueError(f"samples must be an int >= 0, got {samples!r}")
    if not 0.0 <= low_fraction <= 1.0:
        raise ValueError(f"low_fraction must be in [0, 1], got {low_fraction}")
    if not (np.isfinite(low_boost) and low_boost > 0):
        raise ValueError(f"low_boost must be a positive number, got {low_boost}")
    if not 0.0 <= white_fraction <= 1.0:
        raise ValueError(f"white_fraction must be in [0, 1], got {white_fraction}")
    if white_kind not in ("range", "A"):
        raise ValueError(f"white_kind must be 'range' or 'A', got {white_kind!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    kept = result.ritz_values.size
    K = kept if not ritz_vectors else min(int(ritz_vectors), kept)
    n_white = round(white_fraction * samples)
    if K == 0 and n_white < samples:
        raise ValueError("the Lanczos run kept no Ritz vector (every Ritz value was ≈ 0)")
    matvec = nullspace = None
    if n_white:
        if A is None:
            raise ValueError("white_fraction > 0 needs A, the operator the Lanczos run used")
        n, matvec, nullspace = _operator(A)
        if n != result.n:
            raise ValueError(f"A has {n} unknowns, the Lanczos run {result.n}")
        if white_kind == "range" and nullspace is None:
            raise ValueError("white_kind='range' needs the null space: pass a Problem or a matrix")
    n_low = round(low_fraction * K)
    scale = np.ones(K)
    scale[:n_low] = low_boost

    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    mask_ss, coef_ss, white_ss = ss.spawn(3)
    kinds = np.zeros(samples, dtype=np.uint8)
    kinds[np.random.default_rng(mask_ss).permutation(samples)[:n_white]] = KIND_WHITE
    coef_rng = np.random.default_rng(coef_ss)
    white_rng = np.random.default_rng(white_ss)

    for s0 in range(0, samples, batch):
        kind = kinds[s0 : s0 + batch]
        out = np.empty((kind.size, result.n))
        ritz_rows = np.flatnonzero(kind == KIND_RITZ)
        if ritz_rows.size:
            c = coef_rng.standard_normal((ritz_rows.size, K)) * scale
            if ritz_rows.size == kind.size:
                result.ritz_combination(c.T, K, out=out)
            else:
                out[ritz_rows] = result.ritz_combination(c.T, K)
        for row in np.flatnonzero(kind == KIND_WHITE):
            v = white_rng.standard_normal(result.n)
            if white_kind == "A":
                v = np.asarray(matvec(v), dtype=np.float64).reshape(-1)
            else:
                _remove_null(v, nullspace)
            out[row] = v
        norms = np.linalg.norm(out, axis=1)
        if not np.all(norms > 0):
            raise ValueError("a right-hand side came out zero")
        out /= norms[:, None]
        yield out, kind


def ritz_rhs(result: LanczosResult, samples: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """All of `iter_ritz_rhs` at once: (float32 (samples, n), kind uint8 (samples,))."""
    parts = list(iter_ritz_rhs(result, samples, **kwargs))
    if not parts:
        return np.empty((0, result.n), np.float32), np.empty(0, np.uint8)
    return (
        np.concatenate([b.astype(np.float32) for b, _ in parts]),
        np.concatenate([k for _, k in parts]),
    )


# ---------------------------------------------------------------------------------------------
# recipes


@dataclass(frozen=True)
class MatrixSpec:
    """One training matrix of a recipe: a scene on a shape with a seed, in a split."""

    id: int
    scene: str
    shape: tuple[int, ...]
    seed: int
    split: str
    samples: int
    params: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.scene}-{'x'.join(map(str, self.shape))}-s{self.seed}"

    @property
    def group(self) -> str:
        return f"matrices/{self.id:04d}"

    def seed_sequence(self, recipe_seed: int) -> np.random.SeedSequence:
        """Entropy from the recipe seed and this matrix's own identity (not its position)."""
        key = json.dumps([self.scene, list(self.shape), self.seed, self.params], sort_keys=True)
        return np.random.SeedSequence([int(recipe_seed), zlib.crc32(key.encode())])


@dataclass(frozen=True)
class Recipe:
    """A parsed dataset recipe; `text` is the TOML it came from (stored in the dataset)."""

    name: str
    text: str
    seed: int
    ndim: int
    out: str | None
    description: str
    lanczos: dict
    rhs: dict
    compression: str | None
    matrices: tuple[MatrixSpec, ...]

    def split(self, split: str) -> list[MatrixSpec]:
        return [m for m in self.matrices if m.split == split]

    @property
    def key(self) -> str:
        """The recipe's content as canonical JSON: edits to comments or layout keep the key."""
        return json.dumps(tomllib.loads(self.text), sort_keys=True, default=str)


_TOP_KEYS = {"name", "description", "seed", "dim", "out", "lanczos", "rhs", "storage", "matrices"}
_LANCZOS = {
    "steps": DEFAULT_STEPS,
    "zero_rtol": DEFAULT_ZERO_RTOL,
    "basis_dtype": "float32",
    "store": "memory",
    "start": "auto",
}
_RHS = {
    "samples": 1000,
    "ritz_vectors": 0,
    "low_fraction": 0.55,
    "low_boost": 9.0,
    "white_fraction": 0.1,
    "white_kind": "range",
    "batch": 64,
}
_STORAGE = {"compression": "lzf"}
_MATRIX_KEYS = {"scene", "shape", "shapes", "seeds", "val_seeds", "params", "samples"}


def _table(data: dict, key: str, defaults: dict, where: str) -> dict:
    given = data.get(key, {})
    if not isinstance(given, dict):
        raise ValueError(f"{where}: [{key}] must be a table")
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {sorted(unknown)} in [{key}]; known: {sorted(defaults)}"
        )
    out = dict(defaults)
    out.update(given)
    return out


def _int(value, what: str, lo: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{what} must be an int >= {lo}, got {value!r}")
    return value


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Parse and check recipe TOML text; a ValueError names what is wrong."""
    from deepcd.problems import parse_shape, scenes

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{source}: not valid TOML: {err}") from None
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")
    name = str(data.get("name", Path(source).stem))
    seed = _int(data.get("seed", 0), f"{source}: seed")
    ndim = data.get("dim", 3)
    if ndim not in (2, 3):
        raise ValueError(f"{source}: dim must be 2 or 3, got {ndim!r}")
    lz = _table(data, "lanczos", _LANCZOS, source)
    _int(lz["steps"], f"{source}: lanczos.steps", 1)
    if lz["store"] not in ("memory", "disk"):
        raise ValueError(f"{source}: lanczos.store must be 'memory' or 'disk'")
    if lz["basis_dtype"] not in ("float32", "float64"):
        raise ValueError(f"{source}: lanczos.basis_dtype must be 'float32' or 'float64'")
    if lz["start"] not in ("auto", "range", "A"):
        raise ValueError(f"{source}: lanczos.start must be 'auto', 'range' or 'A'")
    rhs = _table(data, "rhs", _RHS, source)
    _int(rhs["samples"], f"{source}: rhs.samples")
    _int(rhs["ritz_vectors"], f"{source}: rhs.ritz_vectors")
    _int(rhs["batch"], f"{source}: rhs.batch", 1)
    for key in ("low_fraction", "white_fraction"):
        if not isinstance(rhs[key], (int, float)) or not 0 <= rhs[key] <= 1:
            raise ValueError(f"{source}: rhs.{key} must be a number in [0, 1]")
    if not isinstance(rhs["low_boost"], (int, float)) or not rhs["low_boost"] > 0:
        raise ValueError(f"{source}: rhs.low_boost must be a positive number")
    if rhs["white_kind"] not in ("range", "A"):
        raise ValueError(f"{source}: rhs.white_kind must be 'range' or 'A'")
    storage = _table(data, "storage", _STORAGE, source)
    compression = storage["compression"]
    if compression not in ("none", "lzf", "gzip"):
        raise ValueError(f"{source}: storage.compression must be 'none', 'lzf' or 'gzip'")

    entries = data.get("matrices")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: needs at least one [[matrices]] entry")
    specs: list[MatrixSpec] = []
    seen: set[str] = set()
    for e, entry in enumerate(entries):
        where = f"{source}: [[matrices]] entry {e + 1}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a table")
        unknown = set(entry) - _MATRIX_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
        scene = entry.get("scene")
        if scene not in scenes():
            raise ValueError(f"{where}: unknown scene {scene!r}; choose from {scenes()}")
        if ("shape" in entry) == ("shapes" in entry):
            raise ValueError(f"{where}: give exactly one of `shape` and `shapes`")
        raw = [entry["shape"]] if "shape" in entry else entry["shapes"]
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"{where}: `shapes` must be a non-empty list")
        shapes = [parse_shape(s if not isinstance(s, list) else tuple(s), ndim) for s in raw]
        for shape in shapes:
            if len(shape) != ndim:
                raise ValueError(f"{where}: shape {shape} is not {ndim}D (the recipe's dim)")
        params = entry.get("params", {})
        if not isinstance(params, dict):
            raise ValueError(f"{where}: params must be a table")
        samples = _int(entry.get("samples", rhs["samples"]), f"{where}: samples")
        seeds = {
            "train": entry.get("seeds", []),
            "val": entry.get("val_seeds", []),
        }
        for split, values in seeds.items():
            if not isinstance(values, list):
                raise ValueError(
                    f"{where}: {'seeds' if split == 'train' else 'val_seeds'} "
                    "must be a list of ints"
                )
            for v in values:
                _int(v, f"{where}: a seed")
        if not seeds["train"] and not seeds["val"]:
            raise ValueError(f"{where}: give `seeds` and/or `val_seeds`")
        for shape in shapes:
            for split in SPLITS:
                for s in seeds[split]:
                    spec = MatrixSpec(len(specs), scene, shape, s, split, samples, dict(params))
                    key = json.dumps([scene, shape, s, params], sort_keys=True)
                    if key in seen:
                        raise ValueError(f"{where}: matrix {spec.name} is listed twice")
                    seen.add(key)
                    specs.append(spec)
    return Recipe(
        name=name,
        text=text,
        seed=seed,
        ndim=ndim,
        out=data.get("out"),
        description=str(data.get("description", "")),
        lanczos=lz,
        rhs=rhs,
        compression=None if compression == "none" else compression,
        matrices=tuple(specs),
    )


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a recipe file. A bare name without .toml also finds datasets/NAME.toml."""
    path = Path(path)
    if not path.exists() and path.suffix != ".toml":
        candidate = Path("datasets") / f"{path}.toml"
        if candidate.exists():
            path = candidate
    if not path.exists():
        raise FileNotFoundError(f"no recipe at {path}")
    return parse_recipe(path.read_text(encoding="utf-8"), str(path))


# ---------------------------------------------------------------------------------------------
# generation


def _partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _open_partial(partial: Path, recipe: Recipe, resume: bool) -> h5py.File:
    """The partial file, continued when it belongs to this recipe, else started anew."""
    if partial.exists() and resume:
        try:
            f = h5py.File(partial, "a")
        except OSError as err:
            warnings.warn(
                f"{partial} cannot be opened ({err}); starting over", RuntimeWarning, stacklevel=3
            )
        else:
            if f.attrs.get("format") == FORMAT and f.attrs.get("recipe_key") == recipe.key:
                return f
            f.close()
            raise ValueError(
                f"{partial} is left from another recipe or is not a deepcd dataset; "
                "run without resume (--no-resume) to start over, or delete it"
            )
    partial.unlink(missing_ok=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    f = h5py.File(partial, "w")
    f.attrs["format"] = FORMAT
    f.attrs["deepcd_version"] = __version__
    f.attrs["recipe"] = recipe.text
    f.attrs["recipe_key"] = recipe.key
    f.attrs["name"] = recipe.name
    f.attrs["seed"] = recipe.seed
    f.attrs["ndim"] = recipe.ndim
    f.attrs["n_matrices"] = len(recipe.matrices)
    f.attrs["layout"] = "grid"
    f.attrs["complete"] = False
    f.create_group("matrices")
    return f


def _is_complete_dataset(path: Path, recipe: Recipe) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return (
                f.attrs.get("format") == FORMAT
                and f.attrs.get("recipe_key") == recipe.key
                and bool(f.attrs.get("complete", False))
            )
    except OSError:
        return False


def _write_matrix(f: h5py.File, spec: MatrixSpec, recipe: Recipe, bars) -> dict:
    """Generate one matrix's data into its group; mark it complete last."""
    from deepcd.problems import FLUID, scene

    problem = scene(spec.scene, spec.shape, seed=spec.seed, **spec.params)
    lz_ss, rhs_ss = spec.seed_sequence(recipe.seed).spawn(2)
    lz = recipe.lanczos
    rhs = recipe.rhs
    g = f.require_group(spec.group)
    g.attrs["complete"] = False
    store = None
    if lz["store"] == "disk":
        store = Path(f.filename).with_name(f"{Path(f.filename).name}.basis-{spec.id:04d}")
    steps = min(int(lz["steps"]), problem.n)
    if bars is not None:
        bars.steps.reset(total=steps)
        bars.steps.set_description(f"lanczos {spec.name}")
    result = lanczos(
        problem,
        steps,
        seed=np.random.default_rng(lz_ss),
        start=lz["start"],
        basis_dtype=lz["basis_dtype"],
        store=store,
        zero_rtol=float(lz["zero_rtol"]),
        progress=bars.step_callback if bars is not None else False,
    )
    with result:
        fluid = np.flatnonzero(problem.flags.ravel() == FLUID)
        g.create_dataset("flags", data=problem.flags, compression="gzip")
        write_coefficients(g, problem.coefficients)
        rhs_ds = g.create_dataset(
            "rhs",
            shape=(spec.samples, *problem.shape),
            dtype=np.float32,
            chunks=(1, *problem.shape) if spec.samples else None,
            compression=recipe.compression,
            shuffle=recipe.compression is not None,
        )
        kinds = np.empty(spec.samples, dtype=np.uint8)
        if bars is not None:
            bars.steps.reset(total=spec.samples)
            bars.steps.set_description(f"rhs {spec.name}")
        s0 = 0
        for b, kind in iter_ritz_rhs(
            result,
            spec.samples,
            A=problem,
            seed=rhs_ss,
            ritz_vectors=int(rhs["ritz_vectors"]) or None,
            low_fraction=float(rhs["low_fraction"]),
            low_boost=float(rhs["low_boost"]),
            white_fraction=float(rhs["white_fraction"]),
            white_kind=rhs["white_kind"],
            batch=int(rhs["batch"]),
        ):
            grid = np.zeros((kind.size, problem.flags.size), dtype=np.float32)
            grid[:, fluid] = b
            rhs_ds[s0 : s0 + kind.size] = grid.reshape(kind.size, *problem.shape)
            kinds[s0 : s0 + kind.size] = kind
            s0 += kind.size
            if bars is not None:
                bars.steps.update(kind.size)
        g.create_dataset("kind", data=kinds)
        ritz = result.ritz_values
        g.create_dataset("ritz_values", data=ritz)
        used = min(int(rhs["ritz_vectors"]) or ritz.size, ritz.size)
        stats = {
            "lanczos_steps": result.steps,
            "lanczos_restarts": len(result.restarts),
            "ritz_kept": int(ritz.size),
            "ritz_used": int(used),
            "ritz_low": round(float(rhs["low_fraction"]) * used),
            "theta_min": float(ritz[0]) if ritz.size else 0.0,
            "theta_max": float(ritz[-1]) if ritz.size else 0.0,
            "white_samples": int(np.count_nonzero(kinds == KIND_WHITE)),
        }
    g.attrs.update(
        {
            "id": spec.id,
            "name": spec.name,
            "scene": spec.scene,
            "shape": np.asarray(spec.shape, dtype=np.int64),
            "seed": spec.seed,
            "recipe_params": json.dumps(spec.params, sort_keys=True),
            "params": json.dumps(problem.params, sort_keys=True),
            "split": spec.split,
            "boundary": np.asarray(problem.boundary, dtype=np.int8),
            "n": problem.n,
            "samples": spec.samples,
            **stats,
        }
    )
    f.flush()
    g.attrs["complete"] = True
    f.flush()
    return stats


class _Bars:
    """Two tqdm bars: matrices, and steps (Lanczos steps, then samples) of the current one."""

    def __init__(self, total: int, done: int):
        from tqdm.auto import tqdm

        self.matrices = tqdm(total=total, initial=done, desc="matrices", unit="matrix")
        self.steps = tqdm(total=0, desc="lanczos", unit="step", leave=False)
        self._done = 0

    def step_callback(self, steps: int) -> None:
        if steps < self._done:
            self._done = 0
        self.steps.update(steps - self._done)
        self._done = steps

    def reset_steps(self) -> None:
        self._done = 0

    def close(self) -> None:
        self.steps.close()
        self.matrices.close()


def generate_dataset(
    recipe: Recipe | str | os.PathLike,
    out: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Generate the dataset a recipe describes into one HDF5 file; returns its path.

    recipe: a `Recipe` or a recipe file. out: the file (default: the recipe's `out`, relative
    to the current directory). resume: continue FILE.partial when it is from this recipe,
    keeping its complete matrices (False: start over); a complete FILE from the same recipe is
    returned as is. progress: tqdm bars on stderr.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if out is None:
        if not recipe.out:
            raise ValueError(f"recipe {recipe.name!r} names no `out` file: pass out=")
        out = recipe.out
    out = Path(out)
    if resume and out.exists() and _is_complete_dataset(out, recipe):
        return out
    partial = _partial_path(out)
    f = _open_partial(partial, recipe, resume)
    bars = None
    try:
        groups = f["matrices"]
        done = 0
        for spec in recipe.matrices:
            key = f"{spec.id:04d}"
            if key in groups:
                if bool(groups[key].attrs.get("complete", False)):
                    done += 1
                    continue
                del groups[key]  # half-written: redo it
        from deepcd.progress import bars_enabled

        if bars_enabled(progress):
            bars = _Bars(len(recipe.matrices), done)
        for spec in recipe.matrices:
            if f"{spec.id:04d}" in groups:
                continue
            if bars is not None:
                bars.reset_steps()
                bars.matrices.set_postfix_str(spec.name)
            _write_matrix(f, spec, recipe, bars)
            if bars is not None:
                bars.matrices.update(1)
        f.attrs["complete"] = True
        f.flush()
    finally:
        if bars is not None:
            bars.close()
        f.close()
    os.replace(partial, out)
    return out


# ---------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class MatrixInfo:
    """What the training code needs of one matrix: its grid and where it came from."""

    id: int
    name: str
    scene: str
    shape: tuple[int, ...]
    seed: int
    split: str
    flags: np.ndarray
    boundary: tuple[int, ...]
    params: dict
    n: int
    samples: int
    coefficients: Coefficients | None = None

    def problem(self, b: np.ndarray | None = None):
        """The matrix as a deepcd `Problem` (right-hand side `b`, default zeros)."""
        from deepcd.problems import Problem

        return Problem(
            self.flags,
            np.zeros(self.n) if b is None else b,
            self.boundary,
            generator=self.scene,
            params=self.params,
            seed=self.seed,
            coefficients=self.coefficients,
        )


class PoissonDataset:
    """Right-hand sides of a generated dataset, as (float32 grid array, matrix id) samples.

    split: None (all), "train" or "val" — whole matrices are in one split. `matrices` maps the
    selected matrix ids to `MatrixInfo` (flags, boundary, ...). numpy only; the file is opened
    lazily in each process, so the object can be handed to worker processes.
    """

    def __init__(self, path: str | os.PathLike, split: str | None = None):
        if split not in (None, *SPLITS):
            raise ValueError(f"split must be None, 'train' or 'val', got {split!r}")
        self.path = Path(path)
        self.split = split
        if not self.path.exists():
            raise FileNotFoundError(f"no dataset at {self.path}")
        self._file: h5py.File | None = None
        self._pid = None
        try:
            with h5py.File(self.path, "r") as f:
                self._read_header(f)
        except OSError as err:
            raise ValueError(
                f"{self.path} cannot be read as HDF5 (corrupt or truncated?): {err}"
            ) from err

    def _read_header(self, f: h5py.File) -> None:
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            raise ValueError(
                f"{self.path} is not a deepcd dataset (format attribute {fmt!r}, "
                f"expected {FORMAT!r})"
            )
        if not bool(f.attrs.get("complete", False)) or "matrices" not in f:
            raise ValueError(f"{self.path} is an incomplete dataset (its generation did not end)")
        self.recipe = str(f.attrs["recipe"])
        self.name = str(f.attrs.get("name", ""))
        self.seed = int(f.attrs["seed"])
        self.deepcd_version = str(f.attrs["deepcd_version"])
        expected = int(f.attrs["n_matrices"])
        groups = f["matrices"]
        if len(groups) != expected:
            raise ValueError(f"{self.path} has {len(groups)} matrices, its header says {expected}")
        self.matrices: dict[int, MatrixInfo] = {}
        counts = []
        for key in sorted(groups):
            g = groups[key]
            where = f"{self.path}: matrix group {key}"
            if not bool(g.attrs.get("complete", False)):
                raise ValueError(f"{where} is incomplete")
            missing = [d for d in ("flags", "rhs", "kind") if d not in g]
            if missing:
                raise ValueError(f"{where} lacks dataset(s) {missing}")
            shape = tuple(int(v) for v in g.attrs["shape"])
            samples = int(g.attrs["samples"])
            if g["rhs"].shape != (samples, *shape) or g["flags"].shape != shape:
                raise ValueError(
                    f"{where}: rhs {g['rhs'].shape} / flags {g['flags'].shape} do not match "
                    f"{samples} samples of shape {shape}"
                )
            split = str(g.attrs["split"])
            if split not in SPLITS:
                raise ValueError(f"{where}: unknown split {split!r}")
            if self.split is not None and split != self.split:
                continue
            if samples:
                g["rhs"][samples - 1]  # the last chunk must be readable (truncation shows here)
            info = MatrixInfo(
                id=int(g.attrs["id"]),
                name=str(g.attrs["name"]),
                scene=str(g.attrs["scene"]),
                shape=shape,
                seed=int(g.attrs["seed"]),
                split=split,
                flags=g["flags"][...],
                boundary=tuple(int(v) for v in g.attrs["boundary"]),
                params=json.loads(g.attrs["params"]),
                n=int(g.attrs["n"]),
                samples=samples,
                coefficients=read_coefficients(g, where, shape),
            )
            self.matrices[info.id] = info
            counts.append((info.id, samples))
        self._ids = np.array([i for i, _ in counts], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum([c for _, c in counts])]).astype(np.int64)

    # -- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(matrix id, sample number within that matrix) of a dataset index."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"index {index} out of range for {size} samples")
        index = int(index) % size
        pos = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return int(self._ids[pos]), index - int(self._offsets[pos])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        """(right-hand side on the grid, float32, 0 off FLUID cells; matrix id)."""
        matrix, sample = self.locate(index)
        try:
            data = self._handle()[f"matrices/{matrix:04d}/rhs"][sample]
        except OSError as err:
            raise ValueError(f"{self.path}: cannot read sample {index} (corrupt?): {err}") from err
        return data, matrix

    def kinds(self, matrix: int) -> np.ndarray:
        """uint8 per sample of a matrix: 0 Ritz combination, 1 white (range) sample."""
        return self._handle()[f"matrices/{matrix:04d}/kind"][...]

    def ritz_values(self, matrix: int) -> np.ndarray:
        return self._handle()[f"matrices/{matrix:04d}/ritz_values"][...]

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> PoissonDataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = None
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"PoissonDataset({str(self.path)!r}, split={self.split!r}, "
            f"matrices={len(self.matrices)}, samples={len(self)})"
        )


__all__ = [
    "FORMAT",
    "MatrixInfo",
    "MatrixSpec",
    "PoissonDataset",
    "Recipe",
    "generate_dataset",
    "iter_ritz_rhs",
    "load_recipe",
    "parse_recipe",
    "ritz_rhs",
]
