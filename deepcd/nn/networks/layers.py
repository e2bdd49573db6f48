"""The pieces every direction network is built from: activations, the convolutions (with the
CPU oneDNN fast path), odd-size-safe 2× pooling and upsampling, the flag batch and `GridNet`,
the base class (input channels, flag masks, output masking). The architectures are described
in the package docstring (`deepcd.nn.networks`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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
