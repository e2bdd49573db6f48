"""Freed large arrays are kept for reuse rather than handed back to the OS (glibc malloc).

glibc serves every request above its mmap threshold (at most 32 MiB) with a fresh mmap and
unmaps it on free, so each such array is page-faulted in again on its first write, on every
allocation. A V-cycle at 256³ allocates float32 fields of 64 MiB many times per
application.
Measured on this project's 2-core machine (`benchmarks/malloc_ab.py`, smoke-obstacles, a
fresh process per setting, alternating): a repeated solve on a cached hierarchy takes
0.89–1.06 s against 1.09–1.25 s with glibc's defaults at 128³ and 7.1–7.4 s against
10.1–10.6 s at 256³; the first solve's setup is a tie; the peak memory at 256³ is 7.2–7.4 GiB
against 6.7 GiB.

So the first solve (`deepcd.threads.ensure`) sets `M_MMAP_MAX` = 0 (large blocks come from
the heap too) and `M_TRIM_THRESHOLD` to -1 (freed heap is never trimmed), unless
`DEEPCD_MALLOC=system`. The price: the process keeps the heap of its peak, which later
allocations reuse, instead of returning it. Elsewhere than glibc nothing changes.

It also stops numpy from asking for transparent huge pages on its large arrays (numpy calls
madvise(MADV_HUGEPAGE) on every allocation of 4 MiB or more, where the kernel's THP mode is
"madvise"), unless `DEEPCD_THP=numpy`. With the kernel's defrag also on "madvise", as on
this project's machine, each such fault may compact memory first: a fresh process's first
128³ solve spent more in those faults than the huge pages saved
(`python benchmarks/malloc_ab.py --thp --shape 128 --shape 256 --out benchmarks/thp`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "DEEPCD_MALLOC"
THP_ENV = "DEEPCD_THP"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_NEVER = -1  # M_TRIM_THRESHOLD = -1: never trim (mallopt(3))
_state: dict[str, str | None] = {"malloc": None, "numpy_hugepage": None}


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl, macOS: no such symbol)
        return libc
    except (OSError, AttributeError):
        return None


def _choice(env: str, default: str, other: str) -> str:
    """$env, lower-cased: `default` (also when unset or empty) or `other`; else an error."""
    choice = os.environ.get(env, "").strip().lower() or default
    if choice not in (default, other):
        raise ValueError(f"${env} must be {default!r} or {other!r}, got {choice!r}")
    return choice


def ensure() -> str:
    """Apply the malloc settings once per process; returns what holds: "kept" (set here),
    "system" ($DEEPCD_MALLOC=system) or "unavailable" (not glibc, or mallopt refused).
    numpy's huge-page advice is settled too (`numpy_hugepage()`)."""
    numpy_hugepage()
    if _state["malloc"] is not None:
        return _state["malloc"]
    if _choice(ENV, "keep", "system") == "system":
        _state["malloc"] = "system"
        return "system"
    libc = _glibc()
    ok = libc is not None
    if ok:
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER) == 1
    _state["malloc"] = "kept" if ok else "unavailable"
    return _state["malloc"]


def numpy_hugepage() -> str:
    """Turn off numpy's madvise(MADV_HUGEPAGE) on its large arrays once per process unless
    $DEEPCD_THP=numpy; returns what holds: "off" (set here), "numpy" (numpy's own choice
    left alone) or "unavailable" (this numpy has no such switch)."""
    if _state["numpy_hugepage"] is not None:
        return _state["numpy_hugepage"]
    if _choice(THP_ENV, "off", "numpy") == "numpy":
        _state["numpy_hugepage"] = "numpy"
        return "numpy"
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    switch = getattr(multiarray, "_set_madvise_hugepage", None)
    if switch is None:
        _state["numpy_hugepage"] = "unavailable"
    else:
        switch(False)
        _state["numpy_hugepage"] = "off"
    return _state["numpy_hugepage"]


def requested() -> dict:
    """What the environment asks of the first solve — {"malloc": "keep" | "system",
    "numpy_hugepage": "off" | "numpy"} — read as `ensure` reads it, with an invalid value
    reported as "invalid (...)" rather than raised (`deepcd info` shows it)."""
    out = {}
    for key, env, default, other in (
        ("malloc", ENV, "keep", "system"),
        ("numpy_hugepage", THP_ENV, "off", "numpy"),
    ):
        try:
            out[key] = _choice(env, default, other)
        except ValueError as err:
            out[key] = f"invalid ({err})"
    return out


def settings() -> dict:
    return {
        "malloc": _state["malloc"] or "not set yet",
        "numpy_hugepage": _state["numpy_hugepage"] or "not set yet",
    }
