#!/usr/bin/env bash
# Make Debian's petsc4py and mpi4py importable in a virtual environment: VENV (argument).
# Installs python3-petsc4py, python3-mpi4py and openmpi-bin with apt when petsc4py is not on
# this machine (as root; otherwise prints the command to run). Then writes
# VENV/.../site-packages/deepcd-petsc.pth, which puts Debian's petsc4py on sys.path, sets
# PETSC_DIR (and numba's cache folder, VENV/numba-cache) when unset, and links mpi4py from
# Debian's dist-packages.
set -euo pipefail
venv="${1:?usage: petsc_env.sh VENV}"
petsc_dir="${PETSC_DIR:-}"
find_petsc() {
    local d
    for d in ${PETSC_DIR:-} /usr/lib/petscdir/petsc*/x86_64-linux-gnu-real /usr/lib/petscdir/petsc*/*-real; do
        if [ -d "$d/lib/python3/dist-packages/petsc4py" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}
if ! petsc_dir="$(find_petsc)" || [ ! -d /usr/lib/python3/dist-packages/mpi4py ] \
    || ! command -v mpiexec >/dev/null 2>&1; then
    pkgs=(python3-petsc4py python3-mpi4py openmpi-bin)
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "petsc_env: apt-get install ${pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null
    else
        echo "petsc_env: PETSc not found; run: sudo apt-get install ${pkgs[*]}" >&2
        exit 1
    fi
    petsc_dir="$(find_petsc)"
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# numba's on-disk cache gets a folder of its own: this venv's numpy 1.x must never load a
# kernel that the default venv (numpy 2) compiled into the shared __pycache__ folders
cache="$(cd "$venv" && pwd)/numba-cache"
cat > "$site/deepcd-petsc.pth" <<PTH
$petsc_dir/lib/python3/dist-packages
import os; os.environ.setdefault("PETSC_DIR", "$petsc_dir")
import os; os.environ.setdefault("NUMBA_CACHE_DIR", "$cache")
PTH
for entry in /usr/lib/python3/dist-packages/mpi4py /usr/lib/python3/dist-packages/mpi4py-*.egg-info; do
    [ -e "$entry" ] && ln -sfn "$entry" "$site/$(basename "$entry")"
done
echo "petsc_env: $venv sees petsc4py from $petsc_dir and Debian's mpi4py"
