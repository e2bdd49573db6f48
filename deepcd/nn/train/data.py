"""The training data on the device: the deterministic batch order, the per-matrix flags and
stencils that make a batch's Laplacians, and the batch loss."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from deepcd.nn.direction import apply_network


class _Batches:
    """The deterministic batch order: global positions step·B + j walk one permutation of the
    training split per epoch, `default_rng([seed, epoch])`."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch, self.seed = n, batch, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        pos = step * self.batch + np.arange(self.batch, dtype=np.int64)
        return [int(self._perm(int(p // self.n))[p % self.n]) for p in pos]


class _Matrices:
    """Per-matrix flags on the device and boundaries, for building batched Laplacians."""

    def __init__(self, infos, device: torch.device):
        self.device = device
        self.flags = {
            m: torch.as_tensor(np.ascontiguousarray(i.flags, np.int8), device=device)
            for m, i in infos.items()
        }
        self.boundary = {m: tuple(i.boundary) for m, i in infos.items()}
        # variable-coefficient matrices: their grid stencils, for the batched operator
        self.stencil = {}
        for m, i in infos.items():
            if getattr(i, "coefficients", None) is not None:
                from deepcd.problems.coefficients import weighted_stencil

                d, links = weighted_stencil(i.flags, i.boundary, i.coefficients)
                self.stencil[m] = (
                    torch.as_tensor(d, dtype=torch.float32, device=device),
                    [torch.as_tensor(w, dtype=torch.float32, device=device) for w in links],
                )

    def groups(self, samples: Sequence[tuple[np.ndarray, int]]):
        """[(b (n,1,*grid) float32, flags (n,*grid) int8, GridLaplacian)] per grid shape."""
        from deepcd.nn.stencil import GridLaplacian

        by_shape: dict[tuple[int, ...], list] = {}
        for rhs, m in samples:
            by_shape.setdefault(tuple(rhs.shape), []).append((rhs, m))
        out = []
        for shape in sorted(by_shape):
            items = by_shape[shape]
            b = torch.from_numpy(np.stack([np.asarray(r, np.float32) for r, _ in items]))
            b = b[:, None].to(self.device)
            flags = torch.stack([self.flags[m] for _, m in items])
            bcs = [self.boundary[m] for _, m in items]
            stencil = None
            if any(m in self.stencil for _, m in items):
                plain = GridLaplacian(flags, bcs, dim=len(shape), device=self.device)
                diags, links = [], [[] for _ in shape]
                for k, (_, m) in enumerate(items):
                    d, ws = self.stencil.get(
                        m, (plain.diag[k, 0], [w[k, 0] for w in plain.links()])
                    )
                    diags.append(d)
                    for a, w in enumerate(ws):
                        links[a].append(w)
                stencil = (torch.stack(diags), [torch.stack(w) for w in links])
            lap = GridLaplacian(flags, bcs, dim=len(shape), device=self.device, stencil=stencil)
            out.append((b, flags, lap))
        return out


class _BatchLoss(nn.Module):
    """Sum over a batch (possibly several shape groups) of the per-sample DCDM loss; the
    network runs under bf16 autocast when asked, the loss always in float32. One module call
    per step so that DistributedDataParallel sees one forward per backward."""

    def __init__(self, net: nn.Module, device_type: str, bf16: bool, loss: str = "dcdm"):
        super().__init__()
        self.net = net
        self.device_type = device_type
        self.bf16 = bf16
        self.loss = loss

    def forward(self, groups) -> torch.Tensor:
        total = None
        for b, flags, lap in groups:
            part = batch_loss(self.net, self.loss, b, flags, lap, self.device_type, self.bf16)
            total = part if total is None else total + part
        return total


def batch_loss(net, loss: str, b, flags, lap, device_type: str, bf16: bool) -> torch.Tensor:
    """The summed per-sample training loss `loss` of one shape group."""
    from deepcd.nn.loss import dcdm_loss, pcg_loss

    def apply(r: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            return apply_network(net, r, flags, lap.boundary, lap if lap.weighted else None).float()

    if loss == "pcg":
        return pcg_loss(apply, b, lap, reduction="sum")
    return dcdm_loss(apply(b), b, lap, reduction="sum", step=loss)
