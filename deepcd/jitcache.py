"""Each MPI rank gets a numba cache folder of its own.

numba writes its on-disk cache without a lock: processes that compile the same kernels at the
same time can leave an index and the machine code it points to from two different writers,
and the next load crashes (numba issue #4807, open). `mpiexec -n N` on a machine whose cache
is cold does exactly that: this project's two-rank PETSc test (tests/test_petsc.py::test_two_ranks)
crashed with SIGSEGV in 4 of 5 runs started from an empty cache, and in none of 3 with a
folder per rank (`rm -rf .venv-petsc/numba-cache` before each). So when deepcd is imported
by a process that an MPI launcher started (its rank in OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK or
MV2_COMM_WORLD_RANK), numba's cache folder becomes `rank-<r>` inside NUMBA_CACHE_DIR (or
inside ~/.cache/deepcd/numba): each rank compiles once, then loads its own.
"""

from __future__ import annotations

import os
import sys

RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")
_MARK = "DEEPCD_RANK_CACHE"  # the folder set here (a child process keeps it, not nests it)


def mpi_rank() -> int | None:
    """This process's rank as its MPI launcher set it, or None outside mpiexec."""
    for var in RANK_VARS:
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return None


def per_rank_cache() -> str | None:
    """Point numba's cache at this rank's folder (see the module docstring); returns it, or
    None outside MPI. Kernels decorated afterwards use it, also when numba was imported
    first (the cache folder is looked up per kernel when it is decorated)."""
    rank = mpi_rank()
    if rank is None:
        return None
    path = os.environ.get(_MARK)
    if not path or os.environ.get("NUMBA_CACHE_DIR") != path:
        base = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
            os.path.expanduser("~"), ".cache", "deepcd", "numba"
        )
        path = os.path.join(base, f"rank-{rank}")
    os.environ["NUMBA_CACHE_DIR"] = os.environ[_MARK] = path
    if "numba" in sys.modules:
        from numba.core import config

        config.CACHE_DIR = path
    return path


per_rank_cache()
