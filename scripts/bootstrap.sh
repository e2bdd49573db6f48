#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install deepcd into it.
# CPU machines get PyTorch's CPU build; machines with an NVIDIA GPU get the default CUDA build.
# Environment: DEEPCD_VENV (default .venv; .venv-petsc with --petsc), PYTHON (default python3).
#
# --petsc: also make PETSc usable (deepcd.petsc, the petsc-* benchmark peers) in a venv of its
# own: apt-installs Debian's python3-petsc4py (PETSc 3.18 + hypre 2.26), python3-mpi4py and
# Open MPI when they are missing (as root; else prints the apt command), links them into the
# venv (a .pth file that also sets PETSC_DIR) and pins numpy<2 there (Debian's petsc4py is
# built against numpy 1.x). The default .venv is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
petsc=0
for arg in "$@"; do
    case "$arg" in
        --petsc) petsc=1 ;;
        *) echo "bootstrap: unknown option $arg (only --petsc)" >&2; exit 2 ;;
    esac
done
if [ "$petsc" = 1 ]; then
    venv="${DEEPCD_VENV:-.venv-petsc}"
else
    venv="${DEEPCD_VENV:-.venv}"
fi
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv with $($python --version)"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)

if [ "$petsc" = 1 ]; then
    ./scripts/petsc_env.sh "$venv"
    # Debian's petsc4py needs numpy 1.x: pin it before anything pulls numpy 2 in
    "${pip[@]}" install "numpy>=1.26,<2"
fi

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
if [ "$petsc" = 1 ]; then
    "${pip[@]}" install -e ".[test,petsc]"
    "$venv/bin/python" -c "import deepcd.petsc as p; p.require(); print('bootstrap: petsc4py', p.versions())"
else
    "${pip[@]}" install -e ".[test]"
fi
