"""The DCDM training loss (Kaneda et al., ICML 2023, DESIGN.md §4).

For a right-hand side b and a network direction q = f(b), the exact line search picks
α = (qᵀb)/(qᵀAq) and the loss is the squared residual left after that step, ‖b − αAq‖². The
free scalar of the approximate inverse — including its sign — is absorbed by α: q, 5q and −q
give the same loss, and q = c·A⁻¹b gives zero for every c ≠ 0.
"""

from __future__ import annotations

import torch

from deepcd.nn.stencil import GridLaplacian

_REDUCTIONS = ("mean", "sum", "none")
# "dcdm": the paper's loss, the step length chosen per sample by exact line search.
# "residual": the unit step, ‖b − Aq‖²: the residual left by one stationary iteration x = f(b).
# For a linear f = M it is ‖(I − AM) b‖², whose average over b measures the spectrum of AM
# around 1 — the quantity PCG's convergence depends on — where the line search lets each sample
# pick its own scale and so leaves the relative scale of different modes free.
# "pcg": for an SPD preconditioner network (vcycle): the convergence rate of PCG itself —
# log10(‖r_K‖/‖b‖)/K after K = PCG_STEPS unrolled PCG steps with M = the network, the very
# quantity the iteration count follows (training the V-cycle on "residual" lowered that loss but
# not the iterations; the README's "What did not work" has the command).
LOSSES = ("dcdm", "residual", "pcg")
PCG_STEPS = 4


def dcdm_loss(
    q: torch.Tensor,
    b: torch.Tensor,
    laplacian: GridLaplacian,
    reduction: str = "mean",
    step: str = "dcdm",
) -> torch.Tensor:
    """‖b − αAq‖² per sample with α = (qᵀb)/(qᵀAq), reduced over the batch.

    q, b: (B, 1, *grid) fields on the grid; `laplacian` applies A (one matrix for the batch or
    one per sample, see `GridLaplacian`). Only FLUID cells count: b and q are masked to them.
    b is used as given — it is NOT normalized here. Training data normalizes each b (DESIGN §4),
    and then the loss of a sample is its relative squared residual, 1 for the zero step.

    Precision: the reductions run in float32 at least (float64 inputs stay float64), so a
    bf16/float16 network output still gets an accurate α and loss.

    Degenerate directions: when qᵀAq ≤ 16·eps·‖q‖² (with q restricted to the FLUID cells; eps of
    the compute dtype) — q = 0, q supported only off the FLUID cells, q in the null space of a
    singular (closed) region, or a non-positive curvature from rounding — the step is taken as
    α = 0, so that sample's loss is ‖b‖² (the residual left by not moving), finite, and its
    gradient with respect to q is zero. NaN/Inf in q or b propagate (they are bugs upstream).

    reduction: "mean" (average over the batch, the paper's loss), "sum", or "none" (shape (B,)).
    step: "dcdm" (α by exact line search, the paper) or "residual" (α = 1, see `LOSSES`).
    """
    if step not in ("dcdm", "residual"):
        raise ValueError(f"step must be 'dcdm' or 'residual', got {step!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if q.shape != b.shape:
        raise ValueError(
            f"q and b must have the same shape, got {tuple(q.shape)} and {tuple(b.shape)}"
        )
    if q.ndim != laplacian.dim + 2:
        raise ValueError(f"q must have shape (B, 1, *grid), got {tuple(q.shape)}")
    cdt = torch.promote_types(torch.promote_types(q.dtype, b.dtype), torch.float32)
    fluid = laplacian.fluid.to(cdt)
    qc = q.to(cdt) * fluid
    bc = b.to(cdt) * fluid
    Aq = laplacian(qc)
    axes = tuple(range(1, q.ndim))
    qb = (qc * bc).sum(dim=axes)
    qAq = (qc * Aq).sum(dim=axes)
    qq = (qc * qc).sum(dim=axes)
    ok = qAq > 16 * torch.finfo(cdt).eps * qq
    alpha = torch.where(ok, qb / torch.where(ok, qAq, torch.ones_like(qAq)), torch.zeros_like(qAq))
    if step == "residual":
        alpha = torch.ones_like(alpha)
    shape = (-1,) + (1,) * (q.ndim - 1)
    res = bc - alpha.view(shape) * Aq
    per_sample = (res * res).sum(dim=axes)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def pcg_loss(
    apply_m,
    b: torch.Tensor,
    laplacian: GridLaplacian,
    steps: int = PCG_STEPS,
    reduction: str = "mean",
) -> torch.Tensor:
    """log10(‖r_K‖/‖b‖)/K per sample after K unrolled steps of PCG from x = 0 with M = apply_m.

    apply_m: maps residual fields (B, 1, *grid) to preconditioned ones (a symmetric positive
    definite network such as vcycle; the loss is meaningless for others). b: (B, 1, *grid),
    masked to FLUID cells here. Differentiable through every application of M. A sample
    whose curvature pᵀAp vanishes (converged, or b = 0) stops moving (α = 0).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    fluid = laplacian.fluid.to(torch.float32)
    axes = tuple(range(1, b.ndim))
    shape = (-1,) + (1,) * (b.ndim - 1)

    def dot(u, v):
        return (u * v).sum(dim=axes)

    r = b.float() * fluid
    b_norm2 = dot(r, r).clamp_min(1e-30)
    z = apply_m(r).float() * fluid
    p = z
    rz = dot(r, z)
    for i in range(steps):
        ap = laplacian(p)
        pap = dot(p, ap)
        ok = pap > 16 * torch.finfo(torch.float32).eps * dot(p, p)
        alpha = torch.where(ok, rz / torch.where(ok, pap, torch.ones_like(pap)), 0.0)
        r = r - alpha.view(shape) * ap
        if i == steps - 1:
            break
        z = apply_m(r).float() * fluid
        rz_new = dot(r, z)
        beta = torch.where(rz.abs() > 0, rz_new / torch.where(rz.abs() > 0, rz, 1.0), 0.0)
        p = z + beta.view(shape) * p
        rz = rz_new
    per_sample = 0.5 * torch.log10(dot(r, r).clamp_min(1e-30) / b_norm2) / steps
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
