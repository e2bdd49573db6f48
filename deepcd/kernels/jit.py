"""How long numba spent compiling: a process-wide counter fed by numba's event API.

`compile_seconds()` is the wall time of every real compilation so far in this process
(outermost "numba:compile" events only, so a kernel that compiles the functions it calls is
counted once). Loads from the on-disk cache (`cache=True`) are not compilations and cost
milliseconds; a fresh machine's first solve pays the compilation once, later processes do not.
"""

from __future__ import annotations

import threading
import time

from numba.core import event

__all__ = ["compile_seconds"]


class _CompileClock(event.Listener):
    def __init__(self) -> None:
        self.total = 0.0
        self._depth = 0
        self._start = 0.0
        self._lock = threading.Lock()

    def on_start(self, ev: event.Event) -> None:
        with self._lock:
            if self._depth == 0:
                self._start = time.perf_counter()
            self._depth += 1

    def on_end(self, ev: event.Event) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self.total += time.perf_counter() - self._start


_clock = _CompileClock()
event.register("numba:compile", _clock)


def compile_seconds() -> float:
    """Seconds numba has spent compiling in this process (monotonic, float)."""
    return _clock.total
