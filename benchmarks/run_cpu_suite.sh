#!/usr/bin/env bash
# The committed CPU benchmarks, in the order they were run. Needs ./scripts/bootstrap.sh first.
# Each writes <dir>/results.json, results.md and plots; scratch problem files are git-ignored.
set -u
cd "$(dirname "$0")/.."
deepcd=.venv/bin/deepcd
# 1. CG per iteration vs scipy and the bandwidth floor (128³ Dirichlet box).
.venv/bin/python benchmarks/cg_kernels.py --n 128 --repeats 3 --out benchmarks/cg_kernels
# 2. Anchors: 128³ Dirichlet box, white-noise rhs (DESIGN.md §8).
$deepcd bench --scene poisson-box --shape 128 --no-progress --out benchmarks/poisson-box-128 \
    --solvers scipy-cg,cg,jacobi,ic0,mic0,amg-sa,amg-rs,amg-sa-cycle,amg-rs-cycle,newton-ic0,newton-amg
# 3. The physical scenes at 64³, every solver.
$deepcd bench --scene smoke-plume --scene smoke-obstacles --scene bunny --scene pool --shape 64 \
    --no-progress --out benchmarks/scenes-64 \
    --solvers cg,jacobi,ic0,mic0,amg-sa,amg-rs,amg-sa-cycle,newton-ic0,newton-amg
# 4. 256³ smoke with obstacles (16.7 M cells), each solver in its own process (peak memory).
$deepcd bench --scene smoke-obstacles --shape 256 --isolate --no-progress \
    --out benchmarks/smoke-obstacles-256 --solvers cg,mic0,amg-sa,amg-rs
# 5. A 2D scene at 1024² (1 M cells).
$deepcd bench --scene smoke-obstacles --shape 1024 --dim 2 --no-progress \
    --out benchmarks/smoke-obstacles-1024-2d --solvers cg,ic0,mic0,amg-sa,amg-rs,newton-amg
# 6. DCDM with the shipped solvers against every solver: 4 scenes at 64³ and 128³, and 2D 1024².
$deepcd bench --scene smoke-plume --scene smoke-obstacles --scene bunny --scene pool \
    --shape 64 --shape 128 --no-progress --out benchmarks/dcdm-cpu \
    --solvers dcdm,dcdm-mic0,cg,jacobi,ic0,mic0,amg-sa,amg-rs,newton-amg
$deepcd bench --scene smoke-obstacles --shape 1024 --dim 2 --no-progress \
    --out benchmarks/dcdm-cpu-2d --solvers dcdm,dcdm-mic0,cg,ic0,mic0,amg-sa,amg-rs,newton-amg
# 7. The shipped solvers on held-out scenes (written into their cards).
.venv/bin/python benchmarks/dcdm_eval.py vcycle-3d --shape 64 --shape 128 --hard-shape 64 \
    --coef-shape 64 --card --update-shipped
.venv/bin/python benchmarks/dcdm_eval.py vcycle-2d --shape 256 --shape 1024 --hard-shape 256 \
    --coef-shape 256 --maxiter 8000 --card --update-shipped
# 8. 100 steps of the 64³ smoke simulation, DCDM projection, CG solving the same projections.
$deepcd simulate --scene smoke-obstacles --shape 64 --steps 100 --method dcdm --compare cg \
    --out benchmarks/simulate-64/run --no-progress
# 9. Hard geometry: baffles, mazes, porous media, splashes, closed pockets (3D 64³/128³, 2D 512²/1024²).
./benchmarks/hard_geometry.sh
# 10. Variable coefficients: two-phase ratios 1-10^4, ghost-fluid surface, cut cells (same sizes).
./benchmarks/variable_coefficient.sh
# 11. Where a DCDM solve spends its time (V-cycle components against their bandwidth floor).
.venv/bin/python benchmarks/cpu_profile.py --shape 64 --shape 128 --shape 256 --repeats 15 --out benchmarks/cpu-profile
.venv/bin/python benchmarks/cpu_profile.py --shape 64 --shape 128 --seed 1 --repeats 15 --out benchmarks/cpu-profile-seed1
# 12. deepcd.memory's malloc settings against glibc's defaults (fresh processes, alternating).
.venv/bin/python benchmarks/malloc_ab.py --shape 128 --shape 256 --rounds 2 --out benchmarks/malloc
.venv/bin/python benchmarks/malloc_ab.py --thp --shape 128 --shape 256 --rounds 2 --out benchmarks/thp
# 13. Level 0 on the grid against on its graph of unknowns (the fine_layout='auto' threshold).
.venv/bin/python benchmarks/fine_layout.py --out benchmarks/fine-layout
# 14. Serial or parallel graph kernels by level size (the SERIAL_BELOW bound).
.venv/bin/python benchmarks/serial_below.py --repeats 200 --out benchmarks/serial-below
# 15. The profile with one thread (what the second thread buys at 64³ and 128³).
DEEPCD_THREADS=1 .venv/bin/python benchmarks/cpu_profile.py --shape 64 --shape 128 --repeats 15 \
    --out benchmarks/cpu-profile-1thread
# 16. The close cases (maze, splash, ghost-fluid splash at 64³ and 512², pool 64³), 5 runs each, medians.
./benchmarks/close_cases.sh
# 17. Coarse levels that are grids: on the grid kernels from what size (the GRID_FORM_MIN bound).
.venv/bin/python benchmarks/grid_form_min.py --out benchmarks/grid-form-min
# 18. How idle threads wait: short spin against passive, quiet and beside a busy loop.
.venv/bin/python benchmarks/wait_policy.py --out benchmarks/wait-policy
# 19. The graph levels' V-cycle from a plan against looked up on every call.
.venv/bin/python benchmarks/graph_plans.py --out benchmarks/graph-plans
# 20. An SPD network's PCG orthogonalized against one stored direction or two (DCDM keeps two).
.venv/bin/python benchmarks/pcg_truncation.py --out benchmarks/pcg-truncation
# 21. DCDM's PCG step: the four passes it was (matvec, dots, projection, step) against its two.
.venv/bin/python benchmarks/loop_passes.py --shape 128 --shape 256 --rounds 15 --out benchmarks/loop-passes
# 22. Level 1's diagonal and links with the whole-cube shortcut against the kernels before it.
.venv/bin/python benchmarks/level1_cubes.py --before 9a2db45 --case smoke-obstacles:128 \
    --case smoke-obstacles:256 --case maze:128 --case porous:128 --out benchmarks/level1-cubes
