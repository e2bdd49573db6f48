"""paper-64 / paper-128: the DCDM paper's network and its residual pairs (see the package
docstring, `deepcd.nn.networks`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deepcd.nn.networks.layers import GridNet, _activation, _conv, _pool, _upsample


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
