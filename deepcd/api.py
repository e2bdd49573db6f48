"""`solve()`: the scipy-style entry point to every deepcd method."""

from __future__ import annotations

import numbers
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from deepcd.iterative.krylov import Monitor, cg, stationary
from deepcd.iterative.newton import newton
from deepcd.iterative.nullspace import (
    SingularSystemWarning,
    closed_components,
    remove_region_means,
)
from deepcd.iterative.preconditioners import UserPreconditioner, make_preconditioner
from deepcd.iterative.result import SolveResult
from deepcd.kernels.vector import inner, norm
from deepcd.operators import CSROperator, LinearOperatorAdapter, Operator
from deepcd.problems.flags import FLUID, SOLID, normalize_boundary
from deepcd.problems.problem import Problem

METHODS = ("dcdm", "cg", "jacobi", "ic0", "mic0", "amg-sa", "amg-rs", "newton", "mgpcg")
DCDM_SAFEGUARDS = ("none", "jacobi", "mic0")
DEVICES = ("auto", "cpu", "cuda")
NEWTON_HESSIANS = ("jacobi", "ic0", "mic0", "amg-sa", "amg-rs")


@dataclass
class PreparedSystem:
    """A validated system: the operator, b (float64), and its closed regions."""

    op: Operator
    b: np.ndarray
    labels: np.ndarray | None
    n_closed: int
    out_dtype: np.dtype


_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def warn_user(message: str, category: type[Warning]) -> None:
    """warnings.warn attributed to the first caller outside the deepcd package."""
    level, frame = 1, sys._getframe(0)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _check_finite(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or Inf")


def _as_vector(name: str, v, n: int) -> np.ndarray:
    arr = np.asarray(v)
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} must be real; complex systems are not supported")
    if arr.dtype.kind not in "iufb":
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.shape not in ((n,), (n, 1)):
        raise ValueError(f"{name} must have shape ({n},) or ({n}, 1) to match A, got {arr.shape}")
    arr = arr.reshape(n)
    _check_finite(name, arr)
    return arr


def _check_symmetric_sparse(A: sp.csr_matrix, rtol: float = 1e-10) -> None:
    asym = abs(A - A.T)
    scale = abs(A).max()
    if asym.nnz and asym.max() > rtol * scale:
        raise ValueError(
            f"A is not symmetric (max |A - Aᵀ| = {asym.max():.3e}, max |A| = {scale:.3e}); "
            "the deepcd solvers need a symmetric positive (semi)definite matrix"
        )


def _check_symmetric_probe(op: Operator, rtol: float = 1e-8) -> None:
    """Two random probes: u·(Av) == v·(Au) for symmetric A (catches non-symmetry cheaply)."""
    rng = np.random.default_rng(12345)
    u, v = rng.standard_normal(op.n), rng.standard_normal(op.n)
    av, au = op.matvec(v), op.matvec(u)
    lhs, rhs = inner(u, av), inner(v, au)
    scale = norm(u) * norm(av) + norm(v) * norm(au)
    if abs(lhs - rhs) > rtol * max(scale, 1e-300):
        raise ValueError(
            f"A is not symmetric: uᵀAv = {lhs:.6e} but vᵀAu = {rhs:.6e} for random u, v"
        )


