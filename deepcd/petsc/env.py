"""Finding petsc4py and mpi4py, and saying how to install them when they are missing."""

from __future__ import annotations

import atexit
import gc
import glob
import os
import sys

HINT = (
    "deepcd.petsc needs petsc4py and mpi4py: run ./scripts/bootstrap.sh --petsc (apt installs "
    "Debian's python3-petsc4py, python3-mpi4py and Open MPI, and makes a venv .venv-petsc with "
    "numpy<2 that sees them)"
)


def _debian_paths() -> None:
    """Put Debian's petsc4py on sys.path and set PETSC_DIR when neither is done yet."""
    if os.environ.get("PETSC_DIR") is None:
        found = sorted(glob.glob("/usr/lib/petscdir/petsc*/*-real/lib/python3/dist-packages"))
        if found:
            os.environ["PETSC_DIR"] = found[-1].rsplit("/lib/python3", 1)[0]
    path = os.path.join(os.environ.get("PETSC_DIR", ""), "lib/python3/dist-packages")
    if os.path.isdir(path) and path not in sys.path:
        sys.path.append(path)


def _import():
    _debian_paths()
    import mpi4py  # noqa: F401 - PETSc shares MPI with it
    import petsc4py

    if not getattr(petsc4py, "_deepcd_init", False):
        petsc4py.init(sys.argv[:1])
        petsc4py._deepcd_init = True
        atexit.register(_cleanup_at_exit)
    from petsc4py import PETSc

    return PETSc


def cleanup(comm=None) -> None:
    """Destroy the PETSc objects Python has let go of (petsc4py ≥ 3.18 only queues them):
    `gc.collect()`, then `PETSc.garbage_cleanup(comm)` (default COMM_WORLD). Collective on
    `comm`: with more than one MPI process call it on every rank before the program ends.

    Why: PETSc destroys what is still queued inside PetscFinalize, which petsc4py runs after
    the interpreter has shut down; a queued PC of type python (the deepcd V-cycle) then calls
    back into Python and the process dies with SIGSEGV at exit. On one process deepcd does
    this itself at exit."""
    PETSc = _import()
    gc.collect()
    PETSc.garbage_cleanup(PETSc.COMM_WORLD if comm is None else comm)


def _cleanup_at_exit() -> None:
    # one process only: with several, a collective at exit could wait forever on a rank
    # that is leaving with an error (those programs call cleanup() themselves)
    from petsc4py import PETSc

    if PETSc.Sys.isInitialized() and not PETSc.Sys.isFinalized():
        if PETSc.COMM_WORLD.getSize() == 1:
            cleanup()


def available() -> bool:
    """Whether petsc4py and mpi4py import here (without raising)."""
    try:
        _import()
    except Exception:
        return False
    return True


def require():
    """petsc4py's PETSc module; an ImportError with the install route when it is missing."""
    try:
        return _import()
    except Exception as err:  # ImportError, or numpy 2 against a numpy-1 build
        raise ImportError(f"{HINT} ({type(err).__name__}: {err})") from err


def versions() -> dict:
    """PETSc, petsc4py, mpi4py and MPI versions (needs petsc4py)."""
    PETSc = require()
    import mpi4py
    import petsc4py
    from mpi4py import MPI

    return {
        "petsc": ".".join(map(str, PETSc.Sys.getVersion())),
        "petsc4py": petsc4py.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi": MPI.Get_library_version().split("\n")[0].strip(" \x00"),
    }
