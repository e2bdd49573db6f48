"""The fixed-width link layout against the CSR kernels it stands in for."""

from __future__ import annotations

import numpy as np
import pytest

from deepcd.kernels import ell
from deepcd.kernels.aggregate import graph_matvec, small
from deepcd.kernels.smoother import graph_clenshaw_step


def random_graph(n: int, most: int, seed: int):
    """A CSR with 0..most links per node (so some spill past the layout's width)."""
    rng = np.random.default_rng(seed)
    deg = rng.integers(0, most + 1, n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(deg, out=indptr[1:])
    indices = rng.integers(0, n, indptr[-1]).astype(np.int32)
    return indptr, indices, rng.uniform(0.1, 1.0, indptr[-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [None, 1, 2, 6])
@pytest.mark.parametrize("n,most", [(1, 0), (37, 3), (500, 6), (1000, 11), (5000, 4)])
def test_layout_kernels_equal_the_csr_kernels(dtype, width, n, most):
    """Bit for bit at any width: the same links in the same order, padding adding 0 · x_i."""
    indptr, indices, weight = random_graph(n, most, seed=n)
    weight = weight.astype(dtype)
    rng = np.random.default_rng(1)
    b1, b2, h, e, s, d, r = (rng.standard_normal(n).astype(dtype) for _ in range(7))
    laid_out = ell.layout(indptr, indices, width)
    idx, spill, rest_ptr, rest_idx = laid_out
    used = ell.width_for(indptr) if width is None else width
    w, rest_w = ell.weights(indptr, weight, laid_out)
    assert idx.shape == w.shape == (used, n) and idx.dtype == rest_idx.dtype == np.uint32
    assert rest_ptr[-1] == np.maximum(np.diff(indptr) - used, 0).sum()
    np.testing.assert_array_equal(spill, np.flatnonzero(np.diff(indptr) > used))
    for use_b2, use_s in [(False, False), (True, False), (True, True)]:
        want, got = np.empty(n, dtype), np.empty(n, dtype)
        graph_clenshaw_step(b1, b2, h, e, indptr, indices, weight, 0.3, 2.0, use_b2, s, use_s, want)
        args = (e, idx, w, spill, rest_ptr, rest_idx, rest_w, 0.3, 2.0, use_b2, s, use_s, got)
        ell.clenshaw_step(b1, b2, h, *args)
        np.testing.assert_array_equal(got, want)
    ax, got = np.empty(n, dtype), np.empty(n, dtype)
    graph_matvec(b1, d, indptr, indices, weight, ax)
    ell.residual(r, b1, d, idx, w, spill, rest_ptr, rest_idx, rest_w, got)
    np.testing.assert_array_equal(got, r - ax)


@pytest.mark.parametrize(
    "degrees,want",
    [
        ([], 1),
        ([2] * 95 + [3] * 5, 2),  # a maze's corridors: a few junctions spill
        ([2] * 80 + [3] * 20, 3),
        ([6] * 100, 6),  # an open grid's cells
        ([9] * 100, 6),  # never wider than WIDTH
        ([0, 1, 1, 1], 1),
    ],
)
def test_width_for_leaves_at_most_a_sixteenth_spilling(degrees, want):
    indptr = np.concatenate([[0], np.cumsum(degrees)]).astype(np.int64)
    assert ell.width_for(indptr) == want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,most", [(1, 0), (40, 2), (300, 5)])
def test_axis_layout_smoothing_equals_the_csr_one(dtype, n, most):
    """`ell.axis_smooth` on `ell.axis_layout` (two slots per node and axis, the rest spilled)
    gives `aggregate.axis_smooth` on the per-axis CSRs, every axis."""
    from deepcd.kernels.aggregate import axis_csr, axis_smooth

    indptr, indices, weight = random_graph(n, most, seed=n + 7)
    axis = np.random.default_rng(n).integers(0, 3, len(indices)).astype(np.int8)
    x = np.random.default_rng(2).standard_normal(n).astype(dtype)
    csr = axis_csr(indptr, indices, weight.astype(dtype), axis, 3)
    fixed = ell.axis_layout(indptr, indices, weight.astype(dtype), axis, 3)
    for a in range(3):
        want, got = np.empty(n, dtype), np.empty(n, dtype)
        axis_smooth(x, *csr[a], 0.3, want)
        ell.axis_smooth(x, *fixed[a], 0.3, got)
        tol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("n,most", [(0, 0), (1, 0), (40, 2), (300, 5)])
def test_axis_layout_is_the_layout_of_the_per_axis_csrs(n, most):
    """`ell.axis_layout` (one pass over the links) holds exactly `layout` and `weights` of
    `aggregate.axis_csr`'s per-axis CSRs."""
    from deepcd.kernels.aggregate import axis_csr

    indptr, indices, weight = random_graph(n, most, seed=n + 3)
    axis = np.random.default_rng(n + 1).integers(0, 3, len(indices)).astype(np.int8)
    fixed = ell.axis_layout(indptr, indices, weight.astype(np.float32), axis, 3)
    for a, (ip, ix, wa) in enumerate(axis_csr(indptr, indices, weight, axis, 3)):
        laid_out = ell.layout(ip, ix, ell.AXIS_WIDTH)
        w, rest_w = ell.weights(ip, wa.astype(np.float32), laid_out)
        idx, spill, rest_ptr, rest_idx = laid_out
        want_all = (idx, w, spill, rest_ptr, rest_idx, rest_w)
        for got, want in zip(fixed[a], want_all, strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


_CALL_RESIDUAL = """
import sys, numpy as np
from deepcd.kernels import ell
from deepcd.kernels.aggregate import small
x = np.ones(3, np.float32)
idx, w = np.zeros((2, 3), np.uint32), np.ones((2, 3), np.float32)
spill, ptr = np.zeros(0, np.int64), np.zeros(1, np.int64)
ri, rw = np.zeros(0, np.uint32), np.zeros(0, np.float32)
kernel = small(ell.residual, int(sys.argv[1]))
kernel(x, x, x, idx, w, spill, ptr, ri, rw, np.empty(3, np.float32))
print(kernel.stats.cache_hits.most_common(1))
"""


def test_a_serial_copy_never_loads_the_parallel_kernels_cache(tmp_path):
    """numba keys its on-disk cache by function name, line, signature and bytecode, not by
    `parallel`: `small`'s serial copy is filed under its own name, so after it was compiled
    a fresh process's parallel kernel finds no entry (it used to load the serial code)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))

    def run(n: int) -> str:
        cmd = [sys.executable, "-c", _CALL_RESIDUAL, str(n)]
        return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout

    assert run(0) == "[]\n"  # the serial copy: compiled and saved
    assert run(1 << 30) == "[]\n"  # the parallel kernel: no cache hit, compiled itself
    assert run(1 << 30) != "[]\n"  # and its own entry is found the next time
    assert small(ell.residual, 0).py_func.__qualname__ == "residual_serial"


def test_small_reads_the_bound_at_the_call(monkeypatch):
    """`small` takes SERIAL_BELOW as it is when called: the benchmark runner's warm-up sets it
    to 0 to load the parallel kernels, which the timed solves' levels then use."""
    import deepcd.kernels.aggregate as K

    assert small(ell.residual, 5) is not ell.residual
    monkeypatch.setattr(K, "SERIAL_BELOW", 0)
    assert small(ell.residual, 5) is ell.residual
