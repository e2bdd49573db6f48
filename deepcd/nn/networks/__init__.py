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

import torch
from torch import nn

from deepcd.nn.networks.layers import Conv2d, Conv3d, GridNet, _check_dim
from deepcd.nn.networks.multilevel import MultilevelNet, PreResidual, coarsening_plan
from deepcd.nn.networks.paper import PaperNet, ResidualPair
from deepcd.nn.networks.vcycle import VCycleNet
from deepcd.nn.networks.vcycle import _fast as _fast  # private helpers, re-exported
from deepcd.nn.networks.vcycle import _np_dtype as _np_dtype

__all__ = [
    "ARCHITECTURES",
    "Conv2d",
    "Conv3d",
    "GridNet",
    "MultilevelNet",
    "PaperNet",
    "PreResidual",
    "ResidualPair",
    "VCycleNet",
    "build_network",
    "coarsening_plan",
    "count_parameters",
    "flops_per_unknown",
]


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
