"""One place decides how many threads deepcd's numba kernels and torch networks use.

Both libraries keep a thread pool per process, by default one thread per core, and both run
on OpenMP here; with its default wait policy an idle OpenMP thread spins for a while before it
sleeps. DCDM alternates numba (stencil products, smoothing) and torch (transfers) many times
per iteration, so each pool's threads spin while the other pool works, and on a machine whose
cores are also busy with anything else the spinning threads steal the cores outright.
Measured on this project's 2-core machine with one busy-loop process beside it (32³
smoke-obstacles, rtol 1e-6, median of 5 solves): default policy, 2 threads: DCDM 3.18 s,
CG 0.58 s; 1 thread: 0.17 s / 0.14 s; `OMP_WAIT_POLICY=PASSIVE`, 2 threads: 0.18 s / 0.15 s.

So, when deepcd is imported:
- `OMP_WAIT_POLICY=PASSIVE` is set unless the environment already sets it (it only takes
  effect when deepcd is imported before numba/torch load OpenMP; `settings()` says which);
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
_PASSIVE_SET_HERE = "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_wait_policy_effective": not _OPENMP_LOADED_BEFORE,
        "loadavg": load,
        **memory.settings(),
    }
