"""Evaluation during training: the validation scenes, the validation loss and DCDM/CG
iteration counts (`_Validator`), the network as DCDM's direction source, torch's thread count
kept across numba's kernels, and the model-selection key."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from deepcd.nn.direction import apply_network
from deepcd.nn.train.config import VAL_RTOL, TrainConfig
from deepcd.nn.train.data import _Matrices, batch_loss


@dataclass(frozen=True)
class ValScene:
    """A validation scene: scene name, grid shape, seed."""

    name: str
    shape: tuple[int, ...]
    seed: int

    @property
    def spec(self) -> str:
        return f"{self.name}:{'x'.join(map(str, self.shape))}:{self.seed}"

    @classmethod
    def parse(cls, spec: str, ndim: int) -> ValScene:
        from deepcd.problems import parse_shape, scenes

        parts = str(spec).split(":")
        if len(parts) != 3:
            raise ValueError(f"--val-scene takes NAME:SHAPE:SEED (e.g. bunny:32:7), got {spec!r}")
        name, shape, seed = parts
        if name not in scenes():
            raise ValueError(
                f"--val-scene {spec!r}: unknown scene {name!r}; choose from {', '.join(scenes())}"
            )
        try:
            seed_value = int(seed)
        except ValueError:
            raise ValueError(f"--val-scene {spec!r}: the seed must be an int") from None
        grid = parse_shape(shape, ndim)
        if len(grid) != ndim:
            raise ValueError(
                f"--val-scene {spec!r} is {len(grid)}D but the dataset (and network) is {ndim}D"
            )
        return cls(name, grid, seed_value)


class _InferenceNet(nn.Module):
    """The network as DCDM's direction source during validation (autocast like training)."""

    def __init__(self, net: nn.Module, device_type: str, bf16: bool):
        super().__init__()
        self.net = net
        self.dim = net.dim
        self.device_type = device_type
        self.bf16 = bf16

    def forward(
        self, r: torch.Tensor, flags: torch.Tensor | None = None, boundary=None, *, operator=None
    ) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            q = apply_network(self.net, r, flags, boundary, operator)
        return q.float()


class _Validator:
    """Validation loss on the VAL split and DCDM/CG iterations on validation scenes."""

    def __init__(self, cfg: TrainConfig, val_ds, device: torch.device, scenes: list[ValScene]):
        from deepcd.iterative.krylov import cg
        from deepcd.problems import scene

        self.cfg, self.ds, self.device = cfg, val_ds, device
        self.matrices = _Matrices(val_ds.matrices, device) if val_ds is not None else None
        n = len(val_ds) if val_ds is not None else 0
        k = min(cfg.val_samples, n)
        self.indices = sorted({int(i) for i in np.linspace(0, n - 1, k).round()}) if k else []
        self.scenes = scenes
        self.problems = []
        self.cg_iterations = []
        for s in scenes:
            problem = scene(s.name, s.shape, seed=s.seed)
            res = cg(problem.stencil, problem.b, rtol=VAL_RTOL)
            self.problems.append(problem)
            self.cg_iterations.append(int(res.iterations) if res.converged else None)
        self.M = [self._preconditioner(p) for p in self.problems]

    def _preconditioner(self, problem):
        from deepcd.iterative.preconditioners import make_preconditioner

        if self.cfg.safeguard == "none":
            return None
        return make_preconditioner(self.cfg.safeguard, problem.stencil)

    def loss(self, net: nn.Module) -> float | None:
        if not self.indices:
            return None

        bs = self.cfg.batch_size
        total, count = 0.0, 0
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                for i0 in range(0, len(self.indices), bs):
                    samples = [self.ds[i] for i in self.indices[i0 : i0 + bs]]
                    for b, flags, lap in self.matrices.groups(samples):
                        total += float(
                            batch_loss(
                                net, self.cfg.loss, b, flags, lap, self.device.type, self.cfg.bf16
                            )
                        )
                        count += b.shape[0]
        finally:
            net.train(was_training)
        return total / count

    def iterations(self, net: nn.Module) -> list[dict[str, Any]]:
        from deepcd.iterative.dcdm import dcdm
        from deepcd.nn.direction import NetworkDirection

        rows = []
        was_training = net.training
        wrapped = _InferenceNet(net, self.device.type, self.cfg.bf16)
        try:
            for s, problem, M, cg_its in zip(
                self.scenes, self.problems, self.M, self.cg_iterations, strict=True
            ):
                direction = NetworkDirection(wrapped, problem, device=self.device)
                t = time.perf_counter()
                res = dcdm(
                    problem.stencil,
                    problem.b,
                    direction=direction,
                    M=M,
                    rtol=VAL_RTOL,
                    maxiter=self.cfg.val_maxiter,
                )
                rows.append(
                    {
                        "scene": s.name,
                        "shape": list(s.shape),
                        "seed": s.seed,
                        "dcdm_iterations": int(res.iterations),
                        "dcdm_converged": bool(res.converged),
                        "cg_iterations": cg_its,
                        "safeguard_steps": int(res.settings.get("safeguard_steps", 0)),
                        "dcdm_s": round(time.perf_counter() - t, 4),
                    }
                )
        finally:
            net.train(was_training)
        return rows


@contextlib.contextmanager
def _torch_threads_kept():
    """Restore torch's intra-op thread count after validation: numba's OpenMP threading layer
    (the parallel CG/DCDM kernels) resets the shared OpenMP thread count, which would silently
    change torch's threads — and with them the training's reduction order — from then on."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _selection_key(record: dict[str, Any], first: dict[str, Any] | None = None):
    """Fewest mean validation iterations, ties by loss — and never a model that needs more
    iterations than the first evaluated one (the initialization) on any validation scene."""
    if first is not None and first is not record:
        base = {r["scene"]: r["dcdm_iterations"] for r in first.get("scenes", [])}
        for row in record.get("scenes", []):
            if row["dcdm_iterations"] > base.get(row["scene"], math.inf):
                return (math.inf, math.inf)
    iters = record.get("val_dcdm_mean")
    loss = record.get("val_loss")
    if loss is None:
        loss = record.get("train_loss")
    return (
        math.inf if iters is None and record.get("scenes") else (iters or 0.0),
        math.inf if loss is None else loss,
    )