def prepare_system(A, b, *, check_symmetry: bool = True) -> PreparedSystem:
    """Validate A and b and wrap A as an operator. See `solve` for what A may be."""
    if isinstance(A, Problem):
        op: Operator = A.stencil
        b = A.b if b is None else b
        if np.shape(b) == A.shape:
            b = A.from_grid(np.asarray(b))
        labels, n_closed = A.closed_regions
        out_dtype = np.dtype(np.float64)
    else:
        if b is None:
            raise TypeError("b is required unless A is a deepcd Problem")
        out_dtype = np.result_type(getattr(A, "dtype", np.float64), np.asarray(b).dtype)
        if isinstance(A, np.ndarray | np.matrix) or sp.issparse(A):
            if A.ndim != 2 or A.shape[0] != A.shape[1]:
                raise ValueError(f"A must be square, got shape {A.shape}")
            if A.dtype.kind == "c":
                raise TypeError("A must be real; complex systems are not supported")
            if A.dtype.kind not in "iufb":
                raise TypeError(f"A must be numeric, got dtype {A.dtype}")
            A = sp.csr_matrix(A, dtype=np.float64)
            A.sum_duplicates()
            _check_finite("A", A.data)
            diag = A.diagonal()
            if np.any(diag < 0):
                row = int(np.flatnonzero(diag < 0)[0])
                raise ValueError(
                    f"A has a negative diagonal entry A[{row}, {row}] = {diag[row]}: "
                    "it is not positive (semi)definite"
                )
            if check_symmetry:
                _check_symmetric_sparse(A)
            op = CSROperator(A)
            labels, n_closed = closed_components(A)
        elif isinstance(A, spla.LinearOperator) or hasattr(A, "matvec"):
            if len(A.shape) != 2 or A.shape[0] != A.shape[1]:
                raise ValueError(f"A must be square, got shape {A.shape}")
            op = LinearOperatorAdapter(A)
            if check_symmetry:
                _check_symmetric_probe(op)
            labels, n_closed = None, 0
        else:
            raise TypeError(
                "A must be a scipy sparse matrix, a dense array, a LinearOperator or a "
                f"deepcd Problem, got {type(A).__name__}"
            )
    b = _as_vector("b", b, op.n)
    out_dtype = np.dtype(np.float32 if out_dtype == np.float32 else np.float64)
    return PreparedSystem(
        op, np.ascontiguousarray(b, dtype=np.float64), labels, n_closed, out_dtype
    )


class DeviceUnavailableError(RuntimeError):
    """A device was asked for that this machine (or this torch build) does not have."""


def resolve_device(device: str) -> str:
    """ "auto" → "cuda" when torch sees a GPU, else "cpu"; "cuda" without one is an error."""
    import torch

    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={device!r} but torch sees no CUDA GPU (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda}); use device='cpu' or 'auto'"
        )
    return str(device)


class NetworkUnusedWarning(UserWarning):
    """DCDM ran without a single network step: it was PCG with the safeguard's direction."""


class GridMismatchWarning(UserWarning):
    """A matrix given with flags= is not (a multiple of) the flags' Laplacian: DCDM's network,
    built from the flags, does not fit A and the solve takes many more iterations."""


@dataclass
class GridCheck:
    """How a matrix A relates to the Laplacian L of the flags it came with.

    scale: s with A = s·L exactly (0 when not); boundary: the faces L was built with;
    inferred: the boundary was read off A's diagonal (no boundary= given); mismatched_rows:
    rows where A differs from s·L by more than 1e-6·s; note: a sentence for the result.
    """

    scale: float
    boundary: tuple[int, ...]
    inferred: bool = False
    mismatched_rows: int = 0
    note: str = ""
    stencil: bool = False  # A was read as a variable-coefficient stencil (`stencil_of_csr`)


def _csr_scale(csr: sp.csr_matrix, diag_l: np.ndarray) -> float:
    """s for A ≈ s·L: minus the mean off-diagonal entry (the boundary only moves the
    diagonal), or the diagonals' ratio when A has no off-diagonal entries."""
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    off = csr.data[csr.indices != rows]
    if off.size:
        return float(-off.mean())
    d = csr.diagonal()
    return float(d[diag_l > 0].mean() / diag_l[diag_l > 0].mean()) if np.any(diag_l > 0) else 0.0


def _bad_rows(diff: sp.csr_matrix, tol: float) -> np.ndarray:
    """bool (n,): the rows of a sparse difference with an entry above tol."""
    diff = diff.tocsr()
    rows = np.repeat(np.arange(diff.shape[0]), np.diff(diff.indptr))
    bad = np.zeros(diff.shape[0], dtype=bool)
    bad[rows[np.abs(diff.data) > tol]] = True
    return bad


