"""deepcd.threads: one thread count for numba and torch, and how idle OpenMP threads wait."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepcd import jitcache

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, os
import deepcd, numba
from deepcd.problems import scene
p = scene("smoke-obstacles", (16, 16, 16), seed=0)
out = {"policy": os.environ.get("OMP_WAIT_POLICY"), "spin": os.environ.get("GOMP_SPINCOUNT")}
deepcd.solve(p, method="cg")
out["numba_after_cg"] = numba.get_num_threads()
res = deepcd.solve_result(p, rtol=1e-6)
import torch
out["numba"], out["torch"] = numba.get_num_threads(), torch.get_num_threads()
out["settings_threads"] = res.settings["threads"]
res = deepcd.solve_result(p, rtol=1e-6, threads=1)
out["inside"] = res.settings["threads"]
out["numba_restored"], out["torch_restored"] = numba.get_num_threads(), torch.get_num_threads()
from deepcd import threads
out["env"] = threads.settings()
print(json.dumps(out))
"""


def _probe(**env) -> dict:
    ours = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "DEEPCD_THREADS", "DEEPCD_WAIT")
    full = {k: v for k, v in os.environ.items() if k not in ours}
    full.update(env)
    full["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_one_place_decides_threads_for_numba_and_torch():
    cores = len(os.sched_getaffinity(0))
    out = _probe(DEEPCD_THREADS="1")
    assert out["policy"] is None and out["spin"] == "10000"  # set by importing deepcd
    assert out["env"]["wait"] == "spin"
    assert out["numba_after_cg"] == 1 and out["numba"] == 1 and out["torch"] == 1
    assert out["settings_threads"] == 1 and out["inside"] == 1
    env = out["env"]
    assert env["threads_source"] == "DEEPCD_THREADS" and env["cores_available"] == cores
    assert env["omp_wait_policy_effective"] and len(env["loadavg"]) == 3
    if cores > 1:
        out = _probe()
        assert out["numba"] == cores and out["torch"] == cores
        assert out["inside"] == 1  # solve(threads=1) ...
        assert out["numba_restored"] == cores and out["torch_restored"] == cores  # ... restores


def test_a_users_wait_policy_is_kept_and_bad_counts_are_errors(monkeypatch):
    out = _probe(DEEPCD_THREADS="1", OMP_WAIT_POLICY="ACTIVE")
    assert out["policy"] == "ACTIVE" and out["spin"] is None
    assert out["env"]["wait"] == "environment"
    out = _probe(DEEPCD_THREADS="1", DEEPCD_WAIT="passive")
    assert out["policy"] == "PASSIVE" and out["spin"] is None
    assert out["env"]["wait"] == "passive"
    from deepcd import threads

    for bad in ("0", "two", "2.5", "-1"):
        monkeypatch.setenv("DEEPCD_THREADS", bad)
        with pytest.raises(ValueError, match="DEEPCD_THREADS"):
            threads.decide()
    with pytest.raises(TypeError, match="threads"):
        threads.decide(2.5)


_SHOW_CACHE = """
import os, subprocess, sys
import deepcd
from deepcd.kernels import ell
print(ell.clenshaw_step._cache._cache_path)
child = "import deepcd, numba; print(numba.core.config.CACHE_DIR)"
print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout)
"""


@pytest.mark.parametrize("var", ["OMPI_COMM_WORLD_RANK", "PMI_RANK"])
def test_each_mpi_rank_gets_its_own_numba_cache(tmp_path, var):
    """Under mpiexec (a rank in the environment) numba's cache folder is rank-<r> inside
    NUMBA_CACHE_DIR, for deepcd's kernels, and a child process keeps it rather than nesting
    another; outside MPI nothing changes."""
    env = {k: v for k, v in os.environ.items() if k not in jitcache.RANK_VARS}
    env["NUMBA_CACHE_DIR"] = str(tmp_path)
    env.pop("DEEPCD_RANK_CACHE", None)
    cmd = [sys.executable, "-c", _SHOW_CACHE]
    out = subprocess.run(cmd, env={**env, var: "3"}, capture_output=True, text=True, check=True)
    kernel_dir, child_dir = out.stdout.split("\n")[:2]
    assert kernel_dir.startswith(str(tmp_path / "rank-3"))
    assert child_dir == str(tmp_path / "rank-3")
    plain = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    assert plain.stdout.split("\n")[0].startswith(str(tmp_path))
    assert "rank-" not in plain.stdout


def test_an_unknown_wait_setting_is_an_error_at_the_first_solve():
    code = (
        "import deepcd\nfrom deepcd.problems import scene\n"
        "deepcd.solve(scene('box', (8, 8, 8)), method='cg')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(DEEPCD_WAIT="sometimes", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "DEEPCD_WAIT must be one of spin, passive" in proc.stderr
