"""deepcd.memory: large arrays come from the heap and freed memory is kept (glibc); numpy
asks for no huge pages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deepcd import memory

PROBE = """
import ctypes, numpy as np
from deepcd import memory
state = memory.ensure()
names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblks
a = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB: above glibc's largest mmap threshold
print(state, libc.mallinfo2().hblks - before)
"""


def _glibc_with_mallinfo2() -> bool:
    return memory._glibc() is not None and hasattr(memory._glibc(), "mallinfo2")


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc ≥ 2.33 only (mallinfo2)")
@pytest.mark.parametrize("choice,state,mapped", [("", "kept", 0), ("system", "system", 1)])
def test_large_arrays_come_from_the_heap_unless_system(choice, state, mapped):
    """In a fresh process: after ensure() a 64 MiB array is no mmap'd block of its own; with
    DEEPCD_MALLOC=system it is (glibc's default)."""
    env = {**os.environ, memory.ENV: choice}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [state, str(mapped)]


def test_bad_setting_is_refused(monkeypatch):
    monkeypatch.setattr(memory, "_state", {"malloc": None, "numpy_hugepage": "numpy"})
    monkeypatch.setenv(memory.ENV, "jemalloc")
    with pytest.raises(ValueError, match="DEEPCD_MALLOC must be 'keep' or 'system'"):
        memory.ensure()


def test_applied_once_and_reported(monkeypatch):
    monkeypatch.setattr(memory, "_state", {"malloc": None, "numpy_hugepage": None})
    monkeypatch.setenv(memory.ENV, "system")
    monkeypatch.setenv(memory.THP_ENV, "numpy")
    assert memory.settings() == {"malloc": "not set yet", "numpy_hugepage": "not set yet"}
    assert memory.ensure() == "system"
    monkeypatch.setenv(memory.ENV, "keep")
    monkeypatch.setenv(memory.THP_ENV, "off")
    assert memory.ensure() == "system"  # once per process
    assert memory.settings() == {"malloc": "system", "numpy_hugepage": "numpy"}


THP_PROBE = """
from numpy._core import multiarray
from deepcd import memory
memory.ensure()
print(memory.settings()["numpy_hugepage"], multiarray._get_madvise_hugepage())
"""


@pytest.mark.parametrize("choice,state,advised", [("", "off", False), ("numpy", "numpy", True)])
def test_numpy_huge_page_advice_is_off_unless_asked_for(choice, state, advised):
    """In a fresh process: after ensure() numpy no longer advises huge pages for its large
    arrays; with DEEPCD_THP=numpy it still does (numpy's default on Linux)."""
    env = {**os.environ, memory.THP_ENV: choice}
    out = subprocess.run(
        [sys.executable, "-c", THP_PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [state, str(advised)]


def test_bad_huge_page_setting_is_refused(monkeypatch):
    monkeypatch.setattr(memory, "_state", {"malloc": "kept", "numpy_hugepage": None})
    monkeypatch.setenv(memory.THP_ENV, "always")
    with pytest.raises(ValueError, match="DEEPCD_THP must be 'off' or 'numpy'"):
        memory.ensure()


@pytest.mark.parametrize(
    "env,malloc,thp",
    [({}, "keep", "off"), ({"DEEPCD_MALLOC": "System", "DEEPCD_THP": " numpy "}, "system", "numpy"),
     ({"DEEPCD_THP": "always"}, "keep", "invalid")],
)  # fmt: skip
def test_requested_reads_the_settings_as_the_first_solve_will(env, malloc, thp, monkeypatch):
    """`memory.requested` (what `deepcd info` prints) reads both settings through the same
    parsing as `ensure`, and reports an invalid value instead of raising."""
    for name in ("DEEPCD_MALLOC", "DEEPCD_THP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    asked = memory.requested()
    assert asked["malloc"] == malloc
    assert asked["numpy_hugepage"].startswith(thp)
    if thp == "invalid":
        assert "DEEPCD_THP" in asked["numpy_hugepage"]
        with pytest.raises(ValueError, match="DEEPCD_THP"):
            memory._choice(memory.THP_ENV, "off", "numpy")
