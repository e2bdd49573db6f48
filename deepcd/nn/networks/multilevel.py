"""multilevel: the V-cycle-shaped network whose depth follows the grid, its smoothing block
and `coarsening_plan` (see the package docstring, `deepcd.nn.networks`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from deepcd.nn.networks.layers import GridNet, _activation, _conv, _pool, _upsample


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
