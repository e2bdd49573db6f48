#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install deepcd into it.
# CPU machines get PyTorch's CPU build; machines with an NVIDIA GPU get the default CUDA build.
# Environment: DEEPCD_VENV (default .venv), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DEEPCD_VENV:-.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv with $($python --version)"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "bootstrap: NVIDIA GPU found, installing the CUDA build of torch"
        "${pip[@]}" install "torch>=2.4"
    else
        echo "bootstrap: no GPU, installing the CPU build of torch"
        # A CPU wheel on this machine (pip's find-links) first — installed without its
        # dependencies, which then come from the index; else PyTorch's CPU index.
        if "${pip[@]}" install --no-deps --no-index "torch==2.13.0" 2>/dev/null; then
            "${pip[@]}" install "torch==2.13.0"
        else
            "${pip[@]}" install "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu \
                --extra-index-url https://pypi.org/simple
        fi
    fi
fi
echo "bootstrap: installing deepcd and its dependencies"
"${pip[@]}" install -e ".[test]"
