"""Fully convolutional networks mapping a residual on the grid to a search direction.

Every network maps r of shape (B, 1, *grid) — optionally with the cell flags — to q of shape
(B, 1, *grid), in 2D (Conv2d) or 3D (Conv3d) by `dim`, for any grid size: an axis of odd
length is zero-padded by one cell before each 2× average pooling and the upsampled result is
cropped back, so no size constraint reaches the caller.

    net = build_network("multilevel", dim=3, channels=[4, 8, 16])
    q = net(r, flags)                 # flags: (B, 1, *grid), (B, *grid) or (*grid), ints

When `flags` is given the output is zeroed off FLUID cells. With `use_flags=True` the network
also reads two input channels derived from it — the FLUID mask and the SOLID mask — and then
`flags` is required. Outside the grid the convolutions see zeros (both masks 0: AIR-like).

Every network keeps `.arch` and `.config`, a JSON-serializable dict with which
`build_network(net.arch, **net.config)` rebuilds it exactly (same modules, same state_dict
keys and shapes).

Architectures (`ARCHITECTURES`):

paper-64 / paper-128: the DCDM layout (DESIGN.md §4): a linear 3^d input conv to 16 channels;
    residual pairs at full resolution; one 2× average pool; pairs at the coarse level; nearest
    upsampling plus the fine-level features (additive skip); more pairs; a linear 1×1
    projection to one channel. Pairs (fine, coarse, post) = (2, 3, 2) for paper-64 (97,457
    parameters in 3D) and (3, 5, 3) for paper-128 (152,881). A residual pair is
    x + act(conv₂(act(conv₁(x)))) — ReLU after every conv and the skip added after the
    activation, as in the paper's reference code (its convs are all `relu` except the linear
    first one and the linear 1×1 output).

multilevel: a U-Net/V-cycle whose depth follows the grid. Each axis is halved (with the odd
    padding above) until it is ≤ `coarsest`; an axis that is already small stops being pooled
    (semi-coarsening), so depth = max over axes of the halvings needed. Level l has width
    channels[min(l, len(channels) − 1)]; the modules of every level ≥ len(channels) − 1 are
    the SAME modules (shared weights), so one parameter set serves any depth, i.e. any grid
    size — the property multigrid's flat iteration counts come from (DESIGN §4, "Resolution
    is the hard part"). Per level: `smooth` pre-activation residual convs x + conv(act(x))
    going down, a linear conv after the average pool ("restriction", width l → l+1), at the
    coarsest level the pre then the post block, and going up a linear conv at the coarse
    level, nearest upsampling, addition to the level's pre-smoothed features, and `smooth`
    post residual convs. activation="none" makes the whole network linear (bias defaults to
    False then, so f(a·r + b·s) = a·f(r) + b·f(s) exactly; True otherwise). The shared
    transition (width c_last → c_last) is only used once the grid needs ≥ len(channels)
    halvings; the modules exist (and are counted) at every size.

vcycle: a learned multigrid V-cycle — a linear network that reads the cell flags through its
    operator (it needs `flags`, and `boundary` when the outside is not SOLID) and is symmetric
    positive definite for any parameter values. Levels (`deepcd.nn.multigrid`): the flags'
    pressure Laplacian, then one unknown per connected component of each 2^m block's unknowns
    with the exact Galerkin operator ½·P₀ᵀAP₀, halving as in `multilevel`; the coarsest level
    is solved exactly (dense, ≤ DENSE_MAX unknowns; else `coarse_sweeps` smoothing steps).
    Per level: `smooth` steps of a learned Chebyshev-polynomial smoother of `degree` (see
    `VCycleNet._smoother`), the residual restricted by Pᵀ, the cycle below, the correction
    prolonged by P = S_0⋯S_{d−1}P₀ — the aggregation smoothed along each halved axis through
    the level's links, S_a = I − ω_a L̂_a with ω_a = ½·sigmoid(θ) (¼, linear interpolation, at
    the start) — with a learned weight c > 0, and `smooth` steps again. Levels ≥ `levels` − 1
    share parameters, so one parameter set serves any depth. `spd = True`: DCDM runs it as
    PCG's M. Trained with `--loss pcg`.

`count_parameters(model)` and `flops_per_unknown(model, shape)` (conv multiply-adds per grid
cell of one forward pass, counted with forward hooks on the convs actually executed; bias,
activations, pooling and additions are not counted) describe the cost.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcd.nn.local import LocalWeights
from deepcd.nn.multigrid import GraphLevel, StencilLevel
from deepcd.problems.flags import FLUID, SOLID

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "none": nn.Identity,
}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]()


_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.aten, "mkldnn_convolution")


class _CpuFastConv:
    """Conv forward that sends CPU float32 inputs to oneDNN directly.

    torch's dispatch heuristic picks its slow im2col kernel for a batch-1 Conv3d whose
    channels × first two spatial sizes are small (e.g. 4 channels at 64³), which is 5–8× slower
    than oneDNN there. Same parameters, state_dict and autograd; any other device or dtype takes
    the stock path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _MKLDNN and x.device.type == "cpu" and x.dtype == torch.float32:
            return torch.ops.aten.mkldnn_convolution(
                x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super().forward(x)


class Conv2d(_CpuFastConv, nn.Conv2d):
    pass


class Conv3d(_CpuFastConv, nn.Conv3d):
    pass


def _conv(dim: int, cin: int, cout: int, kernel_size: int, bias: bool = True) -> nn.Module:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    cls = Conv2d if dim == 2 else Conv3d
    return cls(cin, cout, kernel_size, padding=kernel_size // 2, bias=bias)


def _check_dim(dim: int) -> int:
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    return int(dim)


def _pool(x: torch.Tensor, axes: Sequence[bool]) -> torch.Tensor:
    """2× average pooling along the spatial axes flagged in `axes`; an odd axis is first
    zero-padded by one cell at its high end. avg_pool where torch has the kernel; a reshape and
    a mean otherwise (CPU avg_pool3d has no bfloat16 kernel)."""
    nd = x.ndim
    pad = [0] * (2 * (nd - 2))
    for i, (on, n) in enumerate(zip(axes, x.shape[2:], strict=True)):
        if on and n % 2:
            pad[2 * (nd - 3 - i) + 1] = 1
    if any(pad):
        x = F.pad(x, pad)
    if x.device.type != "cpu" or x.dtype in (torch.float32, torch.float64):
        kernel = tuple(2 if on else 1 for on in axes)
        pool = F.avg_pool2d if nd == 4 else F.avg_pool3d
        return pool(x, kernel, kernel)
    split, reduce = list(x.shape[:2]), []
    for on, n in zip(axes, x.shape[2:], strict=True):
        if on:
            split += [n // 2, 2]
            reduce.append(len(split) - 1)
        else:
            split.append(n)
    return x.reshape(split).mean(dim=reduce)


def _upsample(x: torch.Tensor, axes: Sequence[bool], size: Sequence[int]) -> torch.Tensor:
    """Nearest 2× upsampling along the flagged axes, cropped to `size`."""
    scale = tuple(2.0 if on else 1.0 for on in axes)
    y = F.interpolate(x, scale_factor=scale, mode="nearest")
    for i, n in enumerate(size):
        if y.shape[2 + i] != n:
            y = y.narrow(2 + i, 0, n)
    return y


def _flag_batch(flags: torch.Tensor, dim: int, grid: tuple[int, ...]) -> torch.Tensor:
    """flags as (B or 1, 1, *grid)."""
    if flags.ndim == dim:
        flags = flags[None, None]
    elif flags.ndim == dim + 1:
        flags = flags[:, None]
    if flags.ndim != dim + 2 or tuple(flags.shape[2:]) != grid or flags.shape[1] != 1:
        raise ValueError(
            f"flags must have shape (B, 1, *{grid}), (B, *{grid}) or {grid}, "
            f"got {tuple(flags.shape)}"
        )
    return flags


class GridNet(nn.Module):
    """Base of the direction networks: input channels, flag masks, output masking.

    Subclasses build their layers from `self.in_channels` and implement `_body(x)` on
    (B, in_channels, *grid) → (B, 1, *grid) for any grid size.
    """

    arch: str = ""

    def __init__(self, dim: int, use_flags: bool) -> None:
        super().__init__()
        self.dim = _check_dim(dim)
        self.use_flags = bool(use_flags)
        self.in_channels = 3 if self.use_flags else 1
        self.config: dict[str, Any] = {}

    def forward(
        self,
        r: torch.Tensor,
        flags: torch.Tensor | None = None,
        boundary=None,
        *,
        operator=None,
    ) -> torch.Tensor:
        """q (B, 1, *grid) from r (B, 1, *grid); `boundary` (the flag outside each grid face,
        as for `GridLaplacian`) is read only by networks that build the operator. `operator`:
        the system's `GridLaplacian` (its flags stand in for `flags`; a network that builds
        its levels from the operator reads its coefficients)."""
        if flags is None and operator is not None:
            flags = operator.flags
        if r.ndim != self.dim + 2 or r.shape[1] != 1:
            raise ValueError(
                f"r must have shape (B, 1, *grid) with {self.dim} grid axes, got {tuple(r.shape)}"
            )
        grid = tuple(r.shape[2:])
        fluid = None
        x = r
        if flags is not None:
            flags = _flag_batch(flags, self.dim, grid)
            if flags.shape[0] not in (1, r.shape[0]):
                raise ValueError(f"flags batch {flags.shape[0]} does not match r's {r.shape[0]}")
            fluid = (flags == FLUID).to(r.dtype)
            if self.use_flags:
                solid = (flags == SOLID).to(r.dtype)
                expand = (r.shape[0], 1, *grid)
                x = torch.cat([r, fluid.expand(expand), solid.expand(expand)], dim=1)
        elif self.use_flags:
            raise ValueError(f"{self.arch} was built with use_flags=True: pass flags")
        q = self._body(x)
        if fluid is not None:
            q = q * fluid
        return q

    def _body(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, config={self.config}"


class ResidualPair(nn.Module):
    """x + act(conv₂(act(conv₁(x)))): two same-width convs with a skip around them."""

    def __init__(self, dim: int, channels: int, kernel_size: int, activation: str) -> None:
        super().__init__()
        self.conv1 = _conv(dim, channels, channels, kernel_size)
        self.conv2 = _conv(dim, channels, channels, kernel_size)
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.conv2(self.act(self.conv1(x))))


class PaperNet(GridNet):
    """The DCDM paper's network (see the module docstring)."""

    def __init__(
        self,
        dim: int = 3,
        *,
        channels: int = 16,
        kernel_size: int = 3,
        pairs: Sequence[int] = (2, 3, 2),
        activation: str = "relu",
        use_flags: bool = False,
        arch: str = "paper-64",
    ) -> None:
        super().__init__(dim, use_flags)
        pairs = [int(p) for p in pairs]
        if len(pairs) != 3 or min(pairs) < 0:
            raise ValueError(f"pairs must be three counts (fine, coarse, post), got {pairs}")
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        _activation(activation)
        self.arch = arch
        self.config = {
            "dim": self.dim,
            "channels": int(channels),
            "kernel_size": int(kernel_size),
            "pairs": pairs,
            "activation": activation,
            "use_flags": self.use_flags,
        }
        c = int(channels)
        self.lift = _conv(self.dim, self.in_channels, c, kernel_size)

        def block(n: int) -> nn.Sequential:
            return nn.Sequential(
                *(ResidualPair(self.dim, c, kernel_size, activation) for _ in range(n))
            )

        self.fine = block(pairs[0])
        self.coarse = block(pairs[1])
        self.post = block(pairs[2])
        self.project = _conv(self.dim, c, 1, 1)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        axes = [True] * self.dim
        fine = self.fine(self.lift(x))
        coarse = self.coarse(_pool(fine, axes))
        up = _upsample(coarse, axes, fine.shape[2:]) + fine
        return self.project(self.post(up))


class PreResidual(nn.Module):
    """x + conv(act(x)) repeated `n` times (a smoother-like block; linear if act is none)."""

    def __init__(
        self, dim: int, channels: int, kernel_size: int, activation: str, n: int, bias: bool
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            _conv(dim, channels, channels, kernel_size, bias) for _ in range(n)
        )
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(self.act(x))
        return x


def coarsening_plan(shape: Sequence[int], coarsest: int) -> list[tuple[bool, ...]]:
    """Per level, which axes are halved: an axis is halved (ceil) while it is > `coarsest`."""
    if coarsest < 1:
        raise ValueError(f"coarsest must be ≥ 1, got {coarsest}")
    sizes = [int(n) for n in shape]
    plan = []
    while any(n > coarsest for n in sizes):
        axes = tuple(n > coarsest for n in sizes)
        plan.append(axes)
        sizes = [math.ceil(n / 2) if on else n for n, on in zip(sizes, axes, strict=True)]
    return plan


class MultilevelNet(GridNet):
    """A V-cycle-shaped network whose depth follows the grid (see the module docstring)."""

    arch = "multilevel"

    def __init__(
        self,
        dim: int = 3,
        *,
        channels: Sequence[int] = (4, 8, 16),
        kernel_size: int = 3,
        activation: str = "relu",
        coarsest: int = 4,
        smooth: int = 1,
        bias: bool | None = None,
        use_flags: bool = False,
    ) -> None:
        super().__init__(dim, use_flags)
        if bias is None:
            bias = activation != "none"
        widths = [int(c) for c in channels]
        if not widths or min(widths) < 1:
            raise ValueError(f"channels must be a non-empty sequence of widths, got {channels}")
        if smooth < 1:
            raise ValueError(f"smooth must be ≥ 1, got {smooth}")
        if coarsest < 1:
            raise ValueError(f"coarsest must be ≥ 1, got {coarsest}")
        _activation(activation)
        self.config = {
            "dim": self.dim,
            "channels": widths,
            "kernel_size": int(kernel_size),
            "activation": activation,
            "coarsest": int(coarsest),
            "smooth": int(smooth),
            "bias": bool(bias),
            "use_flags": self.use_flags,
        }
        self.widths = widths
        self.coarsest = int(coarsest)
        J = len(widths)
        k, d = int(kernel_size), self.dim
        nxt = [widths[min(i + 1, J - 1)] for i in range(J)]
        b = bool(bias)
        self.lift = _conv(d, self.in_channels, widths[0], k, b)
        self.pre = nn.ModuleList(PreResidual(d, w, k, activation, smooth, b) for w in widths)
        self.post = nn.ModuleList(PreResidual(d, w, k, activation, smooth, b) for w in widths)
        self.down = nn.ModuleList(_conv(d, widths[i], nxt[i], k, b) for i in range(J))
        self.up = nn.ModuleList(_conv(d, nxt[i], widths[i], k, b) for i in range(J))
        self.project = _conv(d, widths[0], 1, 1, b)

    def _level(self, level: int) -> int:
        return min(level, len(self.widths) - 1)

    def depth(self, shape: Sequence[int]) -> int:
        """Number of coarsenings used on a grid of this shape."""
        return len(coarsening_plan(shape, self.coarsest))

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        plan = coarsening_plan(x.shape[2:], self.coarsest)
        x = self.lift(x)
        skips = []
        for level, axes in enumerate(plan):
            i = self._level(level)
            x = self.pre[i](x)
            skips.append(x)
            x = self.down[i](_pool(x, axes))
        i = self._level(len(plan))
        x = self.post[i](self.pre[i](x))
        for level in reversed(range(len(plan))):
            i = self._level(level)
            skip = skips[level]
            x = _upsample(self.up[i](x), plan[level], skip.shape[2:]) + skip
            x = self.post[i](x)
        return self.project(x)


class VCycleNet(GridNet):
    """A learned multigrid V-cycle, symmetric positive definite for any parameters (see the
    module docstring)."""

    arch = "vcycle"
    spd = True  # linear, symmetric positive definite for any parameters: DCDM runs it as PCG's M

    def __init__(
        self,
        dim: int = 3,
        *,
        levels: int = 3,
        degree: int = 3,
        smooth: int = 2,
        coarse_sweeps: int = 8,
        coarsest: int = 4,
        local: int = 0,
        use_flags: bool = False,
    ) -> None:
        super().__init__(dim, False)
        if use_flags:
            raise ValueError(
                "vcycle reads the cell flags through its operator; use_flags is not used"
            )
        for name, value in (
            ("levels", levels),
            ("degree", degree),
            ("smooth", smooth),
            ("coarse_sweeps", coarse_sweeps),
            ("coarsest", coarsest),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {value}")
        if int(local) < 0:
            raise ValueError(f"local must be ≥ 0 (0: no local weights), got {local}")
        self.config = {
            "dim": self.dim,
            "levels": int(levels),
            "degree": int(degree),
            "smooth": int(smooth),
            "coarse_sweeps": int(coarse_sweeps),
            "coarsest": int(coarsest),
            "use_flags": False,
        }
        if int(local):  # only when used: older cards and state_dicts stay as they are
            self.config["local"] = int(local)
        self.coarsest = int(coarsest)
        self.smooth = int(smooth)
        self.coarse_sweeps = int(coarse_sweeps)
        d, J = self.dim, int(levels)
        # smoother polynomial weights (logits of a softmax), equal at the start
        self.smoothers = nn.Parameter(torch.zeros(J + 1, int(degree)))
        # per level and axis, the prolongation's smoothing weight ω = ½·sigmoid(θ) ∈ (0, ½):
        # symmetric along each axis and positive by construction, ¼ (linear) at the start
        self.transfers = nn.Parameter(torch.zeros(J, d))
        # coarse-correction weights c = softplus(θ) > 0, starting at 1
        self.corrections = nn.Parameter(torch.full((J,), math.log(math.e - 1.0)))
        # smoother damping and transfer weights per unknown and link, from the local stencil
        self.local = LocalWeights(int(local)) if int(local) else None
        self._cache: tuple | None = None

    # -- the smoother ---------------------------------------------------------------------------
    def _smoother(self, level, y: torch.Tensor, logits: torch.Tensor, scale=None) -> torch.Tensor:
        """S y for the learned polynomial smoother of `level` (a `StencilLevel` on the grid,
        y (B, 1, *g), or a `GraphLevel`, y (N, C)). scale: (g·D)^-½ in the level's layout
        when local weights damp the smoother (`deepcd.nn.local`; D^-½ without).

        With Â = D^-½ A D^-½ (spectrum in [0, 2] on every level: all are weakly diagonally
        dominant), a smoothing step x ← x + S(b − Ax) multiplies the error, in Â's eigenbasis,
        by r(λ) = Σ_j w_j T_j(1 − cλ), j = 1…degree, with Chebyshev polynomials T_j, weights
        w = softmax(logits) and c = 1 − 2⁻⁸. Since r(0) = 1, S = D^-½ q(Â) D^-½ with the
        polynomial q(λ) = (1 − r(λ))/λ, applied by the recurrence of U_j = (1 − T_j)/λ:
        U_0 = 0, U_1 = c, U_{j+1} = 2c + 2(1 − cÂ)U_j − U_{j−1}. For λ ∈ (0, 2],
        |1 − cλ| < 1 so |r(λ)| < 1: every smoothing step is a strict A-norm contraction,
        whatever the weights. With that, positive coarse-correction weights and an SPD
        coarsest solve the symmetric V-cycle is positive definite for ANY prolongation — the
        coarse correction I − c·P M_c Pᵀ A never increases the A-norm when M_c is SPD, by
        induction from the coarsest level — so DCDM with it never meets an indefinite
        preconditioner.
        """
        c = 1.0 - 2.0**-8
        if _fast(y, logits):
            if isinstance(level, GraphLevel):
                return self._smoother_graph_fused(level, y, logits, c, scale)
            return self._smoother_fused(level, y, logits, c, scale)
        s = (level.inv_sqrt_diag if scale is None else scale).to(y.dtype)
        w = torch.softmax(logits, dim=0).to(y.dtype)
        hat = s * y
        u_prev = torch.zeros_like(hat)
        u = c * hat
        q = w[0] * u
        for j in range(1, w.shape[0]):
            a_u = s * level.apply(s * u)
            u, u_prev = 2.0 * c * hat + 2.0 * (u - c * a_u) - u_prev, u
            q = q + w[j] * u
        return s * q

    def _grid_arrays(self, level, dt: torch.dtype):
        """(s, diag, [lx, ly, lz]) of a grid level as 3D numpy arrays in dt (cached; 2D grids
        as (1, nx, ny) with an empty x-axis face array)."""
        key = ("grid", dt)
        if key not in level.cache:
            grid = (1,) * (3 - self.dim) + tuple(level.shape)

            def view(t: torch.Tensor, shape) -> np.ndarray:
                return t.to(dt).contiguous().reshape(shape).numpy()

            links = [view(t, (1,) * (3 - self.dim) + tuple(t.shape[2:])) for t in level.links]
            if self.dim == 2:  # the unused x-axis faces of a (1, nx, ny) view: empty
                links.insert(0, np.zeros((0, *grid[1:]), dtype=links[0].dtype))
            level.cache[key] = (view(level.inv_sqrt_diag, grid), view(level.diag, grid), links)
        return level.cache[key]

    def _smoother_fused(self, level, y: torch.Tensor, logits: torch.Tensor, c: float, scale):
        """`_smoother` on the grid: Clenshaw on the normalized stencil (`deepcd.nn.fastpath`),
        one fused numba pass per polynomial degree."""
        from deepcd.kernels.smoother import clenshaw_step
        from deepcd.nn.fastpath import clenshaw_coefficients, normalized_grid, smooth

        if level.diag.shape[0] != 1 or y.shape[0] != 1:
            raise ValueError("the fused grid smoother takes one field")
        grid = (1,) * (3 - self.dim) + tuple(y.shape[2:])  # 2D as (1, nx, ny)
        s, e, links = normalized_grid(level, scale, self.dim, y.dtype)
        w = torch.softmax(logits.detach().to(torch.float64), dim=0).numpy()
        hat = s * y.contiguous().numpy().reshape(grid)
        out = smooth(clenshaw_step, grid, hat, clenshaw_coefficients(w, c), s, (e, *links))
        return torch.from_numpy(out).reshape(y.shape)

    def _smoother_graph_fused(self, level, y: torch.Tensor, logits: torch.Tensor, c: float, scale):
        """`_smoother` on a graph level: Clenshaw on the normalized links (one column)."""
        from deepcd.kernels.aggregate import small
        from deepcd.kernels.smoother import graph_clenshaw_step
        from deepcd.nn.fastpath import clenshaw_coefficients, normalized_graph, smooth

        dt = _np_dtype(y.dtype)
        s, e, nweight = normalized_graph(level, scale, dt)
        h = level.host
        w = torch.softmax(logits.detach().to(torch.float64), dim=0).numpy()
        hat = s * y.contiguous().numpy().reshape(-1)
        args = (e, h["indptr"], h["indices"], nweight)
        step = small(graph_clenshaw_step, level.n)
        out = smooth(step, (level.n,), hat, clenshaw_coefficients(w, c), s, args)
        return torch.from_numpy(out).reshape(y.shape)

    def _residual(self, level, r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """r − A x on a level (one fused numba pass on the grid in CPU inference)."""
        if (
            isinstance(level, StencilLevel)
            and _fast(x, self.smoothers)
            and level.diag.shape[0] == 1
        ):
            from deepcd.kernels.smoother import stencil_residual

            _, diag, links = self._grid_arrays(level, x.dtype)
            grid = diag.shape
            out = np.empty(grid, dtype=diag.dtype)
            rv = r.to(x.dtype).contiguous().numpy().reshape(grid)
            stencil_residual(rv, x.contiguous().numpy().reshape(grid), diag, *links, out)
            return torch.from_numpy(out).reshape(x.shape)
        return r - self._level_apply(level, x)

    def _level_apply(self, level, x: torch.Tensor) -> torch.Tensor:
        """A x on a level (numba on a graph level in CPU inference)."""
        if isinstance(level, GraphLevel) and _fast(x, self.smoothers):
            from deepcd.kernels.aggregate import graph_matvec, small
            from deepcd.nn.multigrid import host_arrays

            h = host_arrays(level, _np_dtype(x.dtype))
            out = np.empty(level.n, dtype=_np_dtype(x.dtype))
            v = x.contiguous().numpy().reshape(-1)
            small(graph_matvec, level.n)(v, h["diag"], h["indptr"], h["indices"], h["weight"], out)
            return torch.from_numpy(out)[:, None]
        return level.apply(x)

    # -- transfers ------------------------------------------------------------------------------
    def _omegas(self, i: int) -> list[float] | torch.Tensor:
        return 0.5 * torch.sigmoid(self.transfers[i])

    # -- local weights (`deepcd.nn.local`) -------------------------------------------------------
    def _local_cached(self, cache: dict, key, make):
        """make() once per parameter state in inference (no grad), every call in training."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.local.parameters()):
            return make()
        full = (key, self.local.version())
        if cache.get(("local", key), (None,))[0] != full:
            with torch.no_grad():
                cache[("local", key)] = (full, make())
        return cache[("local", key)][1]

    def _features(self, level) -> tuple[torch.Tensor, torch.Tensor]:
        """(node, link) features of a graph level as float32 tensors (cached: data only)."""
        from deepcd.nn.local import graph_features

        if "local_features" not in level.cache:
            node, edge = graph_features(level.host_full())
            level.cache["local_features"] = (
                torch.from_numpy(node).to(level.device),
                torch.from_numpy(edge).to(level.device),
            )
        return level.cache["local_features"]

    def _local_scale(self, h, depth: int, dtype: torch.dtype):
        """(g·D)^-½ of level `depth` in its layout (a grid field on level 0), or None."""
        if self.local is None:
            return None
        graph = h.levels[depth]

        def make():
            g = self.local.damping(self._features(graph)[0]).to(dtype)
            if depth > 0:
                return graph.inv_sqrt_diag.to(dtype) / g.sqrt()[:, None]
            bf = h.grid.diag.shape[0]
            field = torch.ones(bf * int(np.prod(h.shape)), dtype=dtype, device=g.device)
            field = field.index_copy(0, h.index, g).reshape(bf, 1, *h.shape)
            return h.grid.inv_sqrt_diag.to(dtype) / field.sqrt()

        cache = h.grid.cache if depth == 0 else graph.cache
        return self._local_cached(cache, ("scale", dtype), make)

    def _local_omegas(self, h, depth: int):
        """Per-link ω of level `depth`'s prolongation smoothing: (nnz,) in CSR order on a
        graph level, per axis face fields (Bf, 1, *g_a) on level 0 (grid form)."""
        i = min(depth, self._J - 1)
        if depth > 0:
            level = h.levels[depth]
            axis = torch.as_tensor(level.host["axis"].astype(np.int64), device=level.device)

            def make():
                theta = self.transfers[i][axis] if axis.numel() else self.transfers[i][:0]
                return self.local.omega(self._features(level)[1], theta)

            return self._local_cached(level.cache, "omega", make)
        from deepcd.nn.local import grid_face_features

        def make_grid():
            out = []
            for a, (link, (nlink, _)) in enumerate(zip(h.grid.links, h.grid_axis, strict=True)):
                if link.shape[a + 2] == 0:
                    out.append(link)
                    continue
                feats = h.grid.cache.get(("face_features", a))
                if feats is None:
                    feats = grid_face_features(h.grid.diag, link, nlink, a)
                    h.grid.cache[("face_features", a)] = feats
                shape = feats.shape[:-1]
                w = self.local.omega(feats.reshape(-1, feats.shape[-1]), self.transfers[i][a])
                out.append(w.reshape(shape))
            return out

        return self._local_cached(h.grid.cache, "omega", make_grid)

    def _smooth_axes(self, level, x: torch.Tensor, omegas, axes) -> torch.Tensor:
        """Apply S_a for the axes in `axes`, in that order, to a node vector (N, C); omegas:
        one ω per axis (d,), or per link in CSR order (nnz,) with local weights."""
        per_link = self.local is not None
        if _fast(x, self.transfers):
            from deepcd.kernels.aggregate import axis_csr, axis_smooth, small
            from deepcd.nn.multigrid import host_arrays

            dt = _np_dtype(x.dtype)
            key = ("axis_csr", dt.str, self.local.version() if per_link else None)
            if key not in level.cache:  # the links of each axis in a CSR of their own
                h = host_arrays(level, dt)
                nweight = h["nweight"]
                if per_link:
                    nweight = (torch.from_numpy(h["nweight"]) * omegas.to(x.dtype)).numpy()
                level.cache[key] = axis_csr(h["indptr"], h["indices"], nweight, h["axis"], 3)
            split = level.cache[key]
            v = x.contiguous().numpy().reshape(-1)
            out = np.empty_like(v)
            for a in axes:
                omega = 1.0 if per_link else float(omegas[a])
                small(axis_smooth, level.n)(v, *split[a], omega, out)
                v, out = out, v
            return torch.from_numpy(v.copy()).reshape(x.shape)
        for a in axes:
            if per_link:
                on = torch.as_tensor(level.host["axis"] == a, device=omegas.device)
                x = level.smooth_axis(x, a, omegas[on][:, None])
            else:
                x = level.smooth_axis(x, a, omegas[a])
        return x

    def _level_omegas(self, h, depth: int):
        """What `_smooth_axes` / `_grid_smooth` take for level `depth`."""
        if self.local is not None:
            return self._local_omegas(h, depth)
        return self._omegas(min(depth, self._J - 1))

    def _restrict(self, h, depth: int, r: torch.Tensor) -> torch.Tensor:
        """Pᵀ r = P₀ᵀ S_{d-1} ⋯ S_0 r for a level-`depth` node vector (N, C)."""
        from deepcd.nn.multigrid import restrict

        level, coarse = h.levels[depth], h.levels[depth + 1]
        axes = [a for a, on in enumerate(level.halved) if on]
        r = self._smooth_axes(level, r, self._level_omegas(h, depth), axes)
        if _fast(r, self.transfers):
            from deepcd.kernels.aggregate import restrict_sum, small

            out = np.empty(coarse.n, dtype=_np_dtype(r.dtype))
            small(restrict_sum, level.n)(
                r.contiguous().numpy().reshape(-1),
                level.host_full()["mstart"],
                level.host_full()["members"],
                out,
            )
            return torch.from_numpy(out)[:, None]
        return restrict(level, coarse.n, r)

    def _prolong(self, h, depth: int, xc: torch.Tensor) -> torch.Tensor:
        """P xc = S_0 ⋯ S_{d-1} P₀ xc, the exact transpose of `_restrict`."""
        from deepcd.nn.multigrid import prolong

        level = h.levels[depth]
        axes = [a for a, on in enumerate(level.halved) if on]
        if _fast(xc, self.transfers):
            from deepcd.kernels.aggregate import prolong_copy, small

            out = np.empty(level.n, dtype=_np_dtype(xc.dtype))
            small(prolong_copy, level.n)(
                xc.contiguous().numpy().reshape(-1), level.host["agg"], out
            )
            x = torch.from_numpy(out)[:, None]
        else:
            x = prolong(level, xc)
        return self._smooth_axes(level, x, self._level_omegas(h, depth), axes[::-1])

    def _grid_smooth(self, h, x: torch.Tensor, axes) -> torch.Tensor:
        """S_a on the grid for the axes in `axes`, in that order (fields (B, 1, *g))."""
        omegas = self._level_omegas(h, 0)
        local = self.local is not None
        if _fast(x, self.transfers):
            from deepcd.kernels.aggregate import grid_axis_smooth

            dt = _np_dtype(x.dtype)
            grid = (1,) * (3 - self.dim) + tuple(x.shape[2:])
            key = ("axis", dt, self.local.version() if local else None)
            if key not in h.grid.cache:
                pairs = h.grid_axis
                if local:  # ω per face folded into the weights; the kernels then take ω = 1
                    pairs = [
                        _weighted_axis(nl, w, a)
                        for a, ((nl, _), w) in enumerate(zip(h.grid_axis, omegas, strict=True))
                    ]
                h.grid.cache[key] = [
                    tuple(
                        t.to(x.dtype)
                        .contiguous()
                        .numpy()
                        .reshape((1,) * (3 - self.dim) + t.shape[2:])
                        for t in pair
                    )
                    for pair in pairs
                ]
            weights = h.grid.cache[key]
            v = x.contiguous().numpy().reshape(grid).copy()
            out = np.empty_like(v)
            for a in axes:
                nlink, deg = weights[a]
                omega = 1.0 if local else float(omegas[a])
                grid_axis_smooth(v, nlink, deg, a + 3 - self.dim, omega, out)
                v, out = out, v
            return torch.from_numpy(v).reshape(x.shape)
        for a in axes:
            if local:
                nlink, deg = _weighted_axis(h.grid_axis[a][0], omegas[a], a)
                x = _grid_axis_step(x, nlink, deg, a)
            else:
                x = h.smooth_grid_axis(x, a, omegas[a])
        return x

    def _restrict_grid(self, h, r: torch.Tensor) -> torch.Tensor:
        """`_restrict` from level 0 in grid form (r (B, 1, *g)): the same Pᵀ r."""
        axes = [a for a, on in enumerate(h.levels[0].halved) if on]
        r = self._grid_smooth(h, r, axes)
        if _fast(r, self.transfers):
            from deepcd.kernels.aggregate import restrict_sum

            mstart, members, _ = h.grid_members()
            out = np.empty(h.levels[1].n, dtype=_np_dtype(r.dtype))
            restrict_sum(r.contiguous().numpy().reshape(-1), mstart, members, out)
            return torch.from_numpy(out)[:, None]
        return h.restrict_grid(r)

    def _prolong_grid(self, h, xc: torch.Tensor) -> torch.Tensor:
        """`_prolong` to level 0 in grid form: the exact transpose of `_restrict_grid`."""
        axes = [a for a, on in enumerate(h.levels[0].halved) if on]
        if _fast(xc, self.transfers) and h.grid.diag.shape[0] == 1:
            from deepcd.kernels.aggregate import prolong_copy

            agg = h.grid_members()[2]
            out = np.empty(agg.shape[0], dtype=_np_dtype(xc.dtype))
            prolong_copy(xc.contiguous().numpy().reshape(-1), agg, out)
            x = torch.from_numpy(out).reshape(1, 1, *h.shape)
        else:
            x = h.prolong_grid(xc)
        return self._grid_smooth(h, x, axes[::-1])

    @property
    def _J(self) -> int:
        return self.corrections.shape[0]

    def macs_per_unknown(self, shape: Sequence[int]) -> float:
        """Multiply-adds per grid cell of one application at `shape` on an open grid (every
        block one component): the level stencils (2d+1 taps; degree − 1 per smoothing step
        plus one per residual), the per-axis prolongation smoothing (3 taps per halved axis,
        both ways) and the dense coarsest solve."""
        plan = coarsening_plan(shape, self.coarsest)
        d, degree = self.dim, self.config["degree"]
        stencil = 2 * d + 1
        per_smooth = (degree - 1) * stencil + 4  # plus the scalings and the weighted sum
        sizes, total = [int(n) for n in shape], 0.0
        for axes in plan:
            cells = math.prod(sizes)
            total += cells * (2 * self.smooth * (per_smooth + stencil) + 2 * (3 * sum(axes) + 1))
            sizes = [math.ceil(n / 2) if on else n for n, on in zip(sizes, axes, strict=True)]
        total += math.prod(sizes) ** 2
        return total / math.prod(int(n) for n in shape)

    # -- the cycle -----------------------------------------------------------------------------
    def hierarchy(
        self,
        flags: torch.Tensor,
        grid: tuple[int, ...],
        boundary,
        dtype,
        columns=1,
        operator=None,
    ):
        """The levels of (flags, boundary) — or of a variable-coefficient `operator` on them —
        (`deepcd.nn.multigrid.build_hierarchy`), cached for repeated calls on the same grid
        (DCDM applies the network to one problem many times)."""
        from deepcd.nn.multigrid import build_hierarchy

        weighted = operator is not None and getattr(operator, "weighted", False)

        key = (
            tuple(map(tuple, boundary.tolist()))
            if isinstance(boundary, torch.Tensor)
            else repr(boundary),
            dtype,
            int(columns),
            torch.is_inference_mode_enabled(),  # inference tensors cannot be saved for backward
        )
        # compared by content, so another solve on the same grid (a projection every time
        # step) reuses the levels; one pass over int8 flags, small next to one V-cycle
        c = self._cache
        stencil = (operator.diag, *operator.links()) if weighted else ()
        if (
            c is not None
            and c[0] == key
            and c[1].shape == flags.shape
            and c[1].device == flags.device
            and torch.equal(c[1], flags)
            and len(c[3]) == len(stencil)
            and all(torch.equal(a, b) for a, b in zip(c[3], stencil, strict=True))
        ):
            return c[2]
        plan = coarsening_plan(grid, self.coarsest)
        batch = _flag_batch(flags, self.dim, grid)
        with torch.no_grad():
            h = build_hierarchy(
                batch[:, 0],
                boundary,
                plan,
                dtype=dtype,
                columns=columns,
                operator=operator if weighted else None,
            )
        self._cache = (key, flags.detach().clone(), h, tuple(t.detach().clone() for t in stencil))
        return h

    def _cycle(self, h, depth: int, r: torch.Tensor) -> torch.Tensor:
        """One V-cycle from level `depth` (0: r a grid field (B, 1, *g); else a node vector)."""
        J, last = self._J, len(h.levels) - 1
        level = h.grid if depth == 0 else h.levels[depth]
        if depth == last and h.coarse_inverse is not None:  # coarsest: exact
            inv = h.coarse_inverse.to(r.dtype)
            if depth == 0:
                return h.from_nodes(inv @ h.to_nodes(r))
            return inv @ r
        scale = self._local_scale(h, depth, r.dtype)
        if depth == last:  # too many unknowns for a dense solve: smoothing sweeps
            weights = self.smoothers[J]
            x = self._smoother(level, r, weights, scale)
            for _ in range(self.coarse_sweeps - 1):
                x = x + self._smoother(level, self._residual(level, r, x), weights, scale)
            return x
        i = min(depth, J - 1)
        weights = self.smoothers[i]
        x = self._smoother(level, r, weights, scale)
        for _ in range(self.smooth - 1):
            x = x + self._smoother(level, self._residual(level, r, x), weights, scale)
        res = self._residual(level, r, x)
        if depth == 0:  # level 0's transfers in grid form
            rc = self._restrict_grid(h, res)
            corr = self._prolong_grid(h, self._cycle(h, 1, rc))
        else:
            rc = self._restrict(h, depth, res)
            corr = self._prolong(h, depth, self._cycle(h, depth + 1, rc))
        x = x + F.softplus(self.corrections[i]).to(r.dtype) * corr
        for _ in range(self.smooth):
            x = x + self._smoother(level, self._residual(level, r, x), weights, scale)
        return x

    def forward(
        self,
        r: torch.Tensor,
        flags: torch.Tensor | None = None,
        boundary=None,
        *,
        operator=None,
    ) -> torch.Tensor:
        """q = M r for r (B, 1, *grid): one V-cycle on the levels of `operator` (a
        `GridLaplacian`: the system's own stencil, coefficients included) or, without one, of
        the flags' Laplacian with `boundary`."""
        if operator is not None:
            flags = operator.flags if flags is None else flags
            boundary = operator.boundary if boundary is None else boundary
        if flags is None:
            raise ValueError("vcycle builds its operator from the cell flags: pass flags")
        if r.ndim != self.dim + 2 or r.shape[1] != 1:
            raise ValueError(
                f"r must have shape (B, 1, *grid) with {self.dim} grid axes, got {tuple(r.shape)}"
            )
        dtype = r.dtype if r.dtype in (torch.float32, torch.float64) else torch.float32
        bf = _flag_batch(flags, self.dim, tuple(r.shape[2:])).shape[0]
        if r.shape[0] % bf:
            raise ValueError(f"flags batch {bf} does not match r's {r.shape[0]}")
        h = self.hierarchy(
            flags,
            tuple(r.shape[2:]),
            SOLID if boundary is None else boundary,
            dtype,
            columns=r.shape[0] // bf,
            operator=operator,
        )
        x = r.to(dtype) * h.grid.active
        return self._cycle(h, 0, x).to(r.dtype)


def _weighted_axis(nlink: torch.Tensor, omega: torch.Tensor, a: int):
    """(ω·ŵ, its sum per cell) for the faces along grid axis a: one smoothing step with
    per-face weights is `_grid_axis_step` of these (the kernels: the same with ω = 1)."""
    w = nlink * omega.to(nlink.dtype)
    ax, n = a + 2, w.shape[a + 2] + 1
    shape = list(w.shape)
    shape[ax] = n
    deg = torch.zeros(shape, dtype=w.dtype, device=w.device)
    if n > 1:
        deg = deg.index_add(ax, torch.arange(n - 1, device=w.device), w)
        deg = deg.index_add(ax, torch.arange(1, n, device=w.device), w)
    return w, deg


def _grid_axis_step(x: torch.Tensor, w: torch.Tensor, deg: torch.Tensor, a: int):
    """x − (deg·x − Σ_faces w·x_nbr) along grid axis a (fields (B, 1, *g))."""
    ax, n = a + 2, x.shape[a + 2]
    lap = deg.to(x.dtype) * x
    if n > 1:
        w = w.to(x.dtype)
        lap = lap.clone()
        lap.narrow(ax, 0, n - 1).addcmul_(w, x.narrow(ax, 1, n - 1), value=-1.0)
        lap.narrow(ax, 1, n - 1).addcmul_(w, x.narrow(ax, 0, n - 1), value=-1.0)
    return x - lap


def _fast(x: torch.Tensor, params: torch.Tensor) -> bool:
    """CPU inference on one column in float32/64: the numba kernels apply."""
    grad = torch.is_grad_enabled() and (x.requires_grad or params.requires_grad)
    if grad or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    return x.shape[0] == 1 if x.ndim > 2 else x.shape[1] == 1


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == torch.float32 else np.dtype(np.float64)


def _paper(defaults_pairs: tuple[int, int, int], name: str):
    def make(dim: int, **config) -> PaperNet:
        config.setdefault("pairs", defaults_pairs)
        return PaperNet(dim, arch=name, **config)

    return make


ARCHITECTURES: dict[str, Callable[..., GridNet]] = {
    "paper-64": _paper((2, 3, 2), "paper-64"),
    "paper-128": _paper((3, 5, 3), "paper-128"),
    "multilevel": lambda dim, **config: MultilevelNet(dim, **config),
    "vcycle": lambda dim, **config: VCycleNet(dim, **config),
}


def build_network(
    arch: str, dim: int, *, device=None, dtype: torch.dtype | None = None, **config
) -> GridNet:
    """A direction network by architecture name (see `ARCHITECTURES`), dimension and config.

    `build_network(net.arch, **net.config)` rebuilds `net`'s structure exactly (fresh random
    weights; load a state_dict for the trained ones). device/dtype place the parameters; they
    are not part of the config.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    net = ARCHITECTURES[arch](_check_dim(dim), **config)
    if device is not None or dtype is not None:
        net = net.to(device=device, dtype=dtype)
    return net


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (shared modules counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _conv_macs_hook(counter: list[int]):
    def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
        per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        counter[0] += output.numel() * per_output

    return hook


def flops_per_unknown(model: nn.Module, shape: Sequence[int]) -> float:
    """Convolution multiply-adds per grid cell of one forward pass at `shape` (batch 1).

    Counted from the conv layers actually executed (a hook adds output elements × kernel
    volume × input channels per group), so shared modules count once per use and the odd-size
    padding counts as the work it is. Runs on a copy of the model on the meta device: no data,
    no memory, no time.
    """
    shape = tuple(int(n) for n in shape)
    if hasattr(model, "macs_per_unknown"):  # functional convolutions: counted by the model
        return float(model.macs_per_unknown(shape))
    meta = copy.deepcopy(model).to("meta")
    counter = [0]
    handles = [
        m.register_forward_hook(_conv_macs_hook(counter))
        for m in meta.modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    ]
    try:
        r = torch.zeros((1, 1, *shape), device="meta")
        args = [r]
        if getattr(meta, "use_flags", False):
            args.append(torch.zeros(shape, dtype=torch.int8, device="meta"))
        with torch.no_grad():
            meta(*args)
    finally:
        for h in handles:
            h.remove()
    return counter[0] / math.prod(shape)
