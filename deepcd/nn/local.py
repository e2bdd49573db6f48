"""Smoother and transfer weights of the V-cycle as learned functions of the local stencil.

A coefficient jump (water beside air, 1000×) or a ghost-fluid surface changes what a good
smoother and interpolation look like cell by cell, which one weight per level cannot follow.
`LocalWeights` reads a few scale-free numbers of each level's stencil around every unknown and
every link — the same small networks on every level — and returns

  g_i ≥ 1 per unknown: the smoother's diagonal becomes g_i·d_i. Â = (gD)^-½ A (gD)^-½ then
      has its spectrum in [0, 2/min g] ⊂ [0, 2], so every smoothing step stays a strict A-norm
      contraction for any parameters (`VCycleNet._smoother`), and the V-cycle stays SPD;
  ω_ij ∈ (0, ½) per link: the prolongation smoothing S_a = I − L̂_a(ω) with the graph
      Laplacian of the links along axis a weighted ω_ij·ŵ_ij — symmetric (ω_ij = ω_ji: the
      features are symmetric in i, j), constants preserved, so P stays a valid prolongation.

Node features (scale-free): the Dirichlet share 1 − Σ_j w_ij / d_i, tanh(¼ log(max_j w_ij /
min_j w_ij)) and tanh(¼ (log d_i − mean_j log d_j)). Link features: log(ŵ_ij)/20 (clipped to
[−1, 0]), tanh(¼ |log d_i − log d_j|) and w_ij / √(d_i d_j). The networks are 1×1 maps
(Linear–tanh–Linear) whose last layers start at zero, so at initialization ω is the level's
ω_a exactly and g = 1 + softplus(−6) ≈ 1.0025: the classical V-cycle.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from deepcd.kernels.local import G_OFFSET  # one offset for the torch form and the kernels

NODE_FEATURES = 3
EDGE_FEATURES = 3


def _mlp(inputs: int, width: int) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(inputs, width), nn.Tanh(), nn.Linear(width, 1))
    nn.init.zeros_(net[2].weight)
    nn.init.zeros_(net[2].bias)
    return net


class LocalWeights(nn.Module):
    """The two shared local networks (see the module docstring); `width` hidden units each."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.node = _mlp(NODE_FEATURES, width)
        self.edge = _mlp(EDGE_FEATURES, width)

    def damping(self, features: torch.Tensor) -> torch.Tensor:
        """g (N,) ≥ 1 from node features (N, NODE_FEATURES)."""
        out = self.node(features.to(self.node[0].weight.dtype))[:, 0]
        return 1.0 + nn.functional.softplus(out + G_OFFSET)

    def omega(self, features: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """ω (E,) = ½·sigmoid(θ + edge(features)) for link features (E, EDGE_FEATURES)."""
        out = self.edge(features.to(self.edge[0].weight.dtype))[:, 0]
        return 0.5 * torch.sigmoid(theta + out)

    def host(self) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """The node and edge networks as numpy float32 (w1 (H, 3), b1 (H,), w2 (H,), b2 (1,)),
        as `deepcd.kernels.local` takes them (cached per parameter state)."""
        key = self.version()
        cached = self.__dict__.get("_host")
        if cached is None or cached[0] != key:

            def arrays(net: nn.Sequential) -> tuple[np.ndarray, ...]:
                first, last = net[0], net[2]
                out = (first.weight, first.bias, last.weight[0], last.bias)
                return tuple(t.detach().to("cpu", torch.float32).contiguous().numpy() for t in out)

            cached = (key, (arrays(self.node), arrays(self.edge)))
            self.__dict__["_host"] = cached
        return cached[1]

    def version(self) -> tuple[int, ...]:
        """Changes whenever a parameter is modified in place or replaced (caches of derived
        weights). Read from the layers' own dicts: `parameters()` walks the module tree,
        and this runs on every level of every V-cycle."""
        out = []
        for net in (self._modules["node"], self._modules["edge"]):
            for layer in (net._modules["0"], net._modules["2"]):  # plain dicts: no __getattr__
                for p in layer._parameters.values():
                    out += (id(p), p._version)
        return tuple(out)


def graph_features(host: dict) -> tuple[np.ndarray, np.ndarray]:
    """(node features (n, 3), link features (nnz, 3)) float32 of a graph level's host arrays
    (`deepcd.nn.multigrid.GraphLevel.host_full()`), links in CSR order."""
    d, w, nw = host["diag"], host["weight"], host["nweight"]
    indptr, cols = host["indptr"], host["indices"].astype(np.int64)
    n = len(d)
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(n), counts)
    logd = np.log(np.maximum(d, 1e-300))
    sumw = np.bincount(rows, weights=w, minlength=n)
    node = np.zeros((n, NODE_FEATURES))
    node[:, 0] = np.clip(1.0 - sumw / np.maximum(d, 1e-300), 0.0, 1.0)
    full = counts > 0
    if w.size:
        wmax = np.zeros(n)
        wmin = np.ones(n)
        wmax[full] = np.maximum.reduceat(w, indptr[:-1][full])
        wmin[full] = np.minimum.reduceat(w, indptr[:-1][full])
        node[full, 1] = np.tanh(0.25 * np.log(wmax[full] / np.maximum(wmin[full], 1e-300)))
        mean = np.bincount(rows, weights=logd[cols], minlength=n)
        node[full, 2] = np.tanh(0.25 * (logd[full] - mean[full] / counts[full]))
    edge = np.zeros((len(w), EDGE_FEATURES))
    edge[:, 0] = np.clip(np.log(np.maximum(nw, 1e-300)) / 20.0, -1.0, 0.0)
    edge[:, 1] = np.tanh(0.25 * np.abs(logd[rows] - logd[cols]))
    edge[:, 2] = w / np.sqrt(np.maximum(d[rows] * d[cols], 1e-300))
    return node.astype(np.float32), edge.astype(np.float32)


def grid_face_features(diag: torch.Tensor, link: torch.Tensor, nlink: torch.Tensor, axis: int):
    """Link features (Bf, 1, *g_a, 3) of the faces along grid `axis` (fields as in
    `deepcd.nn.multigrid.StencilLevel`), the same numbers `graph_features` gives level 0's
    links; 0 on faces without a link."""
    ax, n = axis + 2, diag.shape[axis + 2]
    d_lo, d_hi = diag.narrow(ax, 0, n - 1), diag.narrow(ax, 1, n - 1)
    on = link > 0
    tiny = torch.finfo(diag.dtype).tiny
    logs = (d_lo.clamp_min(tiny).log() - d_hi.clamp_min(tiny).log()).abs()
    f0 = (nlink.clamp_min(tiny).log() / 20.0).clamp(-1.0, 0.0)
    f1 = torch.tanh(0.25 * logs)
    f2 = link / (d_lo * d_hi).clamp_min(tiny).sqrt()
    out = torch.stack([f0, f1, f2], dim=-1)
    return torch.where(on[..., None], out, torch.zeros_like(out)).to(torch.float32)
