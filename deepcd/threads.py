"""One place decides how many threads deepcd's numba kernels and torch networks use, and how
their idle threads wait.

Both libraries keep a thread pool per process, by default one thread per core, on OpenMP
(libgomp) here. Between two parallel regions an idle OpenMP thread either spins or sleeps, and
which one matters on both sides:
- spinning long (libgomp's default, ~300,000 spins) steals the cores when anything else runs:
  with one busy-loop process beside it on this project's 2-core machine DCDM at 32³ took 3.2 s
  instead of 0.18 s, CG 0.58 s instead of 0.15 s;
- sleeping at once (`OMP_WAIT_POLICY=PASSIVE`, this module's default until 2026-12-05) makes
  every parallel region wake a sleeping thread, tens of µs each on this VM, and a V-cycle runs
  dozens of regions. `benchmarks/wait-policy` (repeated 64³ solves, a fresh process per
  policy): on a quiet machine a short spin (`GOMP_SPINCOUNT=10000`) was 1.2-2.2x faster
  (DCDM splash 65 -> 48 ms, maze 169 -> 76 ms, MIC(0) 117 -> 95 ms, CG 217 -> 103 ms); beside
  one busy loop it was 1.5-2.7x slower than passive waiting (DCDM splash 70 -> 107 ms, maze
  113 -> 306 ms), not the 17x of the long spin.

So, when deepcd is imported, unless the environment already sets `OMP_WAIT_POLICY` or
`GOMP_SPINCOUNT` (yours win):
- `DEEPCD_WAIT=spin` (the default) sets `GOMP_SPINCOUNT=10000`, `DEEPCD_WAIT=passive` sets
  `OMP_WAIT_POLICY=PASSIVE` — for a machine whose cores other jobs share (or run with
  `DEEPCD_THREADS=1`, which does not wait at all). It only takes effect when deepcd is imported
  before numba/torch load OpenMP; `settings()` says which;
- the thread count is `DEEPCD_THREADS` when set, else the cores this process may run on
  (`os.sched_getaffinity`), and the first solve applies it to both numba and torch;
- `solve(..., threads=N)` runs one solve with N threads and restores the previous counts.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

ENV = "DEEPCD_THREADS"
WAIT_ENV = "DEEPCD_WAIT"
WAITS = ("spin", "passive")
SPIN_COUNT = 10000  # libgomp spins of an idle thread before it sleeps, with DEEPCD_WAIT=spin


def _set_wait() -> str:
    """Set libgomp's wait policy from DEEPCD_WAIT unless the environment has one: returns
    "spin" or "passive" as set here, "environment" when it was the user's, or the unknown
    DEEPCD_WAIT value (nothing set; `ensure()` raises on it)."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return "environment"
    choice = os.environ.get(WAIT_ENV, "").strip().lower() or "spin"
    if choice == "passive":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    elif choice == "spin":
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return choice


_WAIT = _set_wait()
_OPENMP_LOADED_BEFORE = any(m in sys.modules for m in ("torch", "numba"))
_applied: dict[str, int | None] = {"numba": None, "torch": None}
_override: list[int] = []  # the counts of the `limited` blocks being run, innermost last


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _positive(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{what} must be a positive integer, got {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{what} must be a positive integer, got {value!r}") from None
    if n < 1 or str(n) != str(value).strip():
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return n


def decide(threads: int | None = None) -> int:
    """The thread count: `threads`, else $DEEPCD_THREADS, else `available_cores()`."""
    if threads is not None:
        return _positive(threads, "threads")
    env = os.environ.get(ENV, "").strip()
    if env:
        return _positive(env, f"${ENV}")
    return available_cores()


def _set_numba(n: int) -> None:
    import numba

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _set_torch(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def ensure() -> int:
    """Apply `decide()` once per process: to numba now, to torch once torch is imported
    (deepcd imports torch only for DCDM and the torch paths), and the process's malloc
    settings (`deepcd.memory`). Returns the count."""
    from deepcd import memory

    if _WAIT not in (*WAITS, "environment"):
        raise ValueError(
            f"${WAIT_ENV} must be one of {', '.join(WAITS)}, got {os.environ.get(WAIT_ENV)!r}"
        )
    memory.ensure()
    n = decide()
    if _applied["numba"] is None:
        _set_numba(n)
        _applied["numba"] = n
    if _applied["torch"] is None and "torch" in sys.modules:
        _set_torch(_override[-1] if _override else n)  # imported inside a `limited` block
        _applied["torch"] = n
    return _override[-1] if _override else n


@contextlib.contextmanager
def limited(threads: int | None) -> Iterator[int]:
    """Run a block with `threads` threads in numba and torch (None: `ensure()`), then restore
    the counts that were set before."""
    if threads is None:
        yield ensure()
        return
    n = decide(threads)
    ensure()
    import numba

    before_nb = numba.get_num_threads()
    torch = sys.modules.get("torch")
    before_t = torch.get_num_threads() if torch is not None else None
    _set_numba(n)
    if torch is not None:
        _set_torch(n)
    _override.append(n)
    try:
        yield n
    finally:
        _override.pop()
        numba.set_num_threads(before_nb)
        torch_now = sys.modules.get("torch")
        if torch_now is not None:
            torch_now.set_num_threads(before_t if before_t is not None else decide())


def settings() -> dict:
    """What a measurement ran with: threads per library, the wait policy, the load."""
    import numba

    from deepcd import memory

    torch = sys.modules.get("torch")
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "threads": decide(),
        "threads_source": ENV if os.environ.get(ENV, "").strip() else "cores",
        "cores_available": available_cores(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": numba.config.THREADING_LAYER,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "wait": _WAIT,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "omp_wait_policy_effective": not _OPENMP_LOADED_BEFORE,
        "loadavg": load,
        **memory.settings(),
    }
