"""Finding petsc4py and mpi4py, and saying how to install them when they are missing."""

from __future__ import annotations

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
    from petsc4py import PETSc

    return PETSc


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