def _infer_boundary(diag_a: np.ndarray, flags: np.ndarray) -> tuple[int, ...]:
    """Per face SOLID or AIR, from the diagonal of A/s over the fluid cells: a cell on a face
    has one more non-SOLID neighbour when the outside there is AIR (vectorized; corner and
    edge cells are used only for faces with no other fluid cell)."""
    from deepcd.problems.assembly import stencil_diagonal
    from deepcd.problems.flags import AIR

    ndim = flags.ndim
    extra = diag_a - stencil_diagonal(flags, (SOLID,) * (2 * ndim))
    coords = np.nonzero(flags == FLUID)
    on = [
        coords[face // 2] == (flags.shape[face // 2] - 1 if face % 2 else 0)
        for face in range(2 * ndim)
    ]
    faces_at = np.sum(on, axis=0)
    air = [False] * (2 * ndim)
    later = []
    for face in range(2 * ndim):
        only = on[face] & (faces_at == 1)
        if only.any():
            air[face] = bool(np.median(extra[only]) > 0.5)
        elif on[face].any():
            later.append(face)
    for face in later:  # fluid only on this face's edges: explain what the others leave
        known = sum(on[g].astype(float) * air[g] for g in range(2 * ndim) if g not in later)
        air[face] = bool(np.median((extra - known)[on[face]]) > 0.5)
    return tuple(AIR if a else SOLID for a in air)


def check_grid(A, op: Operator, flags: np.ndarray, boundary) -> GridCheck:
    """Compare A with the Laplacian of (flags, boundary); boundary None: SOLID, or the
    boundary A's diagonal shows when SOLID does not fit. Vectorized: one CSR assembly and
    one sparse difference (a LinearOperator: one random probe)."""
    from deepcd.problems.assembly import laplacian_csr, stencil_diagonal
    from deepcd.problems.flags import FLAG_NAMES

    given = boundary is not None
    bnd = normalize_boundary(SOLID if boundary is None else boundary, flags.ndim)
    L = laplacian_csr(flags, bnd)
    n = L.shape[0]
    if isinstance(op, CSROperator):
        csr = op.csr
        diag_l = L.diagonal()
        s = _csr_scale(csr, diag_l)
        if not s > 0:
            bad = np.ones(n, dtype=bool)
        else:
            bad = _bad_rows(csr - s * L, 1e-6 * s)
        inferred = False
        if bad.any() and not given and s > 0:
            guess = _infer_boundary(csr.diagonal() / s, flags)
            if guess != bnd:
                d_guess = stencil_diagonal(flags, guess).astype(np.float64)
                L_guess = L + sp.diags(d_guess - diag_l, format="csr")
                bad_guess = _bad_rows(csr - s * L_guess, 1e-6 * s)
                if not bad_guess.any():
                    bnd, L, bad, inferred = guess, L_guess, bad_guess, True
        exact = 0.0
        if not bad.any():
            d = L.diagonal()
            if abs(csr - s * L).max() <= 1e-12 * s * max(d.max(), 1.0):
                exact = s
        mismatched = int(bad.sum())
    else:
        rng = np.random.default_rng(2024)
        v = rng.standard_normal(n)
        av, lv = op.matvec(v), L @ v
        vlv = inner(v, lv)
        s = inner(v, av) / vlv if vlv > 0 else 0.0
        err = np.abs(av - s * lv)
        mismatched = int(np.count_nonzero(err > 1e-6 * max(s, 1e-300) * 2 * flags.ndim))
        exact, inferred = 0.0, False  # a probe cannot prove equality: the CPU path
    names = ",".join(FLAG_NAMES[f] for f in bnd)
    note = ""
    if inferred:
        note = f"boundary inferred from A's diagonal: ({names}) (pass boundary= to state it)"
    if mismatched:
        note = (
            f"A differs from the flags' Laplacian (boundary {names}) in {mismatched} of {n} "
            "rows; the network's V-cycle is built from the flags, so it does not fit A: expect "
            "many more iterations (pass the flags and boundary= A was assembled from, or a "
            "deepcd Problem)"
        )
    return GridCheck(exact, bnd, inferred, mismatched, note)


def _grid_problem(A, op: Operator, flags, boundary) -> tuple[Problem, float, GridCheck | None]:
    """The grid DCDM's network works on, the factor s with A = s·L(flags) (0 when A is not
    a multiple of the flags' Laplacian), and how A was checked against it (None: a Problem)."""
    if isinstance(A, Problem):
        if flags is not None:
            raise TypeError("flags= is for a CSR matrix; a Problem carries its own flags")
        if boundary is not None and tuple(normalize_boundary(boundary, A.ndim)) != tuple(
            A.boundary
        ):
            raise ValueError(
                f"boundary={boundary} differs from the Problem's own boundary {A.boundary}; "
                "a Problem carries its boundary (build another with from_flags)"
            )
        return A, 1.0, None
    if flags is None:
        raise ValueError(
            'method="dcdm" needs the grid the matrix came from: pass a deepcd Problem as A '
            "(deepcd.problems.from_flags(flags, b)), or keep the matrix and add flags= (the "
            "int8 cell flags, FLUID=0 cells numbered in C order) and boundary= if the outside "
            'is not SOLID; or pick a grid-free method such as method="mic0" or "amg-sa"'
        )
    from deepcd.problems import from_flags
    from deepcd.problems.flags import validate_flags

    flags = validate_flags(flags)
    n_fluid = int(np.count_nonzero(flags == FLUID))
    if n_fluid != op.n:
        raise ValueError(
            f"flags has {n_fluid} FLUID cells but A has {op.n} rows: the matrix was not "
            "assembled from these flags"
        )
    check = check_grid(A, op, flags, boundary)
    if check.mismatched_rows and isinstance(op, CSROperator):
        # not the flags' Laplacian: a variable-coefficient pressure matrix is read as the
        # stencil it is, and the network's levels are built from it
        from deepcd.problems.coefficients import Coefficients, stencil_of_csr

        try:
            diag, links = stencil_of_csr(op.csr, flags)
        except ValueError as err:
            check.note += f" (A is not read as a grid stencil either: {err})"
        else:
            coefficients = Coefficients.from_stencil(flags, diag, links)
            check.note = (
                "A is not a multiple of the flags' Laplacian: read as a variable-coefficient "
                "stencil on the grid, and the network's levels are built from it"
            )
            check.stencil = True
            problem = from_flags(flags, boundary=check.boundary, coefficients=coefficients)
            return problem, 1.0, check
    return from_flags(flags, boundary=check.boundary), check.scale, check


_SOLVERS: dict = {}  # loaded solvers by (folder, weights file state, device)


def forget_loaded_solvers() -> None:
    """Drop the solvers `solve` has loaded, and with them the levels they built: the next DCDM
    solve loads its network again and builds its levels afresh (`deepcd bench --repeats`)."""
    _SOLVERS.clear()


def _loaded_solver(model, device: str):
    """`load_solver`, once per solver folder and device while its weights file is unchanged:
    the model keeps the levels it built, so the next solve on the same grid (a projection
    every time step) pays no setup."""
    from deepcd.nn.weights import WEIGHTS, load_solver, resolve_solver

    folder = resolve_solver(model)
    info = (folder / WEIGHTS).stat()
    key = (str(folder.resolve()), info.st_mtime_ns, info.st_size, str(device))
    if key not in _SOLVERS:
        if len(_SOLVERS) >= 8:
            _SOLVERS.clear()
        _SOLVERS[key] = load_solver(folder, device=device)
    return _SOLVERS[key]


def _dcdm(
    A, op, b, x0, *, rtol, atol, maxiter, callback, monitor, options, closed=None
) -> SolveResult:
    import torch

    from deepcd import threads

    threads.ensure()  # torch is imported now: give it the same thread count as numba

    from deepcd.iterative.dcdm import dcdm
    from deepcd.iterative.dcdm_torch import dcdm_torch
    from deepcd.nn.direction import NetworkDirection
    from deepcd.nn.weights import default_solver

    problem, scale, check = _grid_problem(
        A, op, options.pop("flags", None), options.pop("boundary", None)
    )
    if check is not None and check.mismatched_rows and not check.stencil:
        warn_user(check.note, GridMismatchWarning)
    requested = options.pop("device", "auto")
    device = resolve_device(requested)
    safeguard = options.pop("safeguard", "none")
    if safeguard not in DCDM_SAFEGUARDS:
        raise ValueError(f"safeguard must be one of {DCDM_SAFEGUARDS}, got {safeguard!r}")
    precision = options.pop("precision", "float32")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of {tuple(dtypes)}, got {precision!r}")
    model = options.pop("model", None)
    if model is None:
        model = default_solver(problem.ndim)
    card: dict = {}
    if isinstance(model, torch.nn.Module):
        net = model.to(device)
    else:
        net, card = _loaded_solver(model, device)
    dim = getattr(net, "dim", None)
    if dim is not None and dim != problem.ndim:
        raise ValueError(
            f"the model is for {dim}D grids but the problem is {problem.ndim}D "
            f"(shape {problem.shape}); pass a {problem.ndim}D model"
        )
    solver_name = card.get("name", type(net).__name__)
    common = dict(rtol=rtol, atol=atol, maxiter=maxiter)
    loop = {key: options.pop(key) for key in ("k", "patience", "stall_window") if key in options}
    if device == "cpu":
        options.pop("check_every", None)
        M = None if safeguard == "none" else make_preconditioner(safeguard, op, closed)
        t_setup = time.perf_counter()  # the network's operator (variable coefficients) too
        direction = NetworkDirection(net, problem, device="cpu", dtype=dtypes[precision])
        cached = direction.prepare()
        hierarchy_s = time.perf_counter() - t_setup
        result = dcdm(
            op,
            b,
            x0,
            direction=direction,
            M=M,
            callback=callback,
            monitor=monitor,
            **loop,
            **common,
        )
    else:
        if callback is not None or monitor is not None:
            raise ValueError(
                "callback/monitor need the iterate on the host every iteration; the CUDA path "
                "keeps it on the GPU (use device='cpu' for per-iteration callbacks)"
            )
        if scale == 0.0:
            raise ValueError(
                "the CUDA path applies A as a stencil on the grid, but A is neither a positive "
                "multiple of the flags' Laplacian nor a symmetric, weakly diagonally dominant "
                "5/7-point stencil with non-positive couplings; use device='cpu' (any SPD A "
                "with a grid works there)"
                + (f": {check.note}" if check is not None and check.note else "")
            )
        result = dcdm_torch(
            problem,
            b,
            x0,
            network=net,
            device=device,
            network_dtype=dtypes[precision],
            safeguard=safeguard,
            scale=scale,
            **loop,
            **({"check_every": options.pop("check_every")} if "check_every" in options else {}),
            **common,
        )
    result.settings.update(
        {
            "device": device,
            "device_requested": requested,
            "model": solver_name,
            "precision": precision,
        }
    )
    if device == "cpu":
        result.setup_s += hierarchy_s  # the network's levels: setup, reported as such
        result.settings["hierarchy_s"] = hierarchy_s
        result.settings["hierarchy_cached"] = cached
    if check is not None:
        result.settings["grid_check"] = {
            "boundary": list(check.boundary),
            "boundary_inferred": check.inferred,
            "scale": check.scale,
            "mismatched_rows": check.mismatched_rows,
            "read_as_stencil": check.stencil,
        }
        if check.note:
            result.message = "; ".join(m for m in (check.note, result.message) if m)
    return result


def _torch_pcg(A, op, b, x0, method, *, rtol, atol, maxiter, callback, monitor, options):
    """CG / Jacobi-PCG / MGPCG with the vectors on a torch device (`krylov_torch`)."""
    from deepcd import threads
    from deepcd.iterative.krylov_torch import pcg_torch

    threads.ensure()

    if callback is not None or monitor is not None:
        raise ValueError(
            "callback/monitor need the iterate on the host every iteration; the torch path "
            "keeps it on the device (drop device= to use the numba CPU path)"
        )
    problem, scale, check = _grid_problem(
        A, op, options.pop("flags", None), options.pop("boundary", None)
    )
    if scale == 0.0:
        raise ValueError(
            "the torch path applies A as a stencil on the grid, but A is neither a positive "
            "multiple of the flags' Laplacian nor a symmetric 5/7-point pressure stencil"
            + (f": {check.note}" if check is not None and check.note else "")
        )
    requested = options.pop("device", "auto")
    device = resolve_device(requested)
    preconditioner = "jacobi" if method == "jacobi" else None
    if method == "mgpcg":
        import torch

        from deepcd.nn.networks import build_network
        from deepcd.nn.weights import default_solver, read_card, resolve_solver

        # the classical geometric V-cycle: the shipped solver's architecture at its
        # initialization (Chebyshev smoothing, linear interpolation, no learned weights)
        card = read_card(resolve_solver(default_solver(problem.ndim)))
        from deepcd.nn.stencil import GridLaplacian

        net = build_network(card["arch"], **card["config"]).to(device).eval()
        operator = GridLaplacian.from_problem(problem, device=device, dtype=torch.float64)

        def preconditioner(r):
            return net(r, operator=operator)

    extra = {"check_every": options.pop("check_every")} if "check_every" in options else {}
    result = pcg_torch(
        problem,
        b,
        x0,
        device=device,
        preconditioner=preconditioner,
        scale=scale,
        rtol=rtol,
        atol=atol,
        maxiter=maxiter,
        method=method,
        **extra,
    )
    result.settings.update({"device_requested": requested, "backend": "torch"})
    return result


def _run_method(
    method: str,
    op: Operator,
    b,
    x0,
    *,
    rtol,
    atol,
    maxiter,
    callback,
    monitor,
    M,
    options,
    A=None,
    closed=None,
) -> SolveResult:
    """Run one method. closed: (labels, count) of op's closed regions when known; IC(0),
    MIC(0) and AMG are then built from the grounded matrix (see `preconditioners`)."""
    common = dict(rtol=rtol, atol=atol, maxiter=maxiter, callback=callback, monitor=monitor)
    if M is not None and method != "cg":
        raise ValueError(f'M= is a user preconditioner for method="cg", not for {method!r}')
    if method == "dcdm":
        return _dcdm(A, op, b, x0, **common, options=options, closed=closed)
    if method == "mgpcg" or (method in ("cg", "jacobi") and "device" in options):
        if M is not None:
            raise ValueError("M= is for the numba CG path; drop device= to use it")
        return _torch_pcg(A, op, b, x0, method, **common, options=options)
    if method == "cg":
        pre = UserPreconditioner(M, op.n) if M is not None else None
        return cg(op, b, x0, M=pre, method="cg" if M is None else "cg+M", **common)
    if method in ("jacobi", "ic0", "mic0"):
        pre = make_preconditioner(method, op, closed, **options)
        return cg(op, b, x0, M=pre, method=method, **common)
    if method in ("amg-sa", "amg-rs"):
        accel = options.pop("accel", "cg")
        if accel not in ("cg", None, "none"):
            raise ValueError(f'accel must be "cg" or None (a standalone cycle), got {accel!r}')
        pre = make_preconditioner(method, op, closed, **options)
        if accel == "cg":
            return cg(op, b, x0, M=pre, method=method, **common)
        return stationary(op, b, x0, M=pre, method=f"{method}-cycle", **common)
    if method == "newton":
        hessian = options.pop("hessian", "ic0")
        if hessian not in NEWTON_HESSIANS:
            raise ValueError(f"hessian must be one of {NEWTON_HESSIANS}, got {hessian!r}")
        newton_opts = {k: options.pop(k) for k in ("gamma0", "max_trials") if k in options}
        H = make_preconditioner(hessian, op, closed, **options)
        return newton(op, b, x0, H=H, method=f"newton-{hessian}", **newton_opts, **common)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


_METHOD_OPTIONS = {
    "dcdm": {
        "model",
        "flags",
        "boundary",
        "device",
        "precision",
        "safeguard",
        "k",
        "patience",
        "stall_window",
        "check_every",
    },
    "cg": {"device", "flags", "boundary", "check_every"},
    "jacobi": {"device", "flags", "boundary", "check_every"},
    "mgpcg": {"device", "flags", "boundary", "check_every"},
    "ic0": set(),
    "mic0": {"tau"},
    "amg-sa": {"accel", "cycle"},
    "amg-rs": {"accel", "cycle"},
    "newton": {"hessian", "gamma0", "max_trials", "tau", "cycle"},
}


def solve_result(
    A,
    b=None,
    x0=None,
    *,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    callback: Callable[[np.ndarray], None] | None = None,
    method: str = "dcdm",
    M=None,
    monitor: Monitor | None = None,
    check_symmetry: bool = True,
    threads: int | None = None,
    **options,
) -> SolveResult:
    """Like `solve`, but return the full `SolveResult` (history, timings, settings)."""
    from deepcd import threads as _threads
    from deepcd.kernels.jit import compile_seconds

    jit_before = compile_seconds()
    with _threads.limited(threads) as n_threads:
        result = _solve_result(
            A,
            b,
            x0,
            rtol=rtol,
            atol=atol,
            maxiter=maxiter,
            callback=callback,
            method=method,
            M=M,
            monitor=monitor,
            check_symmetry=check_symmetry,
            **options,
        )
    result.settings["threads"] = n_threads
    # numba compilation this solve paid (a fresh machine's first solve; 0 once cached)
    result.settings["jit_compile_s"] = compile_seconds() - jit_before
    return result


def _solve_result(
    A, b, x0, *, rtol, atol, maxiter, callback, method, M, monitor, check_symmetry, **options
) -> SolveResult:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    unknown = set(options) - _METHOD_OPTIONS[method]
    if unknown:
        raise TypeError(f"method {method!r} got unexpected options: {', '.join(sorted(unknown))}")
    if not (rtol >= 0 and atol >= 0):
        raise ValueError(f"rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    if maxiter is not None:
        if isinstance(maxiter, bool) or not isinstance(maxiter, numbers.Integral):
            raise TypeError(f"maxiter must be an integer or None, got {maxiter!r}")
        if maxiter < 1:
            raise ValueError(f"maxiter must be >= 1, got {maxiter}")
        maxiter = int(maxiter)
    system = prepare_system(A, b, check_symmetry=check_symmetry)
    op, b = system.op, system.b
    if x0 is not None:
        if isinstance(A, Problem) and np.shape(x0) == A.shape:
            x0 = A.from_grid(np.asarray(x0))  # a pressure grid, like b
        x0 = _as_vector("x0", x0, op.n).astype(np.float64)
    note = ""
    if system.n_closed:
        b = remove_region_means(b, system.labels, system.n_closed)
        note = (
            f"A is singular: {system.n_closed} closed region(s) with no Dirichlet boundary; "
            "b was projected onto the range (mean removed per region) and x normalized to "
            "zero mean per region"
        )
        warn_user(note, SingularSystemWarning)
    result = _run_method(
        method,
        op,
        b,
        x0,
        rtol=rtol,
        atol=atol,
        maxiter=maxiter,
        callback=callback,
        monitor=monitor,
        M=M,
        options=dict(options),
        A=A,
        closed=None if system.labels is None else (system.labels, system.n_closed),
    )
    if method == "dcdm" and result.iterations > 0 and result.settings.get("network_steps", 1) == 0:
        warn_user(
            f"DCDM's network contributed no step in {result.iterations} iterations: this was "
            f"PCG with the safeguard's direction ({result.message or 'no reason recorded'})",
            NetworkUnusedWarning,
        )
    if system.n_closed:
        result.x = remove_region_means(result.x, system.labels, system.n_closed)
        result.message = "; ".join(m for m in (result.message, note) if m)
        result.settings["closed_regions"] = system.n_closed
    result.x = result.x.astype(system.out_dtype, copy=False)
    return result


def solve(
    A,
    b=None,
    x0=None,
    *,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    callback: Callable[[np.ndarray], None] | None = None,
    method: str = "dcdm",
    M=None,
    residuals: list | None = None,
    threads: int | None = None,
    **options,
) -> tuple[np.ndarray, int]:
    """Solve A x = b for a symmetric positive (semi)definite pressure matrix, scipy-style.

    A: a scipy sparse matrix, a dense array, a LinearOperator or a `deepcd.problems.Problem`
    (then b defaults to the problem's right-hand side). b: (n,) or (n, 1).
    Stops when ‖b - Ax‖ <= max(rtol·‖b‖, atol), checked on the true residual.
    method: "dcdm" (default: the Deep Conjugate Direction Method with a shipped trained
    solver; needs the grid — A a Problem, or a matrix with `flags=`), "cg", "jacobi", "ic0",
    "mic0" (PCG), "amg-sa", "amg-rs" (pyamg smoothed
    aggregation / Ruge–Stüben preconditioning CG; `accel=None` runs the cycle standalone),
    "newton" (approximate-Hessian Newton; `hessian="ic0"|"jacobi"|"mic0"|"amg-sa"|"amg-rs"`).
    DCDM options: model (a shipped solver's name, a solver folder, or a network; default the
    shipped one for the grid's dimension), flags/boundary (the grid of a matrix A),
    device ("auto" | "cpu" | "cuda"; settings["device"] says what auto chose), precision of
    the network ("float32" | "bfloat16"), safeguard (the classical direction that guarantees
    convergence: "none" = the residual, "jacobi", "mic0" (CPU only)), k, patience,
    stall_window, check_every (CUDA: host checks every that many iterations). The result's
    settings count network_steps and safeguard_steps.
    "cg"/"jacobi" with `device=` ("cpu" | "cuda" | "auto") run on torch with the vectors on
    that device (the GPU baselines; needs the grid like DCDM); "mgpcg" is PCG with a classical
    geometric multigrid V-cycle (the shipped network's architecture at its initialization, no
    learned weights) on torch, device "auto" by default.
    M: a user preconditioner ≈ A⁻¹ for "cg", as in scipy. callback(xk): once per iteration.
    residuals: a list, filled with the residual 2-norm history (initial residual first).
    threads: numba and torch threads for this solve (default $DEEPCD_THREADS, else the cores
    available; see `deepcd.threads`).

    Returns (x, info): info 0 converged, > 0 the iteration count when not converged,
    < 0 breakdown (-1 A not positive definite, -2 M not positive definite, -3 NaN/Inf,
    -4 no progress). x is float32 when A and b are, float64 otherwise. Singular systems
    (closed regions with no Dirichlet boundary) are solved in the least-squares sense with a
    `SingularSystemWarning`.
    """
    result = solve_result(
        A,
        b,
        x0,
        rtol=rtol,
        atol=atol,
        maxiter=maxiter,
        callback=callback,
        method=method,
        M=M,
        threads=threads,
        **options,
    )
    if residuals is not None:
        residuals[:] = result.residuals.tolist()
    return result.x, result.info
