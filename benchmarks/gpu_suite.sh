#!/usr/bin/env bash
# The GPU suite, in one script for a lent GPU (the `device` tool; DEVELOPERS brief): DCDM with
# the shipped solver, geometric-multigrid PCG, CG and Jacobi-PCG — all on the GPU through
# torch (`device` auto) — and pyamg's AMG-RS and numba CG on the host CPU, on smoke-obstacles,
# bunny and pool at 128³ and 256³, rtol 1e-6. Writes $OUT/gpu-suite/{results.json,results.md,
# *.png} and $OUT/nvidia-smi.txt.
#
# The GPU image has python3 3.12 with torch, numba, scipy, h5py, matplotlib, safetensors and
# tqdm, and no network: carry pyamg as a wheel (here, once):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl pyamg==5.4.1
# then run, with carry [".whl"]:
#   OUT=$OUT ./benchmarks/gpu_suite.sh
# Test on the CPU first at a small size:  OUT=/tmp/g SHAPES=32 ./benchmarks/gpu_suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out/gpu}
SHAPES=${SHAPES:-"128 256"}
SOLVERS=${SOLVERS:-"dcdm,mgpcg,cg-torch,jacobi-torch,cg,amg-rs"}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
(nvidia-smi || echo "no nvidia-smi") > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" | tee "$OUT/device.txt"
shape_args=()
for s in $SHAPES; do shape_args+=(--shape "$s"); done
"$PY" -m deepcd.cli bench --scene smoke-obstacles --scene bunny --scene pool "${shape_args[@]}" \
    --solvers "$SOLVERS" --rtol 1e-6 --no-progress --out "$OUT/gpu-suite"
