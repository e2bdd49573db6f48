"""Lanczos with full reorthogonalization, for the low end of a pressure matrix's spectrum.

`lanczos(A, m)` runs m steps of the symmetric Lanczos process on a symmetric positive
semi-definite operator A (a scipy sparse matrix, a deepcd `Problem`, or any object with
``matvec(x)`` and ``shape``/``n``) from a start vector in range(A). It returns the tridiagonal
matrix T (diagonal ``alpha``, off-diagonal ``beta``), its eigenvalues (the Ritz values) and a
`LanczosResult` that forms Ritz vectors, or any linear combination of them, from the stored
basis without ever holding a dense n × m float64 matrix.

Numerics
  * The three-term recurrence and all inner products run in float64. Basis vectors are stored
    in ``basis_dtype`` (float32 by default, halving memory); the stored, rounded vector is the
    Lanczos vector used by the recurrence, so T is the projection of A on exactly the basis
    that is kept (up to the rounding of one float32 step, ~6e-8 relative per vector).
  * Full reorthogonalization: every new vector is Gram–Schmidt-orthogonalized against all
    stored vectors (block modified Gram–Schmidt, float64 accumulation in a serial numba
    kernel that streams the basis at memory bandwidth), with a second pass when the first
    removed more than 1/√2 of its norm (the DGKS "twice is enough" test).
  * Range(A): for matrices with closed (all-Neumann) regions, each new vector has its mean
    removed per closed region, so the basis stays in range(A) and no Ritz value drifts to 0.
    The start vector is random with that projection applied (``start="range"``), or A times a
    random vector (``start="A"``, the choice when the null space is unknown).
  * Breakdown (β ≈ 0, an invariant subspace was found) restarts from a fresh random vector
    orthogonal to the basis, with β = 0 in T; so with m = rank(A) the Ritz values are all the
    nonzero eigenvalues, repeated ones included. When no new direction is left, it stops early.
  * Ritz values below ``zero_rtol`` × the largest one are treated as zero: their vectors are
    left out of everything `LanczosResult` returns.

Memory (n unknowns, m steps; 64³: n = 262,144, about 1 MiB per float32 vector)
  * basis: m · n · 4 bytes in float32 — 1.0 GiB for m = 1000, 2.0 GiB for m = 2000 at 64³
    (float64: twice that); with ``store=PATH`` it is streamed to an HDF5 file in blocks and
    RAM holds one block of ``block_bytes`` (64 MiB) plus the vectors not yet flushed;
  * T's eigenvectors: m² · 8 bytes (8 MiB for m = 1000, 32 MiB for m = 2000);
  * work: a few float64 n-vectors, and while forming combinations a float64 (batch, n) output
    plus one float64 slab of ``block_bytes``.
  The default m (`DEFAULT_STEPS` = 1000) needs about 1 GiB at 64³: far inside a 24 GiB
  machine. Time is O(n · m²) — the reorthogonalization streams the whole basis once (rarely
  twice) per step — so time, not memory, limits m. Measured at 64³ (smoke-obstacles seed 1,
  n = 247,599) on the 2-core development machine while a benchmark loaded both cores:
  m = 1000: 45 s, peak RSS 1.33 GiB (0.39 GiB of it the interpreter with numpy/scipy/torch);
  m = 2000: 169 s, peak RSS 2.30 GiB. Forming 64 combinations of all Ritz vectors: ~1 s
  (m = 1000), ~2 s (m = 2000).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numba as nb
import numpy as np
import scipy.sparse as sp
from scipy.linalg import eigh_tridiagonal

DEFAULT_STEPS = 1000
DEFAULT_ZERO_RTOL = 1e-7
_GS_BLOCK = 8  # basis rows per Gram–Schmidt block


# ---------------------------------------------------------------------------------------------
# kernels


@nb.njit(fastmath=True, cache=True)
def _gs_pass(Q, k, w, h, block):
    """w -= Q[:k]ᵀ (Q[:k] w), `block` rows at a time (block modified Gram–Schmidt).

    Q is float32 or float64 (>= k, n), w float64 (n,), h float64 (>= k,) gets the coefficients.
    Float64 accumulation. Serial on purpose: one core already streams the basis at the memory
    bandwidth, and a parallel region per block stalls on a busy machine.
    """
    n = w.size
    for j0 in range(0, k, block):
        j1 = min(k, j0 + block)
        for j in range(j0, j1):
            q = Q[j]
            s = 0.0
            for i in range(n):
                s += q[i] * w[i]
            h[j] = s
        for j in range(j0, j1):
            q = Q[j]
            c = h[j]
            for i in range(n):
                w[i] -= c * q[i]


@nb.njit(fastmath=True, cache=True)
def _norm(w):
    """‖w‖₂ (serial: BLAS threads stall on a busy machine, and one core streams fast enough)."""
    s = 0.0
    for i in range(w.size):
        s += w[i] * w[i]
    return np.sqrt(s)


@nb.njit(fastmath=True, cache=True)
def _recurrence(w, q, q_prev, beta_prev):
    """w = A q on entry; returns alpha = q·w and leaves w - alpha q - beta_prev q_prev in w."""
    a = 0.0
    for i in range(w.size):
        a += q[i] * w[i]
    for i in range(w.size):
        w[i] -= a * q[i] + beta_prev * q_prev[i]
    return a


# ---------------------------------------------------------------------------------------------
# operators


def _operator(A) -> tuple[int, Callable[[np.ndarray], np.ndarray], tuple | None]:
    """(n, matvec, nullspace) for a Problem, a sparse matrix or anything with matvec.

    nullspace is (labels, count) of closed regions when known (see deepcd.iterative.nullspace).
    """
    if hasattr(A, "closed_regions") and hasattr(A, "flags") and hasattr(A, "A"):  # a Problem
        csr = A.A
        return csr.shape[0], csr.dot, A.closed_regions
    if sp.issparse(A):
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be square, got shape {A.shape}")
        from deepcd.iterative.nullspace import closed_components

        # scipy's serial CSR product: parallel kernels only stall on a busy 2-core machine
        csr = sp.csr_matrix(A, dtype=np.float64)
        return csr.shape[0], csr.dot, closed_components(csr)
    if hasattr(A, "matvec"):
        if hasattr(A, "shape"):
            if len(A.shape) != 2 or A.shape[0] != A.shape[1]:
                raise ValueError(f"A must be square, got shape {A.shape}")
            n = int(A.shape[0])
        elif hasattr(A, "n"):
            n = int(A.n)
        else:
            raise TypeError("an operator A needs a `shape` or `n` attribute")

        def matvec(x):
            return np.asarray(A.matvec(x), dtype=np.float64).reshape(n)

        return n, matvec, None
    raise TypeError(
        "A must be a scipy sparse matrix, a deepcd Problem, or an object with matvec, "
        f"got {type(A).__name__}"
    )


def _remove_null(v: np.ndarray, nullspace) -> None:
    """In place: v minus its mean over each closed region (no-op without closed regions)."""
    if nullspace is None or nullspace[1] == 0:
        return
    labels, count = nullspace
    inside = labels >= 0
    sums = np.bincount(labels[inside], weights=v[inside], minlength=count)
    sizes = np.bincount(labels[inside], minlength=count)
    v[inside] -= (sums / sizes)[labels[inside]]


# ---------------------------------------------------------------------------------------------
# basis storage


class _Basis:
    """Stored Lanczos vectors (rows). Subclasses: in RAM, or streamed to HDF5."""

    n: int
    k: int = 0
    dtype: np.dtype

    def append(self, v: np.ndarray) -> np.ndarray:
        """Store v (rounded to the basis dtype); return the stored vector as float64."""
        raise NotImplementedError

    def row_blocks(self):
        """Yield (r0, array of rows r0..) covering the k stored vectors in order."""
        raise NotImplementedError

    def column_block(self, c0: int, c1: int) -> np.ndarray:
        """Stored vectors restricted to entries c0:c1, shape (k, c1 - c0)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    # shared algorithms ---------------------------------------------------------------------
    def orthogonalize(self, w: np.ndarray, h: np.ndarray, block: int) -> None:
        """w -= Q (Qᵀ w) over every stored vector (one block-MGS pass)."""
        for r0, rows in self.row_blocks():
            _gs_pass(rows, rows.shape[0], w, h[r0:], block)

    def combine(self, Z: np.ndarray, out: np.ndarray, block_bytes: int) -> None:
        """out[b] = Σ_j Z[j, b] q_j for Z (k, B) float64; out (B, n), any float dtype."""
        width = max(256, block_bytes // (8 * max(self.k, 1)))
        for c0 in range(0, self.n, width):
            c1 = min(self.n, c0 + width)
            slab = self.column_block(c0, c1).astype(np.float64)
            out[:, c0:c1] = Z.T @ slab


class _MemoryBasis(_Basis):
    def __init__(self, n: int, capacity: int, dtype):
        self.n, self.dtype = n, np.dtype(dtype)
        self.Q = np.empty((capacity, n), dtype=self.dtype)  # pages are touched as rows fill

    def append(self, v):
        self.Q[self.k] = v
        self.k += 1
        return self.Q[self.k - 1].astype(np.float64)

    def row_blocks(self):
        yield 0, self.Q[: self.k]

    def column_block(self, c0, c1):
        return self.Q[: self.k, c0:c1]

    @property
    def nbytes(self) -> int:
        return self.k * self.n * self.dtype.itemsize


class _H5Basis(_Basis):
    """Vectors streamed to an HDF5 dataset (capacity, n) in row blocks; RAM holds one block."""

    def __init__(self, path: Path, n: int, capacity: int, dtype, block_bytes: int):
        import h5py

        self.n, self.dtype = n, np.dtype(dtype)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row_bytes = n * self.dtype.itemsize
        self.rows = max(1, min(capacity, block_bytes // row_bytes))
        col_chunk = min(n, max(1, (4 << 20) // (self.dtype.itemsize * min(self.rows, 64))))
        self.file = h5py.File(self.path, "w")
        self.ds = self.file.create_dataset(
            "basis",
            shape=(capacity, n),
            dtype=self.dtype,
            chunks=(min(self.rows, 64, capacity), col_chunk),
        )
        self.tail = np.empty((self.rows, n), dtype=self.dtype)  # vectors not yet flushed
        self.read_buf = np.empty((self.rows, n), dtype=self.dtype)
        self.flushed = 0

    def append(self, v):
        t = self.k - self.flushed
        self.tail[t] = v
        self.k += 1
        out = self.tail[t].astype(np.float64)
        if t + 1 == self.rows:
            self.ds[self.flushed : self.k] = self.tail
            self.flushed = self.k
        return out

    def row_blocks(self):
        for r0 in range(0, self.flushed, self.rows):
            r1 = min(self.flushed, r0 + self.rows)
            buf = self.read_buf[: r1 - r0]
            self.ds.read_direct(buf, np.s_[r0:r1])
            yield r0, buf
        if self.k > self.flushed:
            yield self.flushed, self.tail[: self.k - self.flushed]

    def column_block(self, c0, c1):
        out = np.empty((self.k, c1 - c0), dtype=self.dtype)
        if self.flushed:
            out[: self.flushed] = self.ds[: self.flushed, c0:c1]
        out[self.flushed :] = self.tail[: self.k - self.flushed, c0:c1]
        return out

    @property
    def nbytes(self) -> int:
        return 2 * self.rows * self.n * self.dtype.itemsize

    def close(self):
        if getattr(self, "file", None) is not None:
            self.file.close()
            self.file = None
            self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# result


@dataclass
class LanczosResult:
    """T = tridiag(beta, alpha, beta), its eigen-decomposition, and the stored basis.

    alpha: (k,) diagonal; beta: (k-1,) off-diagonal (0 where the process restarted after a
    breakdown); beta_last: the norm of the residual after the last step (the Ritz residual
    bounds scale with it); restarts: steps at which a fresh start vector was drawn.
    theta/S: all eigenvalues of T ascending and its eigenvectors (k, k).
    `ritz_values`, `ritz_vectors` and `ritz_combination` see only the kept Ritz pairs:
    theta > zero_rtol · max|theta| (Ritz value ≈ 0: null space or rounding, dropped).
    """

    alpha: np.ndarray
    beta: np.ndarray
    beta_last: float
    restarts: list[int]
    theta: np.ndarray
    S: np.ndarray
    zero_rtol: float
    n: int
    basis: _Basis = field(repr=False)
    block_bytes: int = 64 << 20

    @property
    def steps(self) -> int:
        return self.alpha.size

    @property
    def kept(self) -> np.ndarray:
        """Indices into theta of the Ritz pairs kept (Ritz value not ≈ 0), ascending."""
        scale = float(np.max(np.abs(self.theta))) if self.theta.size else 0.0
        return np.flatnonzero(self.theta > self.zero_rtol * scale)

    @property
    def ritz_values(self) -> np.ndarray:
        """Kept Ritz values, ascending."""
        return self.theta[self.kept]

    @property
    def residual_bounds(self) -> np.ndarray:
        """|beta_last · s_last| per kept Ritz pair: ‖A y − θ y‖ in exact arithmetic."""
        return np.abs(self.beta_last * self.S[-1, self.kept])

    def _select(self, which) -> np.ndarray:
        kept = self.kept
        if which is None:
            return kept
        if isinstance(which, (int, np.integer)) and not isinstance(which, bool):
            if which < 0:
                raise ValueError(f"which must be >= 0 Ritz vectors, got {which}")
            return kept[: int(which)]
        idx = np.asarray(which)
        if idx.dtype == bool:
            if idx.shape != kept.shape:
                raise ValueError(f"a boolean `which` must have shape {kept.shape}")
            return kept[idx]
        return kept[np.asarray(idx, dtype=np.intp)]

    def ritz_combination(
        self, coeffs: np.ndarray, which=None, *, out: np.ndarray | None = None, dtype=np.float64
    ) -> np.ndarray:
        """Σ_i coeffs[i, b] y_i for each column b: (B, n), formed as Qᵀ (S c), never Y itself.

        coeffs: (K,) or (K, B) over the Ritz vectors chosen by `which` (None: all kept, an int
        K: the lowest K kept, or indices/boolean mask into the kept ones).
        """
        idx = self._select(which)
        c = np.asarray(coeffs, dtype=np.float64)
        single = c.ndim == 1
        c = c[:, None] if single else c
        if c.shape[0] != idx.size:
            raise ValueError(f"coeffs has {c.shape[0]} rows for {idx.size} Ritz vectors")
        Z = self.S[:, idx] @ c
        if out is None:
            out = np.empty((c.shape[1], self.n), dtype=dtype)
        self.basis.combine(Z, out, self.block_bytes)
        return out[0] if single else out

    def ritz_vectors(self, which=None, *, dtype=np.float32, batch: int = 64) -> np.ndarray:
        """Ritz vectors as rows (K, n), lowest first; `which` as in `ritz_combination`.

        Formed `batch` at a time; the output is the only (K, n) array (float32 by default).
        """
        idx = self._select(which)
        out = np.empty((idx.size, self.n), dtype=dtype)
        for b0 in range(0, idx.size, batch):
            b1 = min(idx.size, b0 + batch)
            self.basis.combine(self.S[:, idx[b0:b1]], out[b0:b1], self.block_bytes)
        return out

    def close(self) -> None:
        """Release the basis (and delete its HDF5 file if it was streamed)."""
        self.basis.close()

    def __enter__(self) -> LanczosResult:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# the process


def lanczos(
    A,
    m: int = DEFAULT_STEPS,
    *,
    v0: np.ndarray | None = None,
    seed: int | np.random.Generator | None = 0,
    start: str = "auto",
    nullspace: tuple[np.ndarray, int] | None = None,
    basis_dtype=np.float32,
    store: str | os.PathLike | None = None,
    block_bytes: int = 64 << 20,
    zero_rtol: float = DEFAULT_ZERO_RTOL,
    breakdown_rtol: float | None = None,
    reorth: str = "auto",
    progress: bool | Callable[[int], None] = False,
) -> LanczosResult:
    """m steps of Lanczos with full reorthogonalization on a symmetric PSD operator A.

    A: scipy sparse matrix, deepcd `Problem` (its CSR form and closed regions are used), or an
        object with ``matvec(x)`` and ``shape`` (or ``n``).
    m: steps (capped at n; fewer when the Krylov space is exhausted).
    v0: start vector; default random from `seed`. It is projected onto range(A) when the null
        space is known.
    start: "range" (random, null space removed: needs `nullspace`, found automatically for
        sparse matrices and Problems), "A" (A times random: lies in range(A) for any operator),
        or "auto" (range when the null space is known, else A).
    nullspace: (labels, count) of closed regions, -1 outside them (deepcd.iterative.nullspace).
    basis_dtype: storage of the basis vectors, float32 (default) or float64.
    store: None keeps the basis in RAM; a path streams it to that HDF5 file (deleted by
        `LanczosResult.close()`), RAM then holds about 2 · block_bytes of it.
    zero_rtol: Ritz values <= zero_rtol · max are ≈ 0 and dropped.
    breakdown_rtol: β <= breakdown_rtol · ‖T‖ counts as a breakdown (restart); default
        100 · eps of the basis dtype.
    reorth: "auto" (second Gram–Schmidt pass when needed), "once", or "twice".
    progress: True for a tqdm bar, or a callable called with the step count after each step.
    """
    n, matvec, null = _operator(A)
    if nullspace is not None:
        null = nullspace
    if null is not None:
        labels = np.asarray(null[0])
        if labels.shape != (n,):
            raise ValueError(f"nullspace labels must have shape ({n},), got {labels.shape}")
        null = (labels, int(null[1]))
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m must be a positive int, got {m!r}")
    if start not in ("auto", "range", "A"):
        raise ValueError(f"start must be 'auto', 'range' or 'A', got {start!r}")
    if start == "auto":
        start = "range" if null is not None else "A"
    if start == "range" and null is None:
        raise ValueError("start='range' needs the null space: pass nullspace=(labels, count)")
    if reorth not in ("auto", "once", "twice"):
        raise ValueError(f"reorth must be 'auto', 'once' or 'twice', got {reorth!r}")
    basis_dtype = np.dtype(basis_dtype)
    if basis_dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"basis_dtype must be float32 or float64, got {basis_dtype}")
    if not zero_rtol >= 0:
        raise ValueError(f"zero_rtol must be >= 0, got {zero_rtol}")
    eps = float(np.finfo(basis_dtype).eps)
    if breakdown_rtol is None:
        breakdown_rtol = 100.0 * eps
    exhausted_rtol = max(1e-6, 100.0 * eps)

    m = int(min(m, n))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    basis: _Basis
    if store is None:
        basis = _MemoryBasis(n, m, basis_dtype)
    else:
        basis = _H5Basis(Path(store), n, m, basis_dtype, block_bytes)

    tick = _progress(progress, m)
    h = np.zeros(m)
    block = _GS_BLOCK

    def orthogonalize(w: np.ndarray, force_twice: bool = False) -> float:
        """Project w off the null space and the basis; return its norm."""
        _remove_null(w, null)
        if basis.k == 0:
            return float(_norm(w))
        before = float(_norm(w))
        basis.orthogonalize(w, h, block)
        after = float(_norm(w))
        if force_twice or reorth == "twice" or (reorth == "auto" and after < 0.7071 * before):
            basis.orthogonalize(w, h, block)
            _remove_null(w, null)
            after = float(_norm(w))
        return after

    def fresh(first: bool) -> tuple[np.ndarray, float, float]:
        """A new random start direction: (w, norm after projection, norm before)."""
        if first and v0 is not None:
            w = np.array(v0, dtype=np.float64).reshape(-1)
            if w.shape != (n,) or not np.all(np.isfinite(w)):
                raise ValueError(f"v0 must be a finite vector of shape ({n},)")
        else:
            w = rng.standard_normal(n)
            if start == "A":
                w = matvec(w)
        before = float(_norm(w))
        after = orthogonalize(w, force_twice=True)
        return w, after, before

    w, norm, before = fresh(first=True)
    if not norm > exhausted_rtol * before:
        basis.close()
        raise ValueError("the start vector has no component in range(A) (is A zero?)")
    alpha: list[float] = []
    beta: list[float] = []
    restarts: list[int] = []
    tnorm = 0.0
    q_prev = None
    beta_last = 0.0
    try:
        q = basis.append(w / norm)
        for j in range(m):
            w = np.array(matvec(q), dtype=np.float64, copy=True).reshape(n)
            if q_prev is None:
                a = float(_recurrence(w, q, q, 0.0))
            else:
                a = float(_recurrence(w, q, q_prev, beta[-1]))
            alpha.append(a)
            b = orthogonalize(w)
            tnorm = max(tnorm, abs(a) + b + (beta[-1] if beta else 0.0))
            if tick is not None:
                tick(j + 1)
            if j == m - 1:
                beta_last = b
                break
            if b <= breakdown_rtol * tnorm:  # invariant subspace: restart or stop
                w, b_new, before = fresh(first=False)
                if not b_new > exhausted_rtol * before:
                    beta_last = 0.0
                    break
                restarts.append(j + 1)
                beta.append(0.0)
                q_prev, q = q, basis.append(w / b_new)
                continue
            beta.append(b)
            q_prev, q = q, basis.append(w / b)
    except BaseException:
        basis.close()
        raise
    finally:
        if hasattr(tick, "close"):
            tick.close()

    a_arr = np.asarray(alpha)
    b_arr = np.asarray(beta[: a_arr.size - 1])
    theta, S = eigh_tridiagonal(a_arr, b_arr) if a_arr.size > 1 else (a_arr.copy(), np.ones((1, 1)))
    return LanczosResult(
        alpha=a_arr,
        beta=b_arr,
        beta_last=float(beta_last),
        restarts=restarts,
        theta=theta,
        S=S,
        zero_rtol=float(zero_rtol),
        n=n,
        basis=basis,
        block_bytes=int(block_bytes),
    )


class _Tick:
    """Adapts a tqdm bar to the step callback."""

    def __init__(self, bar):
        self.bar = bar
        self.done = 0

    def __call__(self, steps: int) -> None:
        self.bar.update(steps - self.done)
        self.done = steps

    def close(self) -> None:
        self.bar.close()


def _progress(progress, m: int):
    if progress is True:
        from tqdm.auto import tqdm

        from deepcd.progress import bars_enabled

        if not bars_enabled():
            return None
        return _Tick(tqdm(total=m, desc="lanczos", unit="step", leave=False))
    if progress is False or progress is None:
        return None
    if callable(progress):
        return progress
    raise TypeError("progress must be a bool or a callable(steps)")


def memory_estimate(n: int, m: int, basis_dtype=np.float32) -> int:
    """Bytes `lanczos` needs for n unknowns and m steps with the basis in RAM (approximate)."""
    itemsize = np.dtype(basis_dtype).itemsize
    return int(m * n * itemsize + 8 * m * m + 12 * 8 * n)


__all__ = ["DEFAULT_STEPS", "LanczosResult", "lanczos", "memory_estimate"]
